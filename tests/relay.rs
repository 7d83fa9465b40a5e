//! The relay end to end over real sockets: a client, the relay, the fake 163 upstream, all
//! in-process on 127.0.0.1 with port 0; TLS on both hops verified against one CA.

use std::time::Duration;

mod common;

use common::{setup, setup_with, snapshot};
use fake_upstream::testing::{Client, b64};
use fake_upstream::{DropWhen, Fault, Stage};
use smtp_relay::relay::AuthMode;

const MESSAGE: &[u8] = b"From: alice@163.com\r\nTo: bob@163.com\r\nSubject: hello\r\n\r\nHi Bob.\r\n..dot line\r\n.\r\n";

#[tokio::test]
async fn foxmail_style_session_is_relayed_with_the_upstreams_words() {
    let s = common::setup_refusing_unknown("foxmail").await;
    let (mut c, auth) = s.login("ALICEAUTHCODE163").await;
    // 163's own success text comes back.
    assert_eq!(auth, "235 Authentication successful");
    assert_eq!(c.cmd("MAIL FROM: <alice@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO: <bob@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<nobody@163.com>").await, "550 Invalid User");
    assert_eq!(c.cmd("RCPT TO:<friend@bupt.edu.cn>").await, "250 Mail OK");
    assert_eq!(c.cmd("DATA").await.split(' ').next(), Some("354"));
    c.send_raw(MESSAGE).await;
    let done = c.reply().await.to_string();
    assert!(
        done.starts_with("250 Mail OK queued as gzga-smtp-mtada-g0-3,"),
        "{done}"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");

    let got = s.fake.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].rcpt_to, ["bob@163.com", "friend@bupt.edu.cn"]);
    let content = String::from_utf8(got[0].content.to_vec()).unwrap();
    // A trace header first, then the message byte for byte (dot-stuffing undone).
    assert!(content.starts_with("Received: from foxmail.example ([127.0.0.1])\r\n\tby relay.test (smtp-relay) with ESMTPA id "), "{content}");
    assert!(content.ends_with("From: alice@163.com\r\nTo: bob@163.com\r\nSubject: hello\r\n\r\nHi Bob.\r\n.dot line\r\n"), "{content}");
    // The spool keeps the message as the client sent it, and a JSON record without secrets.
    let emls: Vec<_> = smtp_relay::spool::files(&s.spool)
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    assert_eq!(emls.len(), 1);
    assert_eq!(
        std::fs::read(&emls[0]).unwrap(),
        b"From: alice@163.com\r\nTo: bob@163.com\r\nSubject: hello\r\n\r\nHi Bob.\r\n.dot line\r\n"
    );
    let id = emls[0].file_stem().unwrap().to_str().unwrap();
    let json = smtp_relay::spool::record(&s.spool, id)
        .unwrap()
        .expect("the message's record")
        .to_string();
    assert!(json.contains("\"auth\":\"alice@163.com\""), "{json}");
    assert!(json.contains("250 Mail OK queued as"), "{json}");
    assert!(!json.contains("ALICEAUTHCODE163"));
    s.relay.shutdown().await;
    s.fake.shutdown().await;
    // The two-hop transcript: client lines, the relay's replies, and the upstream's lines in
    // between, in time order, with the AUTH payloads redacted.
    let transcripts = s.relay.transcripts();
    let text = fake_upstream::testing::normalize(&transcripts[0]);
    assert!(!text.contains(&b64("ALICEAUTHCODE163")) && !text.contains("ALICEAUTHCODE163"));
    insta::with_settings!({
        snapshot_path => "../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!("relay_foxmail_session", text);
    });
}

#[tokio::test]
async fn wrong_code_and_foreign_sender_get_163s_replies_verbatim() {
    let s = setup("verbatim", vec![]).await;
    let (mut c, auth) = s.login("WRONG").await;
    assert_eq!(auth, "535 Error: authentication failed");
    // Not authenticated: relaying is refused by the relay itself.
    assert_eq!(
        c.cmd("MAIL FROM:<alice@163.com>").await,
        "530 5.7.0 Authentication required"
    );
    drop(c);
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    assert_eq!(
        c.cmd("MAIL FROM:<boss@163.com>").await,
        "553 Mail from must equal authorized user"
    );
    c.cmd("QUIT").await;
    s.relay.shutdown().await;
    s.fake.shutdown().await;
    // The two sessions may end in either order: pick them by content.
    let t = s.relay.transcripts();
    let find = |needle: &str| t.iter().find(|x| x.contains(needle)).cloned().unwrap();
    let both = [find("refused the credentials"), find("boss@163.com")];
    snapshot(
        "relay_wrong_code_and_foreign_sender",
        &both.join("\n--- next session ---\n"),
    );
}

#[tokio::test]
async fn bad_addresses_are_refused_by_the_relay_and_never_reach_the_upstream() {
    let s = setup("syntax", vec![]).await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    let r = c.cmd("MAIL FROM:<chengli>").await;
    assert!(
        r.starts_with("501 5.1.7 Bad sender address syntax: no @"),
        "{r}"
    );
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    for (bad, what) in [
        ("chengli", "no @"),
        ("chengli@", "missing domain"),
        ("bupt.edu.cn", "no @"),
    ] {
        let r = c.cmd(&format!("RCPT TO:<{bad}>")).await;
        assert!(
            r.starts_with("501 5.1.3 Bad recipient address syntax") && r.contains(what),
            "{r}"
        );
    }
    c.cmd("QUIT").await;
    s.fake.shutdown().await;
    let upstream_saw: String = s.fake.transcripts().iter().map(|t| t.text()).collect();
    assert!(
        !upstream_saw.contains("chengli") && !upstream_saw.contains("bupt"),
        "{upstream_saw}"
    );
    s.relay.shutdown().await;
    snapshot("relay_seed_addresses", &s.relay.transcripts()[0]);
}

#[tokio::test]
async fn client_vanishing_mid_data_delivers_nothing() {
    let s = setup("vanish", vec![]).await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    c.cmd("DATA").await;
    c.send_raw(b"From: alice@163.com\r\n\r\nhalf a messa").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.fake.received().is_empty());
    let spooled = smtp_relay::spool::files(&s.spool)
        .map(|f| f.len())
        .unwrap_or(0);
    assert_eq!(spooled, 0, "no spool file for an aborted message");
    s.stop().await;
}

#[tokio::test]
async fn upstream_dropping_at_end_of_data_is_a_4xx_never_250() {
    let s = setup(
        "drop",
        vec![Fault::on(Stage::EndOfData).drop(DropWhen::Before)],
    )
    .await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    c.cmd("DATA").await;
    c.send_raw(MESSAGE).await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (451, Some((4, 4, 2))), "{r}");
    assert!(r.text().contains("smtp.163.com (fake)"), "{r}");
    s.stop().await;
}

#[tokio::test]
async fn upstream_stalling_at_rcpt_is_a_timely_4xx() {
    let s = setup("stall", vec![Fault::on(Stage::Rcpt).stall()]).await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    let started = std::time::Instant::now();
    let r = c.cmd("RCPT TO:<bob@163.com>").await;
    assert!(
        r.starts_with("451 4.4.2 upstream smtp.163.com (fake): no reply to RCPT after 2s"),
        "{r}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    s.stop().await;
}

#[tokio::test]
async fn smuggled_end_of_data_is_refused_and_nothing_is_relayed() {
    let s = setup("smuggle", vec![]).await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    c.cmd("DATA").await;
    c.send_raw(b"From: alice@163.com\r\n\r\nbody\n.\nMAIL FROM:<boss@163.com>\r\nRCPT TO:<victim@163.com>\r\nDATA\r\n\r\nsmuggled\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (550, Some((5, 6, 0))), "{r}");
    c.cmd("QUIT").await;
    s.fake.shutdown().await;
    assert!(s.fake.received().is_empty());
    let upstream_saw: String = s.fake.transcripts().iter().map(|t| t.text()).collect();
    assert!(!upstream_saw.contains("boss@163.com"), "{upstream_saw}");
    s.relay.shutdown().await;
}

/// BDAT from the client (RFC 3030), DATA towards 163 (which offers no CHUNKING): the chunks
/// pipelined, each answered, a CRLF split over two chunks, a line that starts with a dot;
/// 163 gets the message byte for byte, dot-stuffed on the wire and unstuffed at its end.
#[tokio::test]
async fn bdat_from_the_client_goes_on_as_data() {
    let s = setup("bdat", vec![]).await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    let body: &[u8] =
        b"From: alice@163.com\r\nTo: bob@163.com\r\nSubject: chunks\r\n\r\nHi.\r\n.a dot line\r\n";
    let (a, b) = body.split_at(body.len() - 14);
    let (a, b) = (a.to_vec(), b.to_vec());
    // The first chunk ends inside "\r\n": its CR ends one chunk, its LF starts the next.
    let cut = a.len() - 1;
    let mut wire = b"MAIL FROM:<alice@163.com>\r\nRCPT TO:<bob@163.com>\r\n".to_vec();
    wire.extend_from_slice(format!("BDAT {cut}\r\n").as_bytes());
    wire.extend_from_slice(&a[..cut]);
    let rest: Vec<u8> = [&a[cut..], &b[..]].concat();
    wire.extend_from_slice(format!("BDAT {} LAST\r\n", rest.len()).as_bytes());
    wire.extend_from_slice(&rest);
    c.send_raw(&wire).await;
    let replies: Vec<String> = [
        c.reply().await,
        c.reply().await,
        c.reply().await,
        c.reply().await,
    ]
    .iter()
    .map(|r| r.to_string())
    .collect();
    assert_eq!(replies[0], "250 Mail OK");
    assert_eq!(replies[1], "250 Mail OK");
    assert!(replies[2].starts_with("250 2.0.0"), "{replies:?}");
    assert!(
        replies[3].starts_with("250 Mail OK queued as"),
        "163's words: {replies:?}"
    );
    c.cmd("QUIT").await;
    let got = s.fake.wait_for(1, Duration::from_secs(10)).await.unwrap();
    let content = &got[0].content;
    assert!(
        content.ends_with(body),
        "{}",
        String::from_utf8_lossy(content)
    );
    let upstream: String = s.fake.transcripts().iter().map(|t| t.text()).collect();
    assert!(upstream.contains("C: DATA"), "{upstream}");
    let raw = &s
        .fake
        .transcripts()
        .iter()
        .flat_map(|t| t.data.clone())
        .next()
        .unwrap();
    assert!(
        raw.contains(b"\r\n..a dot line\r\n"),
        "dot-stuffed on the wire"
    );
    s.stop().await;
}

/// The smuggling shapes as BDAT content (no BINARYMIME offered): a bare LF line with a dot,
/// then commands, refused after the last chunk with 550 5.6.0; nothing reaches 163, and the
/// session goes on.
#[tokio::test]
async fn bdat_content_with_a_smuggled_end_is_refused() {
    let s = setup("bdat-smuggle", vec![]).await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    let ehlo = c.cmd("EHLO foxmail.example").await;
    assert!(
        ehlo.contains("CHUNKING") && !ehlo.contains("BINARYMIME"),
        "{ehlo}"
    );
    assert!(
        c.cmd("MAIL FROM:<alice@163.com> BODY=BINARYMIME")
            .await
            .starts_with("555"),
    );
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    let smuggled: &[u8] = b"From: alice@163.com\r\n\r\nbody\n.\nMAIL FROM:<boss@163.com>\r\nRCPT TO:<victim@163.com>\r\nDATA\r\n\r\nsmuggled\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", smuggled.len()).as_bytes())
        .await;
    c.send_raw(smuggled).await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (550, Some((5, 6, 0))), "{r}");
    assert!(c.cmd("NOOP").await.starts_with("250"));
    // Too large for the relay's limit: 552 once the chunk is read, nothing sent on.
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    let big = vec![b'a'; 11 * 1024 * 1024];
    c.send_raw(format!("BDAT {} LAST\r\n", big.len()).as_bytes())
        .await;
    c.send_raw(&big).await;
    assert_eq!(c.reply().await.code, 552);
    c.cmd("QUIT").await;
    s.fake.shutdown().await;
    assert!(s.fake.received().is_empty());
    let upstream_saw: String = s.fake.transcripts().iter().map(|t| t.text()).collect();
    assert!(!upstream_saw.contains("boss@163.com"), "{upstream_saw}");
    s.relay.shutdown().await;
}

/// The data timeout holds inside a BDAT chunk as inside DATA: a client that announces 100
/// octets and sends 10 is closed with `421 4.4.2` after the data timeout (1 s here), not the
/// command timeout (30 s); nothing reaches the upstream.
#[tokio::test]
async fn a_stalled_bdat_chunk_ends_at_the_data_timeout() {
    let s = setup_with("bdat-stall", vec![], |c| {
        c.data_timeout = Duration::from_secs(1);
        c.command_timeout = Duration::from_secs(30);
        c.min_data_rate = 0;
    })
    .await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    let t = std::time::Instant::now();
    c.send_raw(b"BDAT 100 LAST\r\nFrom: a\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (421, Some((4, 4, 2))), "{r}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(c.closed().await);
    s.fake.shutdown().await;
    assert!(s.fake.received().is_empty());
    s.relay.shutdown().await;
}

#[tokio::test]
async fn starttls_and_implicit_tls_towards_the_relay() {
    let s = setup("tls", vec![]).await;
    let ca = s.fake.ca_pem().to_string();
    // Plain listener: AUTH is offered on loopback; after STARTTLS a fresh EHLO is needed.
    let mut c = s.client().await;
    assert!(c.cmd("EHLO x").await.contains("250-STARTTLS"));
    c.starttls(&ca).await;
    let ehlo = c.cmd("EHLO x").await;
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64("\0alice@163.com\0ALICEAUTHCODE163")
        ))
        .await;
    assert_eq!(r, "235 Authentication successful");
    // Implicit TLS listener.
    let mut c = Client::connect_tls(s.relay.tls_addr().unwrap(), &ca, "localhost").await;
    assert_eq!(c.reply().await.code, 220);
    assert!(c.cmd("EHLO x").await.contains("AUTH PLAIN LOGIN"));
    s.stop().await;
}

/// Every message of a session is a file of its own in the spool and a line of its own in the
/// record log, under the same id.
#[tokio::test]
async fn each_message_has_its_file_and_its_record_line() {
    let s = common::setup_refusing_unknown("records").await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    for _ in 0..3 {
        assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
        assert_eq!(c.cmd("RCPT TO:<bob@163.com>").await, "250 Mail OK");
        assert_eq!(c.cmd("DATA").await.split(' ').next(), Some("354"));
        c.send_raw(MESSAGE).await;
        assert!(c.reply().await.to_string().starts_with("250 "));
    }
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    let mut files: Vec<String> = smtp_relay::spool::files(&s.spool)
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut records: Vec<String> = smtp_relay::spool::records(&s.spool)
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    files.sort();
    records.sort();
    assert_eq!(files.len(), 3);
    assert_eq!(records, files);
    s.stop().await;
}

#[tokio::test]
async fn python_smtplib_through_the_relay() {
    let s = common::setup_refusing_unknown("python").await;
    let script = r#"
import smtplib, ssl, sys
ca, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=ca)
msg = "From: alice@163.com\r\nTo: bob@163.com\r\nSubject: via relay\r\n\r\nHi.\r\n"
with smtplib.SMTP("localhost", port, timeout=20) as s:
    s.starttls(context=ctx)
    s.login("alice@163.com", "ALICEAUTHCODE163")
    refused = s.sendmail("alice@163.com", ["bob@163.com", "nobody@163.com"], msg)
    print(refused["nobody@163.com"][0], refused["nobody@163.com"][1].decode())
"#;
    let stdout = fake_upstream::testing::python(
        script,
        vec![
            s.fake.ca_path().display().to_string(),
            s.relay.addr().port().to_string(),
        ],
    )
    .await;
    assert_eq!(stdout.trim(), "550 Invalid User");
    let got = s.fake.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].rcpt_to, ["bob@163.com"]);
    s.stop().await;
}

#[tokio::test]
async fn sessions_over_the_limit_get_421_and_idle_ones_time_out() {
    let s = setup_with("limits", vec![], |c| {
        c.max_sessions = 1;
        c.command_timeout = Duration::from_millis(500);
    })
    .await;
    let mut first = s.client().await;
    let mut second = Client::connect(s.relay.addr()).await;
    let r = second.reply().await;
    assert_eq!((r.code, r.enhanced), (421, Some((4, 7, 0))), "{r}");
    assert!(second.closed().await);
    // The first session idles past the command timeout.
    let r = first.reply().await;
    assert_eq!((r.code, r.enhanced), (421, Some((4, 4, 2))), "{r}");
    assert!(first.closed().await);
    // Its permit is back (once the relay has finished that session: retry briefly).
    let mut greeted = None;
    for _ in 0..100 {
        let mut c = Client::connect(s.relay.addr()).await;
        if c.reply().await.code == 220 {
            greeted = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut third = greeted.expect("a session slot frees once the idle session ended");
    assert_eq!(third.cmd("NOOP").await, "250 2.0.0 OK");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_sends_421_to_idle_sessions() {
    let s = setup("shutdown", vec![]).await;
    let mut c = s.client().await;
    c.cmd("EHLO x").await;
    s.relay.shutdown().await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (421, Some((4, 3, 2))), "{r}");
    assert!(c.closed().await);
    s.fake.shutdown().await;
}

/// `smtp-relay serve` from a config file, in trusted mode: no AUTH from the client, the relay
/// authenticates upstream with a secret from the environment, which appears nowhere.
#[tokio::test]
async fn serve_from_a_config_file_with_a_secret_from_the_environment() {
    use std::io::{BufRead, BufReader};
    let fake = fake_upstream::testing::start(fake_upstream::testing::config("163", "serve")).await;
    let dir = fake.data_dir().to_path_buf();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
hostname = "relay.test"
listen = "127.0.0.1:0"
spool_dir = "relay-spool"
[auth]
mode = "trusted"
trusted_networks = ["127.0.0.0/8"]
[upstream]
host = "127.0.0.1"
port = {port}
tls = "implicit"
ca = "ca.pem"
server_name = "localhost"
username = "alice@163.com"
password_env = "RELAY_TEST_163_CODE"
"#,
            port = fake.tls_addr().unwrap().port()
        ),
    )
    .unwrap();
    let mut child = fake_upstream::testing::Reap(
        std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RELAY_TEST_163_CODE", "ALICEAUTHCODE163")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert!(!first.contains("ALICEAUTHCODE163"));
    let addr: std::net::SocketAddr = first
        .split("relay on ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("the address is printed")
        .parse()
        .unwrap();
    let mut c = Client::connect(addr).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(!ehlo.contains("AUTH"), "no AUTH in trusted mode: {ehlo}");
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<bob@163.com>").await, "250 Mail OK");
    c.cmd("DATA").await;
    c.send_raw(b"From: alice@163.com\r\nSubject: served\r\n\r\nx\r\n.\r\n")
        .await;
    assert!(
        c.reply()
            .await
            .to_string()
            .starts_with("250 Mail OK queued as")
    );
    let got = fake.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].auth.as_deref(), Some("alice@163.com"));
    let json: String = smtp_relay::spool::files(&dir.join("relay-spool"))
        .unwrap()
        .into_iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(!json.contains("ALICEAUTHCODE163"));
    // Its stdout was closed after the first line: Ctrl-C must still stop it cleanly (it
    // prints on the way out, to nowhere).
    assert!(child.0.try_wait().unwrap().is_none(), "serve died early");
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    fake.shutdown().await;
}

/// The seed's session as Foxmail sends it: GB2312 base64 Subject and body, recipients at
/// 163.com, qq.com and bupt.edu.cn. Every recipient's copy lands in the fake mailboxes
/// byte-exact (after the relay's trace header), and the spool JSON shows the decoded subject.
#[tokio::test]
async fn foxmail_gb2312_message_to_three_domains() {
    let s = setup("gb2312", vec![]).await;
    let (mut c, auth) = s.login("ALICEAUTHCODE163").await;
    assert_eq!(auth, "235 Authentication successful");
    assert_eq!(c.cmd("MAIL FROM: <alice@163.com>").await, "250 Mail OK");
    for rcpt in ["bob@163.com", "friend@qq.com", "chengli@bupt.edu.cn"] {
        assert_eq!(c.cmd(&format!("RCPT TO: <{rcpt}>")).await, "250 Mail OK");
    }
    c.cmd("DATA").await;
    let message: &[u8] = b"From: =?GB2312?B?s8zBog==?= <alice@163.com>\r\nTo: bob@163.com\r\nSubject: =?GB2312?B?xOO6ww==?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"GB2312\"\r\nContent-Transfer-Encoding: base64\r\nX-Mailer: Foxmail 7.2.25.228[cn]\r\n\r\nysC956OswLTX1CBGb3htYWlsoaM=\r\n";
    c.send_raw(message).await;
    c.send_raw(b".\r\n").await;
    assert!(
        c.reply()
            .await
            .to_string()
            .starts_with("250 Mail OK queued as")
    );
    c.cmd("QUIT").await;

    let got = s.fake.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].files.len(), 3, "one copy per recipient mailbox");
    for file in &got[0].files {
        let eml = std::fs::read(file).unwrap();
        let original = got[0].layout.original(&eml);
        let start = original.windows(message.len()).position(|w| w == message);
        assert!(
            start.is_some(),
            "{} holds the message byte for byte",
            file.display()
        );
        assert!(original.starts_with(b"Received: from foxmail.example ([127.0.0.1])"));
    }
    let records = smtp_relay::spool::records(&s.spool).unwrap();
    assert_eq!(records.len(), 1);
    let json = &records[0];
    assert_eq!(json["summary"]["subject"], "你好");
    assert_eq!(json["summary"]["from"], "程立 <alice@163.com>");
    assert_eq!(json["summary"]["text"], "世界，来自 Foxmail。");
    assert_eq!(json["rcpt_to"].as_array().unwrap().len(), 3);
    s.stop().await;
}

#[tokio::test]
async fn per_ip_limit_and_failed_auth_delay() {
    let s = setup_with("per-ip", vec![], |c| {
        c.max_sessions_per_ip = 1;
        c.auth_failure_delay = Duration::from_millis(400);
    })
    .await;
    let mut first = s.client().await;
    let mut second = Client::connect(s.relay.addr()).await;
    let r = second.reply().await;
    assert_eq!((r.code, r.enhanced), (421, Some((4, 7, 0))), "{r}");
    first.cmd("EHLO x").await;
    let started = std::time::Instant::now();
    let r = first
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice@163.com\0WRONG")))
        .await;
    assert_eq!(r, "535 Error: authentication failed");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered without the pause"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_spool_is_swept_by_age_at_start() {
    let dir = fake_upstream::testing::temp_dir("relay-sweep-pre");
    let spool = dir.join("relay-spool");
    std::fs::create_dir_all(&spool).unwrap();
    let old = spool.join("20200101T000000.000000-1.eml");
    std::fs::write(&old, b"old message").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let s = setup_with("sweep", vec![], |c| {
        c.spool_dir = spool.clone();
        c.retention.max_age = Duration::from_secs(3600);
    })
    .await;
    let mut gone = false;
    for _ in 0..50 {
        if !old.exists() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "a spool file older than max_age was kept");
    s.stop().await;
}

/// Auth mode `users`: the client authenticates against the relay's users file (the upstream is
/// not asked), the relay authenticates upstream with its own credentials, and an upstream
/// refusal of those is a 454 4.7.0, not the upstream's 535.
#[tokio::test]
async fn users_mode_checks_the_users_file_and_uses_the_relays_own_credentials() {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let users =
        smtp_relay::users::Users::parse(&format!("client@example.com:{hash}\n"), "t").unwrap();
    let users = std::sync::Arc::new(users);
    for (code, expect_mail) in [
        ("ALICEAUTHCODE163", "250 Mail OK"),
        (
            "WRONG",
            "454 4.7.0 upstream smtp.163.com (fake): authentication refused: 535 Error: authentication failed",
        ),
    ] {
        let u = users.clone();
        let s = setup_with(&format!("users-{code}"), vec![], move |c| {
            c.auth = AuthMode::Users(u);
            c.upstream.credentials = Some(smtp_wire::Credentials::new("alice@163.com", code));
        })
        .await;
        let mut c = s.client().await;
        c.cmd("EHLO x").await;
        let wrong = c
            .cmd(&format!("AUTH PLAIN {}", b64("\0client@example.com\0nope")))
            .await;
        assert_eq!(wrong, "535 5.7.8 Authentication credentials invalid");
        let ok = c
            .cmd(&format!(
                "AUTH PLAIN {}",
                b64("\0client@example.com\0s3cret")
            ))
            .await;
        assert_eq!(ok, "235 2.7.0 Authentication successful");
        assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, expect_mail);
        c.cmd("QUIT").await;
        s.relay.shutdown().await;
        s.fake.shutdown().await;
        // The client's password never went upstream.
        let upstream_saw: String = s.fake.transcripts().iter().map(|t| t.text()).collect();
        assert!(
            !upstream_saw.contains("client@example.com"),
            "{upstream_saw}"
        );
    }
}

/// A client that pipelines (RFC 2920) has its group forwarded as a group when the upstream
/// offers PIPELINING: MAIL and the RCPTs in one write, the replies read after.
#[tokio::test]
async fn a_pipelined_group_is_forwarded_as_a_group() {
    let s = common::setup_full("pipelined", |f| f.persona.pipelining = Some(true), |_| {}).await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    c.send_raw(b"MAIL FROM:<alice@163.com>\r\nRCPT TO:<bob@163.com>\r\nRCPT TO:<friend@qq.com>\r\nDATA\r\n")
        .await;
    for want in ["250 Mail OK", "250 Mail OK", "250 Mail OK"] {
        assert_eq!(c.reply().await.to_string(), want);
    }
    assert_eq!(c.reply().await.code, 354);
    c.send_raw(MESSAGE).await;
    assert!(
        c.reply()
            .await
            .to_string()
            .starts_with("250 Mail OK queued as")
    );
    c.cmd("QUIT").await;
    s.relay.shutdown().await;
    let t = s.relay.transcripts().join("");
    let at = t.find("C: MAIL FROM:<alice@163.com>").unwrap();
    let lines: Vec<&str> = t[at..].lines().skip(1).take(6).map(str::trim).collect();
    assert_eq!(
        lines,
        [
            "U> MAIL FROM:<alice@163.com>",
            "U> RCPT TO:<bob@163.com>",
            "U> RCPT TO:<friend@qq.com>",
            "U< 250 Mail OK",
            "U< 250 Mail OK",
            "U< 250 Mail OK",
        ],
        "{t}"
    );
    let got = s.fake.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].rcpt_to, ["bob@163.com", "friend@qq.com"]);
    s.fake.shutdown().await;
}

/// Recipients sent ahead that the relay's own session then answers itself (a duplicate, one
/// over the recipient limit) must not stay in the upstream's envelope: it is replayed with
/// exactly the client's recipients before DATA.
#[tokio::test]
async fn recipients_sent_ahead_but_refused_locally_never_get_the_message() {
    let s = common::setup_full(
        "pipelined-limit",
        |f| f.persona.pipelining = Some(true),
        |c| c.max_recipients = 2,
    )
    .await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    c.send_raw(b"MAIL FROM:<alice@163.com>\r\nRCPT TO:<bob@163.com>\r\nRCPT TO:<bob@163.COM>\r\nRCPT TO:<friend@qq.com>\r\nRCPT TO:<third@bupt.edu.cn>\r\nDATA\r\n")
        .await;
    assert_eq!(c.reply().await.to_string(), "250 Mail OK");
    assert_eq!(c.reply().await.to_string(), "250 Mail OK");
    assert_eq!(c.reply().await.code, 250, "a duplicate is accepted once");
    assert_eq!(c.reply().await.to_string(), "250 Mail OK");
    let over = c.reply().await;
    assert_eq!((over.code, over.enhanced), (452, Some((4, 5, 3))), "{over}");
    assert_eq!(c.reply().await.code, 354);
    c.send_raw(MESSAGE).await;
    assert!(
        c.reply()
            .await
            .to_string()
            .starts_with("250 Mail OK queued as")
    );
    c.cmd("QUIT").await;
    let got = s.fake.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].rcpt_to, ["bob@163.com", "friend@qq.com"]);
    s.stop().await;
}

/// An upstream that calls the relay's own command malformed is a relay bug, not the
/// client's: 451 4.3.0 (and an error in the log). An upstream closing with 421 is a 4xx too.
#[tokio::test]
async fn upstream_syntax_errors_and_421_are_translated_not_forwarded() {
    let s = setup(
        "translated",
        vec![
            Fault::on(Stage::Rcpt)
                .first(1)
                .reply("500 Error: bad syntax"),
            Fault::on(Stage::Mail)
                .nth(2)
                .reply("421 HL:ICC 163 closing"),
        ],
    )
    .await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    c.send("RCPT TO:<bob@163.com>").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (451, Some((4, 3, 0))), "{r}");
    assert!(
        r.to_string()
            .contains("refused the relay's own RCPT command: 500 Error: bad syntax"),
        "{r}"
    );
    // The upstream session was dropped; the next transaction opens a new one (with the
    // client's credentials), whose MAIL gets the 421.
    c.cmd("RSET").await;
    c.send("MAIL FROM:<alice@163.com>").await;
    let r = c.reply().await;
    assert_eq!(r.code, 451, "{r}");
    assert!(r.to_string().contains("421 HL:ICC 163 closing"), "{r}");
    c.cmd("QUIT").await;
    s.stop().await;
}

/// 300 pipelined RCPTs for addresses the upstream refuses: the relay asks the upstream about
/// at most `max_rcpt_commands` (here 50) of them and answers the rest `452 4.5.3` itself
/// (address harvesting through the relay, and its reputation with the upstream, are bounded);
/// the session goes on.
#[tokio::test]
async fn a_rcpt_flood_is_capped_before_it_reaches_the_upstream() {
    let s = common::setup_full(
        "rcpt-flood",
        |f| {
            f.persona.pipelining = Some(true);
            f.persona.rules.unknown_recipient_implicit_tls = None;
        },
        |c| c.max_rcpt_commands = 50,
    )
    .await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    let mut flood = b"MAIL FROM:<alice@163.com>\r\n".to_vec();
    for i in 0..300 {
        flood.extend_from_slice(format!("RCPT TO:<nobody{i}@163.com>\r\n").as_bytes());
    }
    c.send_raw(&flood).await;
    assert_eq!(c.reply().await.to_string(), "250 Mail OK");
    let mut codes = Vec::new();
    for _ in 0..300 {
        let r = c.reply().await;
        codes.push((r.code, r.to_string()));
    }
    let upstream_answers = codes.iter().filter(|(code, _)| *code == 550).count();
    assert_eq!(upstream_answers, 50, "{codes:?}");
    let capped: Vec<&String> = codes
        .iter()
        .filter(|(c, _)| *c == 452)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(capped.len(), 250, "{codes:?}");
    assert_eq!(
        capped[0],
        "452 4.5.3 Too many RCPT commands in this transaction"
    );
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    s.relay.shutdown().await;
    s.fake.shutdown().await;
    let upstream_saw: String = s.fake.transcripts().iter().map(|t| t.text()).collect();
    let rcpts = upstream_saw.matches("RCPT TO:<nobody").count();
    assert_eq!(rcpts, 50, "{upstream_saw}");
}

/// A client that does not trust the relay's certificate (here: one with only the public roots)
/// refuses the handshake with the alert `unknown CA`: the relay's transcript says so, over the
/// implicit-TLS port and after STARTTLS, instead of showing a session that simply ended.
#[tokio::test]
async fn a_refused_certificate_is_told_in_the_transcript() {
    let s = setup("tls-refused", vec![]).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let distrusting = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let connector = tokio_rustls::TlsConnector::from(distrusting);
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();

    let tcp = tokio::net::TcpStream::connect(s.relay.tls_addr().unwrap())
        .await
        .unwrap();
    let err = connector.connect(name.clone(), tcp).await.unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    let mut plain = tokio::net::TcpStream::connect(s.relay.addr())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain.write_all(b"EHLO x\r\nSTARTTLS\r\n").await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("220 2.0.0") {
        let n = plain.read(&mut buf).await.unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(connector.connect(name, plain).await.is_err());

    // Plain SMTP on the implicit-TLS port, and a client that connects and leaves.
    let mut plain = tokio::net::TcpStream::connect(s.relay.tls_addr().unwrap())
        .await
        .unwrap();
    plain.write_all(b"EHLO x\r\n").await.unwrap();
    let _ = plain.read(&mut buf).await;
    drop(tokio::net::TcpStream::connect(s.relay.tls_addr().unwrap()).await);

    let mut want: Vec<String> = ["implicit TLS", "STARTTLS"]
        .iter()
        .map(|how| {
            format!(
                "* TLS with the client ({how}): handshake failed: the client sent the TLS alert unknown CA"
            )
        })
        .collect();
    want.push("handshake failed: the client did not speak TLS".into());
    want.push("handshake failed: the client closed the connection during the TLS handshake".into());
    // Each session's transcript is kept when it ends; wait for the last of them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut t = String::new();
    while std::time::Instant::now() < deadline {
        t = s.relay.transcripts().join("\n");
        if want.iter().all(|w| t.contains(w.as_str())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in &want {
        assert!(t.contains(w.as_str()), "{w}\n{t}");
    }
    s.relay.shutdown().await;
    s.fake.shutdown().await;
}

/// A session of a client bound to `from` (another loopback address: the relay counts AUTH
/// failures per client address): EHLO, then `AUTH PLAIN` as alice with `code`; the reply.
async fn auth_from(s: &common::Setup, from: [u8; 4], code: &str) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    let tcp = socket.connect(s.relay.addr()).await.unwrap();
    let mut c = fake_upstream::testing::Client::from_io(Box::new(tcp));
    assert_eq!(c.reply().await.code, 220);
    c.cmd("EHLO client.example").await;
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            b64(&format!("\0alice@163.com\0{code}"))
        ))
        .await;
    c.cmd("QUIT").await;
    r
}

/// Failed AUTHs are counted across sessions, per client address and per upstream, and refused
/// by the relay before the fake 163 (which bans the relay's address after 5) ever sees a
/// fifth: every other user keeps working once the pause is over, and 163 never bans.
#[tokio::test]
async fn failed_auths_are_refused_locally_before_the_upstream_bans_the_relay() {
    let s = setup("auth-guard", vec![]).await;
    let (a, b, c, d) = (
        [127, 0, 0, 2],
        [127, 0, 0, 3],
        [127, 0, 0, 4],
        [127, 0, 0, 5],
    );
    let failed = "535 Error: authentication failed";
    assert_eq!(auth_from(&s, a, "WRONG1").await, failed);
    // The same wrong code from another client: not asked again.
    let r = auth_from(&s, b, "WRONG1").await;
    assert!(
        r.starts_with(
            "535 5.7.8 Authentication failed: smtp.163.com (fake) refused these credentials"
        ),
        "{r}"
    );
    assert_eq!(auth_from(&s, a, "WRONG2").await, failed);
    assert_eq!(auth_from(&s, a, "WRONG3").await, failed);
    // Three failures from `a`: even the right code waits.
    let r = auth_from(&s, a, "ALICEAUTHCODE163").await;
    assert!(
        r.starts_with("454 4.7.0 Too many failed authentications from your address"),
        "{r}"
    );
    // A fourth failure towards 163, from `c`: every AUTH towards it pauses.
    assert_eq!(auth_from(&s, c, "WRONG4").await, failed);
    let r = auth_from(&s, d, "ALICEAUTHCODE163").await;
    assert!(
        r.starts_with("454 4.7.0 Authentication towards smtp.163.com (fake) paused"),
        "{r}"
    );

    s.relay.shutdown().await;
    s.fake.shutdown().await;
    let upstream_saw: String = s.fake.transcripts().iter().map(|t| t.text()).collect();
    assert_eq!(upstream_saw.matches("C: AUTH").count(), 4, "{upstream_saw}");
    assert!(!upstream_saw.contains("IP is rejected"), "{upstream_saw}");
    assert!(!upstream_saw.contains("WRONG"), "no secret in a transcript");
}

/// An upstream that refuses the relay itself (163's `554 IP is rejected` once its own count of
/// failures is reached: in answer to AUTH, then at every greeting) is named as such in the
/// client's reply, logged and counted in the metrics.
#[tokio::test]
async fn an_upstream_refusing_the_relay_is_said_so() {
    let s = common::setup_full(
        "relay-banned",
        |f| f.persona.limits.auth_failures_before_ban = Some(2),
        |c| {
            c.metrics = Some("127.0.0.1:0".parse().unwrap());
            // Ask again at once (60 s by default), to see the refusal at the greeting.
            c.auth_limits.relay_refused_pause = Duration::ZERO;
        },
    )
    .await;
    assert_eq!(
        auth_from(&s, [127, 0, 0, 2], "WRONG").await,
        "535 Error: authentication failed"
    );
    let banned = "454 4.7.0 upstream smtp.163.com (fake) refuses this relay's address for now (554 Ip is rejected";
    let r = auth_from(&s, [127, 0, 0, 3], "WRONG2").await;
    assert!(r.starts_with(banned), "at AUTH: {r}");
    let r = auth_from(&s, [127, 0, 0, 4], "ALICEAUTHCODE163").await;
    assert!(r.starts_with(banned), "at the greeting: {r}");
    let metrics = common::scrape_metrics(&s.relay).await;
    assert!(
        metrics.contains("smtp_relay_upstream_refused_relay_total 2\n"),
        "{metrics}"
    );
    s.stop().await;
}

/// A pool of exactly `max_sessions_per_ip` clients reconnecting as fast as they can is never
/// refused: a session stops counting against its address when the relay says goodbye, not when
/// its cleanup behind (upstream QUIT, spool write, log line) is done (issue 12).
#[tokio::test]
async fn a_full_pool_reconnecting_at_once_is_never_refused() {
    let s = common::setup_with("pool", vec![], |c| c.max_sessions_per_ip = 4).await;
    let addr = s.relay.addr();
    let clients = (0..4).map(|_| {
        tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..40 {
                let mut c = fake_upstream::testing::Client::connect(addr).await;
                let greeting = c.reply().await;
                if greeting.code != 220 {
                    refused += 1;
                    continue;
                }
                c.cmd("EHLO pool.example").await;
                assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
            }
            refused
        })
    });
    let refused: u32 = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(refused, 0, "connections refused to a pool within the limit");
    s.stop().await;
}

/// Over the limit on the implicit-TLS listener, the client completes the handshake and reads
/// the reason inside TLS, as on the plain port; the refusal is counted by limit.
#[tokio::test]
async fn a_refusal_on_the_tls_listener_is_said_inside_tls() {
    let s = common::setup_with("tls-refusal", vec![], |c| {
        c.max_sessions_per_ip = 1;
        c.metrics = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let _held = s.client().await;
    let mut c = fake_upstream::testing::Client::connect_tls(
        s.relay.tls_addr().unwrap(),
        s.fake.ca_pem(),
        "localhost",
    )
    .await;
    assert_eq!(
        c.reply().await.to_string(),
        "421 4.7.0 relay.test Too many connections from your address, try again later"
    );
    let metrics = common::scrape_metrics(&s.relay).await;
    assert!(
        metrics.contains("smtp_relay_sessions_refused_total{limit=\"max_sessions_per_ip\"} 1\n"),
        "{metrics}"
    );
    s.stop().await;
}

/// A client that connects to the implicit-TLS port and never starts the handshake is let go
/// after `tls_handshake_timeout` (here 1 s, the default 10 s), and the transcript says which
/// limit ended it.
#[tokio::test]
async fn a_stalled_tls_handshake_ends_at_the_configured_timeout() {
    let s = common::setup_with("tls-handshake-timeout", vec![], |c| {
        c.tls_handshake_timeout = Duration::from_secs(1)
    })
    .await;
    let mut idle = tokio::net::TcpStream::connect(s.relay.tls_addr().unwrap())
        .await
        .unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    // Well within the default 10 s: the configured second ended it.
    let read = tokio::time::timeout(Duration::from_secs(6), idle.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the relay should have closed the connection: {read:?}"
    );
    let want =
        "* TLS with the client (implicit TLS): handshake failed: TLS handshake timed out after 1s";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut t = String::new();
    while std::time::Instant::now() < deadline && !t.contains(want) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        t = s.relay.transcripts().join("\n");
    }
    assert!(t.contains(want), "{t}");
    s.relay.shutdown().await;
    s.fake.shutdown().await;
}
