//! Faults, limits, the IP ban, the sink, shutdown and the binary, over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::{Client, b64, config, start};
use fake_upstream::{DropWhen, Fault, Stage};

async fn authed(h: &fake_upstream::Handle) -> fake_upstream::testing::Client {
    let mut c = Client::connect(h).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64("\0alice@163.com\0ALICEAUTHCODE163")
        ))
        .await;
    assert_eq!(r, "235 Authentication successful");
    c
}

async fn send_message(c: &mut fake_upstream::testing::Client, rcpt: &str) -> String {
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if !r.starts_with("250") {
        c.cmd("RSET").await;
        return r;
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send_raw(b"From: alice@163.com\r\nSubject: hello\r\n\r\nbody\r\n.\r\n")
        .await;
    c.reply().await.to_string()
}

#[tokio::test]
async fn fault_rcpt_451_twice_then_250() {
    let h = start(
        config("163", "fault-rcpt").with_fault(
            Fault::on(Stage::Rcpt)
                .address("bob@163.com")
                .first(2)
                .reply("451 Requested action aborted: local error in processing"),
        ),
    )
    .await;
    let mut c = authed(&h).await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    let replies = [
        c.cmd("RCPT TO:<bob@163.com>").await,
        c.cmd("RCPT TO:<BOB@163.com>").await,
        c.cmd("RCPT TO:<friend@qq.com>").await,
        c.cmd("RCPT TO:<bob@163.com>").await,
    ];
    assert_eq!(
        replies,
        [
            "451 Requested action aborted: local error in processing",
            "451 Requested action aborted: local error in processing",
            "250 Mail OK",
            "250 Mail OK",
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn fault_drop_before_the_final_reply_keeps_nothing() {
    let h = start(
        config("163", "fault-drop").with_fault(Fault::on(Stage::EndOfData).drop(DropWhen::Before)),
    )
    .await;
    let mut c = authed(&h).await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    c.cmd("DATA").await;
    c.send_raw(b"From: alice@163.com\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.try_reply().await, None, "dropped without a reply");
    assert!(h.received().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn fault_delay_and_drop_after_on_ehlo_and_replaced_greeting() {
    let h = start(
        config("163", "fault-ehlo")
            .with_fault(
                Fault::on(Stage::Greeting)
                    .nth(1)
                    .reply("421 HL:ICC 163 busy"),
            )
            .with_fault(Fault::on(Stage::Ehlo).delay_ms(300).drop(DropWhen::After)),
    )
    .await;
    let mut c = Client::connect(&h).await;
    assert_eq!(c.reply().await.to_string(), "421 HL:ICC 163 busy");
    let mut c = Client::connect(&h).await;
    assert!(c.reply().await.to_string().starts_with("220 163.com"));
    let start = Instant::now();
    assert!(c.cmd("EHLO x").await.starts_with("250-mail"));
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(c.closed().await);
    h.shutdown().await;
}

#[tokio::test]
async fn fault_stall_holds_the_client_until_shutdown() {
    let h = start(config("163", "fault-stall").with_fault(Fault::on(Stage::Mail).stall())).await;
    let mut c = authed(&h).await;
    c.send("MAIL FROM:<alice@163.com>").await;
    let read = tokio::time::timeout(Duration::from_millis(500), c.try_reply()).await;
    assert!(read.is_err(), "no reply while stalled");
    h.shutdown().await;
    assert_eq!(c.try_reply().await, None);
}

#[tokio::test]
async fn fault_tls_handshake_failure_on_starttls() {
    let h =
        start(config("163", "fault-tls").with_fault(Fault::on(Stage::Starttls).tls_fail())).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    c.send("STARTTLS").await;
    assert_eq!(c.reply().await.to_string(), "220 Ready to start TLS");
    let handshake = c.handshake(h.ca_pem()).await;
    assert!(handshake.is_err(), "the handshake must fail");
    h.shutdown().await;
    let t = h.transcripts();
    assert!(t[0].text().contains("* fault: TLS handshake broken"));
}

#[tokio::test]
async fn limits_recipients_per_message_and_messages_per_connection() {
    let mut cfg = config("163", "limits");
    cfg.persona.limits.max_recipients = 2;
    cfg.persona.limits.messages_per_connection = Some(2);
    let h = start(cfg).await;
    let mut c = authed(&h).await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    assert_eq!(c.cmd("RCPT TO:<a@qq.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<b@qq.com>").await, "250 Mail OK");
    assert!(
        c.cmd("RCPT TO:<c@qq.com>")
            .await
            .starts_with("550 RP:RCL 163 ")
    );
    c.cmd("RSET").await;
    assert!(
        send_message(&mut c, "bob@163.com")
            .await
            .starts_with("250 Mail OK queued as")
    );
    assert!(
        send_message(&mut c, "bob@163.com")
            .await
            .starts_with("250 Mail OK queued as")
    );
    assert!(
        c.cmd("MAIL FROM:<alice@163.com>")
            .await
            .starts_with("450 MI:DMC 163 ")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn limits_sender_quota_and_size() {
    let mut cfg = config("163", "quota");
    cfg.persona.limits.sender_per_15min = Some(1);
    cfg.persona.limits.max_message_size = 100;
    let h = start(cfg).await;
    let mut c = authed(&h).await;
    assert!(send_message(&mut c, "bob@163.com").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<alice@163.com>")
            .await
            .starts_with("451 MI:SFQ 163 ")
    );
    h.shutdown().await;

    let mut cfg = config("163", "size");
    cfg.persona.limits.max_message_size = 100;
    let h = start(cfg).await;
    let mut c = authed(&h).await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    c.cmd("DATA").await;
    c.send_raw(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(500)).as_bytes())
        .await;
    assert_eq!(
        c.reply().await.to_string(),
        "552 Requested mail action aborted: exceeded mailsize limit"
    );
    assert!(h.received().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn daily_and_recipient_quotas() {
    let mut cfg = config("163", "daily");
    cfg.persona.limits.sender_per_day = Some(1);
    let h = start(cfg).await;
    let mut c = authed(&h).await;
    assert!(send_message(&mut c, "bob@163.com").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<alice@163.com>")
            .await
            .starts_with("554 MI:STC 163 ")
    );
    h.shutdown().await;

    let mut cfg = config("163", "rcpt-quota");
    cfg.persona.limits.recipients_per_15min = Some(2);
    let h = start(cfg).await;
    let mut c = authed(&h).await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    assert_eq!(c.cmd("RCPT TO:<a@qq.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<b@qq.com>").await, "250 Mail OK");
    assert!(
        c.cmd("RCPT TO:<c@qq.com>")
            .await
            .starts_with("451 RP:QRC 163 ")
    );
    h.shutdown().await;

    let mut cfg = config("163", "rcpt-daily");
    cfg.persona.limits.recipients_per_day = Some(1);
    let h = start(cfg).await;
    let mut c = authed(&h).await;
    assert!(send_message(&mut c, "bob@163.com").await.starts_with("250"));
    c.cmd("MAIL FROM:<alice@163.com>").await;
    assert!(
        c.cmd("RCPT TO:<bob@163.com>")
            .await
            .starts_with("550 RP:TRC 163 ")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn fault_tls_failure_at_connect_on_the_tls_listener() {
    let h = start(
        config("163", "fault-connect-tls")
            .with_fault(Fault::on(Stage::Connect).first(1).tls_fail()),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(h.tls_addr().unwrap())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    assert!(common::tls_connector(&h).connect(name, tcp).await.is_err());
    // Only the first connection: the next one works.
    let mut c = Client::connect_tls(&h).await;
    assert_eq!(c.reply().await.code, 220);
    h.shutdown().await;
}

#[tokio::test]
async fn no_limits_switches_quotas_off() {
    let mut cfg = config("163", "nolimits");
    cfg.persona.limits.sender_per_15min = Some(1);
    cfg.persona.limits.messages_per_connection = Some(1);
    let h = start(cfg.no_limits()).await;
    let mut c = authed(&h).await;
    for _ in 0..3 {
        assert!(send_message(&mut c, "bob@163.com").await.starts_with("250"));
    }
    h.shutdown().await;
}

#[tokio::test]
async fn ip_ban_after_failed_auths() {
    let mut cfg = config("163", "ban");
    cfg.persona.limits.auth_failures_before_ban = Some(3);
    let h = start(cfg).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    let wrong = format!("AUTH PLAIN {}", b64("\0alice@163.com\0WRONG"));
    assert_eq!(c.cmd(&wrong).await, "535 Error: authentication failed");
    assert_eq!(c.cmd(&wrong).await, "535 Error: authentication failed");
    assert_eq!(
        c.cmd(&wrong).await,
        "554 Ip is rejected, smtp auth error limit exceed,163 gzga-smtp-mtada-g0-3"
    );
    assert!(c.closed().await);
    // New connections from the IP are refused at connect, on both listeners (inside TLS on
    // the implicit-TLS one).
    let mut c = Client::connect(&h).await;
    assert_eq!(
        c.reply().await.to_string(),
        "554 Ip is rejected, smtp auth error limit exceed,163 gzga-smtp-mtada-g0-3"
    );
    assert!(c.closed().await);
    let mut c = Client::connect_tls(&h).await;
    assert_eq!(
        c.reply().await.to_string(),
        "554 Ip is rejected, smtp auth error limit exceed,163 gzga-smtp-mtada-g0-3"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn concurrent_connections_per_ip() {
    let mut cfg = config("163", "icc");
    cfg.persona.limits.connections_per_ip = Some(2);
    let h = start(cfg).await;
    let mut a = Client::connect(&h).await;
    let mut b = Client::connect(&h).await;
    a.reply().await;
    b.reply().await;
    let mut c = Client::connect(&h).await;
    assert!(c.reply().await.to_string().starts_with("421 HL:ICC 163 "));
    assert!(c.closed().await);
    drop(a);
    // The slot frees once the first connection is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d = Client::connect(&h).await;
    assert!(d.reply().await.to_string().starts_with("220 "));
    h.shutdown().await;
}

#[tokio::test]
async fn sink_takes_pipelined_bdat_and_counts_without_keeping() {
    let h = start(config("sink", "sink")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO x").await;
    assert!(
        ehlo.contains("CHUNKING") && ehlo.contains("PIPELINING"),
        "{ehlo}"
    );
    c.send_raw(b"MAIL FROM:<a@x.example> BODY=BINARYMIME\r\nRCPT TO:<b@y.example>\r\nBDAT 5\r\nab\r\ncBDAT 2 LAST\r\n\x00.\r\n")
        .await;
    let codes: Vec<u16> = [
        c.reply().await,
        c.reply().await,
        c.reply().await,
        c.reply().await,
    ]
    .iter()
    .map(|r| r.code)
    .collect();
    assert_eq!(codes, [250, 250, 250, 250]);
    let got = h.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].size, 7);
    assert!(got[0].files.is_empty(), "the sink keeps nothing by default");
    h.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_421_to_idle_sessions() {
    let h = start(config("163", "shutdown")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    h.shutdown().await;
    let r = c.reply().await;
    assert_eq!(r.code, 421);
    assert!(c.closed().await);
}

#[tokio::test]
async fn tls_material_is_generated_once_and_reused() {
    let cfg = config("163", "tls-reuse");
    let dir = cfg.data_dir.clone();
    let h = start(cfg.clone()).await;
    let first = h.ca_pem().to_string();
    h.shutdown().await;
    assert!(
        dir.join("ca.pem").exists()
            && dir.join("cert.pem").exists()
            && dir.join("key.pem").exists()
    );
    let h = start(cfg).await;
    assert_eq!(h.ca_pem(), first);
    // The leaf is signed by the CA, not self-issued: a handshake verifying against the CA
    // works (Client::connect_tls verifies).
    let mut c = Client::connect_tls(&h).await;
    assert_eq!(c.reply().await.code, 220);
    h.shutdown().await;
}

#[test]
fn binary_reports_a_bad_config_by_file_and_key() {
    let dir = common::temp_dir("badconfig");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "persona = \"163\"\n[limits]\nmax_recipients = \"many\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("max_recipients"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
        .args(["--persona", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of 163, qq, qq-mx, sink"));
}

#[test]
fn binary_starts_prints_where_it_listens_and_serves() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = common::temp_dir("binary");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fake-upstream"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--user",
            "me@163.com:MYCODE",
            "--web",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    let mut addr = None;
    let mut web = None;
    for _ in 0..12 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if let Some(a) = line.trim().strip_prefix("plain + STARTTLS") {
            addr = Some(a.trim().to_string());
        }
        if let Some(u) = line.trim().strip_prefix("web page and API") {
            web = Some(u.trim().to_string());
        }
        text.push_str(&line);
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert!(text.contains("user me@163.com  code MYCODE"), "{text}");
    assert!(text.contains("ca.pem"), "{text}");
    let mut s = std::net::TcpStream::connect(addr.expect("address printed")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"220 163.com"));
    s.write_all(b"QUIT\r\n").unwrap();
    // The page is up where the banner says.
    let web = web.expect("the web page's address printed");
    let host = web
        .strip_prefix("http://")
        .and_then(|w| w.strip_suffix('/'))
        .expect("http://HOST:PORT/");
    let mut h = std::net::TcpStream::connect(host).unwrap();
    h.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        h,
        "GET /api/v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    h.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("\"status\":\"ok\""),
        "{reply}"
    );
    // SIGTERM, as a service manager stops it: a clean exit.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn raw_data_is_kept_for_every_data_phase() {
    let h = start(config("163", "raw")).await;
    let mut c = authed(&h).await;
    let accepted: &[u8] = b"From: alice@163.com\r\n\r\n..dot\nbare LF\r\n.\r\n";
    let refused: &[u8] = b"From: boss@company.com\r\n\r\nx\r\n.\r\n";
    for body in [accepted, refused] {
        c.cmd("MAIL FROM:<alice@163.com>").await;
        c.cmd("RCPT TO:<bob@163.com>").await;
        c.cmd("DATA").await;
        c.send_raw(body).await;
        c.reply().await;
    }
    let got = h.received();
    assert_eq!(got.len(), 1);
    // Unstuffed and normalised in the message, exact on the wire in the raw file.
    assert_eq!(
        got[0].content.as_slice(),
        b"From: alice@163.com\r\n\r\n.dot\r\nbare LF\r\n"
    );
    assert_eq!(
        std::fs::read(got[0].raw_file.as_ref().unwrap()).unwrap(),
        accepted
    );
    let mut raws: Vec<_> = std::fs::read_dir(h.data_dir().join("raw"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    raws.sort();
    let mut want = vec![accepted.to_vec(), refused.to_vec()];
    want.sort();
    assert_eq!(raws, want);
    h.shutdown().await;
}

#[tokio::test]
async fn tls_files_can_be_given_by_path() {
    let first = start(config("163", "tls-a")).await;
    let dir_a = first.data_dir().to_path_buf();
    let ca = first.ca_pem().to_string();
    first.shutdown().await;
    let mut cfg = config("163", "tls-b");
    cfg.tls_files = Some(fake_upstream::tls::TlsFiles::in_dir(&dir_a));
    let dir_b = cfg.data_dir.clone();
    let h = start(cfg).await;
    assert_eq!(h.ca_pem(), ca);
    assert!(
        !dir_b.join("ca.pem").exists(),
        "nothing generated when files are given"
    );
    let mut c = Client::connect_tls(&h).await;
    assert_eq!(c.reply().await.code, 220);
    h.shutdown().await;

    let mut cfg = config("163", "tls-missing");
    cfg.tls_files = Some(fake_upstream::tls::TlsFiles::in_dir(&dir_b));
    let err = fake_upstream::FakeUpstream::start(cfg)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ca.pem"), "{err}");
}

/// A persona told to leave 8BITMIME out (`without`) does not offer it and refuses
/// `BODY=8BITMIME` as such a server does; the same persona otherwise offers and takes it.
#[tokio::test]
async fn a_persona_without_8bitmime_refuses_its_parameter() {
    for without in [false, true] {
        let mut cfg = config("sink", &format!("without-8bitmime-{without}"));
        if without {
            cfg.persona.without = vec!["8BITMIME".into()];
        }
        let h = start(cfg).await;
        let mut c = Client::connect(&h).await;
        c.reply().await;
        let ehlo = c.cmd("EHLO client.example").await;
        assert_eq!(ehlo.contains("8BITMIME"), !without, "{ehlo}");
        let r = c.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME").await;
        assert_eq!(r.starts_with("555"), without, "{r}");
        h.shutdown().await;
    }
}

/// Polls the fake's transcripts until `ready` holds for one of them (at most 5 s).
async fn transcript_when(
    h: &fake_upstream::Handle,
    ready: impl Fn(&fake_upstream::Transcript) -> bool,
) -> fake_upstream::Transcript {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(t) = h.transcripts().into_iter().find(|t| ready(t)) {
            return t;
        }
        assert!(Instant::now() < deadline, "{:#?}", h.transcripts());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_open_session_is_read_live_with_its_raw_data_bytes() {
    let mut cfg = config("sink", "live-record");
    cfg.transcripts = true;
    let h = start(cfg).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    c.cmd("MAIL FROM:<ceo@bank.example>").await;
    c.cmd("RCPT TO:<victim@example.net>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    // Part of the data, a bare LF, a bare CR and a NUL in it, the session left open.
    c.send_raw(b"Subject: x\r\n\r\na\nb\rc\0d").await;
    let t = transcript_when(&h, |t| t.data.first().is_some_and(|d| d.octets == 21)).await;
    assert!(t.open);
    assert!(
        t.lines
            .iter()
            .any(|l| l == "C: MAIL FROM:<ceo@bank.example>")
    );
    assert!(
        t.lines
            .iter()
            .any(|l| l == "C: RCPT TO:<victim@example.net>")
    );
    let d = &t.data[0];
    assert!(!d.ended);
    assert_eq!(d.raw, b"Subject: x\r\n\r\na\nb\rc\0d");
    assert_eq!((d.bare_lf, d.bare_cr, d.nul), (1, 1, 1));
    assert!(!d.clean());
    c.send_raw(b"\r\n.\r\n").await;
    assert!(c.reply().await.to_string().starts_with("250"));
    let t = transcript_when(&h, |t| t.data.first().is_some_and(|d| d.ended)).await;
    assert!(t.open, "no QUIT yet: still open");
    assert_eq!(t.data.len(), 1);
    c.cmd("QUIT").await;
    let t = transcript_when(&h, |t| {
        !t.open && t.lines.last().is_some_and(|l| l == "* closed")
    })
    .await;
    assert_eq!(t.data[0].bare_lf, 1);
    assert_eq!(
        h.transcripts().len(),
        1,
        "the closed session is listed once, no longer as open"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn auth_cancelled_and_bad_base64_get_rfc_4954s_501() {
    let h = start(config("163", "auth-501")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    assert!(c.cmd("AUTH LOGIN").await.starts_with("334"));
    assert_eq!(c.cmd("*").await, "501 Authentication cancelled");
    assert!(c.cmd("AUTH LOGIN").await.starts_with("334"));
    assert_eq!(
        c.cmd("!!!notbase64").await,
        "501 Error: cannot decode base64 response"
    );
    h.shutdown().await;
}

/// XOAUTH2 is listed (eras B and C) and answered: the authorization code is the bearer token;
/// a wrong token fails as a wrong code does.
#[tokio::test]
async fn xoauth2_with_the_authorization_code_as_the_token() {
    let h = start(config("163", "xoauth2")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    assert!(c.cmd("EHLO x").await.contains("XOAUTH2"));
    let wrong = b64("user=alice@163.com\x01auth=Bearer WRONG\x01\x01");
    assert_eq!(
        c.cmd(&format!("AUTH XOAUTH2 {wrong}")).await,
        "535 Error: authentication failed"
    );
    // Without an initial response: the empty challenge, then the message.
    assert_eq!(c.cmd("AUTH XOAUTH2").await, "334 ");
    let good = b64("user=alice@163.com\x01auth=Bearer ALICEAUTHCODE163\x01\x01");
    assert_eq!(c.cmd(&good).await, "235 Authentication successful");
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    h.shutdown().await;
}

/// The spam-subject rule: a contained word, whole when ASCII, after RFC 2047 decoding.
#[tokio::test]
async fn spam_subjects_are_decoded_and_matched_as_contained_words() {
    let h = start(config("163", "spam-subject")).await;
    let mut c = authed(&h).await;
    for (subject, spam) in [
        ("Test mail", true),
        ("a TEST.", true),
        ("=?GB2312?B?uabE3LLiytQ=?=", true),    // 功能测试
        ("=?GB2312?B?suLK1A==?= report", true), // 测试 report
        ("attestation", false),
        ("hello", false),
    ] {
        assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
        assert_eq!(c.cmd("RCPT TO:<bob@163.com>").await, "250 Mail OK");
        assert!(c.cmd("DATA").await.starts_with("354"));
        c.send_raw(
            format!("From: alice@163.com\r\nSubject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes(),
        )
        .await;
        let r = c.reply().await.to_string();
        assert_eq!(r.starts_with("554 DT:SPM 163 "), spam, "{subject}: {r}");
        assert_eq!(
            r.starts_with("250 Mail OK queued as"),
            !spam,
            "{subject}: {r}"
        );
    }
    h.shutdown().await;
}

/// Every error reply that carries a transaction id gets a fresh one (persona-163 4.3).
#[tokio::test]
async fn each_error_has_its_own_transid() {
    let h = start(config("163", "transids")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    let a = c.cmd("MAIL FROM:<alice@163.com>").await;
    let b = c.cmd("MAIL FROM:<alice@163.com>").await;
    assert!(a.starts_with("553 authentication is required,163 "), "{a}");
    assert!(b.starts_with("553 authentication is required,163 "), "{b}");
    let transid = |r: &str| r.split([',', ' ']).nth(6).unwrap_or_default().to_string();
    assert!(transid(&a).ends_with("S2"), "{a}");
    assert_ne!(transid(&a), transid(&b));
    h.shutdown().await;
}

/// EHLO and HELO without a name: the MX table's MI:NHD, persona-163 3.2.
#[tokio::test]
async fn ehlo_without_a_name() {
    let h = start(config("163", "no-helo-name")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    for cmd in ["EHLO", "HELO "] {
        let r = c.cmd(cmd).await;
        assert!(
            r.starts_with("550 MI:NHD 163 gzga-smtp-mtada-g0-3,"),
            "{cmd}: {r}"
        );
    }
    assert!(c.cmd("EHLO x").await.starts_with("250"));
    h.shutdown().await;
}

/// Failures for one account from two addresses add up: the account is barred from AUTH with
/// 163's 451 (the right code then too), while each address stays under its own ban limit.
#[tokio::test]
async fn an_account_is_barred_after_failures_from_several_addresses() {
    let mut cfg = config("163", "account-ban");
    cfg.persona.limits.auth_failures_before_ban = Some(3);
    cfg.persona.limits.auth_failures_per_account = Some(4);
    let h = start(cfg).await;
    let addr = h.addr();
    let wrong = format!("AUTH PLAIN {}", b64("\0alice@163.com\0WRONG"));
    let right = format!("AUTH PLAIN {}", b64("\0alice@163.com\0ALICEAUTHCODE163"));
    let mut a = from(addr, [127, 0, 0, 1]).await;
    let mut b = from(addr, [127, 0, 0, 2]).await;
    assert_eq!(a.cmd(&wrong).await, "535 Error: authentication failed");
    assert_eq!(b.cmd(&wrong).await, "535 Error: authentication failed");
    assert_eq!(a.cmd(&wrong).await, "535 Error: authentication failed");
    assert_eq!(
        b.cmd(&wrong).await,
        "451 Requested mail action not taken: too much fail authentication"
    );
    // Barred, even with the right code, from either address; another account is not.
    assert_eq!(
        a.cmd(&right).await,
        "451 Requested mail action not taken: too much fail authentication"
    );
    let other = format!("AUTH PLAIN {}", b64("\0bob@163.com\0BOBAUTHCODE16300"));
    let mut c = from(addr, [127, 0, 0, 3]).await;
    assert_eq!(c.cmd(&other).await, "235 Authentication successful");
    h.shutdown().await;
}

/// A client from the loopback address `ip`, greeted and past EHLO.
async fn from(addr: std::net::SocketAddr, ip: [u8; 4]) -> fake_upstream::testing::Client {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind((std::net::Ipv4Addr::from(ip), 0).into()).unwrap();
    let tcp = s.connect(addr).await.unwrap();
    let mut c = fake_upstream::testing::Client::from_io(Box::new(tcp));
    c.reply().await;
    c.cmd("EHLO x").await;
    c
}
