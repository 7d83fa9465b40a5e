//! The relay's upstream connector against the fake upstream over real sockets: both TLS
//! modes verified against the fake's CA, AUTH, the upstream's replies kept verbatim, pipelining,
//! byte-exact bodies, and every failure turned into a 4xx that names the upstream and phase.

use std::path::PathBuf;
use std::time::Duration;

use fake_upstream::{Config, DropWhen, FakeUpstream, Fault, Handle, Persona, Stage};
use smtp_relay::upstream::{Phase, Timeouts, TlsMode, Upstream, UpstreamConfig, UpstreamError};
use smtp_relay::upstream_tls::{TlsPolicy, verify_ca_pem};
use smtp_wire::{Credentials, ForwardPath, MailParams, Mailbox, RcptParams, ReversePath};

fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("upstream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn fake(persona: &str, name: &str, faults: Vec<Fault>) -> Handle {
    let mut config = Config::new(Persona::load(persona).unwrap(), temp_dir(name));
    config.faults = faults;
    FakeUpstream::start(config).await.unwrap()
}

fn upstream(h: &Handle, tls: TlsMode, creds: Option<(&str, &str)>) -> UpstreamConfig {
    let addr = match tls {
        TlsMode::Implicit => h.tls_addr().unwrap(),
        _ => h.addr(),
    };
    UpstreamConfig {
        name: format!("fake-{}@{addr}", h.persona_name()),
        addr: addr.to_string(),
        server_name: "smtp.163.com".into(),
        tls,
        tls_policy: if tls == TlsMode::None {
            TlsPolicy::None
        } else {
            TlsPolicy::Verify
        },
        tls_config: Some(verify_ca_pem("the fake's CA", h.ca_pem()).unwrap()),
        config_at: "[upstream] of the test".into(),
        helo_name: "relay.test".into(),
        credentials: creds.map(|(u, p)| Credentials::new(u, p)),
        timeouts: Timeouts::default(),
        transcript: true,
        bdat: None,
    }
}

fn alice() -> Option<(&'static str, &'static str)> {
    Some(("alice@163.com", "ALICEAUTHCODE163"))
}

fn from(s: &str) -> ReversePath {
    ReversePath::Mailbox(Mailbox::parse(s).unwrap())
}

fn to(s: &str) -> (ForwardPath, RcptParams) {
    (
        ForwardPath::Mailbox(Mailbox::parse(s).unwrap()),
        RcptParams::default(),
    )
}

#[tokio::test]
async fn delivers_over_both_tls_modes_byte_exact() {
    let h = fake("163", "tls-modes", vec![]).await;
    for tls in [TlsMode::Implicit, TlsMode::StartTls] {
        let mut up = Upstream::connect(&upstream(&h, tls, alice()))
            .await
            .unwrap();
        assert!(!up.capabilities().pipelining(), "163 era C");
        let env = up
            .envelope(
                &from("alice@163.com"),
                &MailParams::default(),
                &[to("bob@163.com"), to("nobody@163.com"), to("friend@qq.com")],
            )
            .await
            .unwrap();
        assert_eq!(env.mail.to_string(), "250 Mail OK");
        let rcpts: Vec<String> = env.rcpts.iter().map(|r| r.to_string()).collect();
        // 465 takes every recipient (persona-163 10.6); port 25 refuses an unknown mailbox.
        let unknown = match tls {
            TlsMode::Implicit => "250 Mail OK",
            _ => "550 Invalid User",
        };
        assert_eq!(rcpts, ["250 Mail OK", unknown, "250 Mail OK"]);
        assert_eq!(up.data().await.unwrap().code, 354);
        // Any chunking, bare LFs and leading dots: the upstream gets CRLF lines, dots stuffed.
        for chunk in [
            &b"From: alice@163.com\r\nSubject: x\r\n\r\n."[..],
            b"dot\nbare\r",
            b"\n..two\r\n",
        ] {
            up.body(chunk).await.unwrap();
        }
        let reply = up.end_of_data().await.unwrap();
        assert!(
            reply.to_string().starts_with("250 Mail OK queued as"),
            "{reply}"
        );
        up.quit().await;
    }
    let got = h.wait_for(2, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got[0].rcpt_to,
        ["bob@163.com", "nobody@163.com", "friend@qq.com"]
    );
    assert_eq!(got[1].rcpt_to, ["bob@163.com", "friend@qq.com"]);
    for m in &got {
        assert!(m.tls);
        assert_eq!(
            m.content.as_slice(),
            b"From: alice@163.com\r\nSubject: x\r\n\r\n.dot\r\nbare\r\n..two\r\n"
        );
    }
    h.shutdown().await;
}

/// An upstream that offers CHUNKING gets the content in BDAT chunks (RFC 3030): pipelined,
/// line ends made CRLF as with DATA, dots not stuffed, `BDAT n LAST` at the end; one that does
/// not (163) gets DATA all the same.
#[tokio::test]
async fn bdat_when_the_upstream_offers_chunking_data_when_not() {
    let mut config = Config::new(Persona::load("sink").unwrap(), temp_dir("bdat"));
    config.persona.rules.keep_messages = true;
    config.transcripts = true;
    let h = FakeUpstream::start(config).await.unwrap();
    let mut cfg = upstream(&h, TlsMode::StartTls, None);
    cfg.bdat = Some(16);
    let mut up = Upstream::connect(&cfg).await.unwrap();
    assert!(up.capabilities().chunking());
    up.envelope(
        &from("a@x.example"),
        &MailParams::default(),
        &[to("b@y.example")],
    )
    .await
    .unwrap();
    assert_eq!(up.data().await.unwrap().code, 354);
    for chunk in [
        &b"Subject: x\r\n\r\n."[..],
        b"dot\nbare\r",
        b"\n..two\r\nand a longer line to make a second chunk\r\n",
    ] {
        up.body(chunk).await.unwrap();
    }
    let reply = up.end_of_data().await.unwrap();
    assert!(reply.to_string().starts_with("250 2.0.0"), "{reply}");
    let t = up.transcript();
    let bdats: Vec<&String> = t.iter().filter(|l| l.starts_with("C: BDAT")).collect();
    assert!(bdats.len() >= 2, "{t:?}");
    assert!(bdats.last().unwrap().ends_with(" LAST"), "{t:?}");
    assert!(!t.iter().any(|l| l == "C: DATA"), "{t:?}");
    // A second message on the session, and the session still in step.
    up.envelope(
        &from("a@x.example"),
        &MailParams::default(),
        &[to("c@y.example")],
    )
    .await
    .unwrap();
    up.data().await.unwrap();
    up.body(b"Subject: y\r\n\r\nsmall\r\n").await.unwrap();
    assert!(up.end_of_data().await.unwrap().is_positive());
    up.quit().await;
    let got = h.wait_for(2, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        got[0].content.as_slice(),
        b"Subject: x\r\n\r\n.dot\r\nbare\r\n..two\r\nand a longer line to make a second chunk\r\n"
    );
    assert_eq!(got[1].content.as_slice(), b"Subject: y\r\n\r\nsmall\r\n");
    // On the wire: not stuffed.
    let raw = &h.transcripts()[0].data[0];
    assert!(raw.contains(b"\r\n.dot\r\n") && !raw.contains(b"\r\n..dot"));
    h.shutdown().await;

    let h = fake("163", "bdat-163", vec![]).await;
    let mut cfg = upstream(&h, TlsMode::Implicit, alice());
    cfg.bdat = Some(16);
    let mut up = Upstream::connect(&cfg).await.unwrap();
    up.envelope(
        &from("alice@163.com"),
        &MailParams::default(),
        &[to("bob@163.com")],
    )
    .await
    .unwrap();
    assert_eq!(up.data().await.unwrap().code, 354);
    up.body(b"From: alice@163.com\r\n\r\nhi\r\n").await.unwrap();
    assert!(up.end_of_data().await.unwrap().is_positive());
    assert!(up.transcript().iter().any(|l| l == "C: DATA"));
    up.quit().await;
    h.shutdown().await;
}

/// `BODY=BINARYMIME` (RFC 3030 3): the content goes in BDAT chunks as it came (bare line
/// ends, NUL and all, no CRLF added at its end), even with BDAT not configured; to an upstream
/// that offers no BINARYMIME (163) the MAIL is not sent, and 554 5.6.3 is the answer.
#[tokio::test]
async fn binary_content_goes_in_bdat_as_it_came() {
    let mut config = Config::new(Persona::load("sink").unwrap(), temp_dir("binarymime"));
    config.persona.rules.keep_messages = true;
    config.transcripts = true;
    let h = FakeUpstream::start(config).await.unwrap();
    let mut cfg = upstream(&h, TlsMode::StartTls, None);
    cfg.bdat = None;
    let mut up = Upstream::connect(&cfg).await.unwrap();
    assert!(up.capabilities().binarymime());
    let binary: MailParams = " BODY=BINARYMIME".parse().unwrap();
    let replies = up
        .envelope(&from("a@x.example"), &binary, &[to("b@y.example")])
        .await
        .unwrap();
    assert!(replies.mail.is_positive(), "{}", replies.mail);
    assert_eq!(up.data().await.unwrap().code, 354);
    let content = b"Subject: bin\r\n\r\n\x00\x01 bare\nLF\rCR\r\n.\r\n\xff no end";
    for piece in content.chunks(7) {
        up.body(piece).await.unwrap();
    }
    assert!(up.end_of_data().await.unwrap().is_positive());
    let t = up.transcript();
    assert!(t.iter().any(|l| l.contains("BODY=BINARYMIME")), "{t:?}");
    assert!(
        t.iter()
            .any(|l| l.starts_with("C: BDAT") && l.ends_with(" LAST")),
        "{t:?}"
    );
    assert!(!t.iter().any(|l| l == "C: DATA"), "{t:?}");
    up.quit().await;
    let got = h.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].content.as_slice(), &content[..]);
    h.shutdown().await;

    let h = fake("163", "binarymime-163", vec![]).await;
    let mut up = Upstream::connect(&upstream(&h, TlsMode::Implicit, alice()))
        .await
        .unwrap();
    assert!(!up.capabilities().binarymime());
    let replies = up
        .envelope(&from("alice@163.com"), &binary, &[to("bob@163.com")])
        .await
        .unwrap();
    assert!(
        replies
            .mail
            .to_string()
            .starts_with("554 5.6.3 message is binary"),
        "{}",
        replies.mail
    );
    assert!(
        !up.transcript().iter().any(|l| l.contains("BINARYMIME")),
        "the MAIL was not sent: {:?}",
        up.transcript()
    );
    up.quit().await;
    h.shutdown().await;
}

/// A chunk the upstream refuses (the message grew past its size limit): the refusal is the
/// message's verdict, and the session goes on after it.
#[tokio::test]
async fn a_refused_chunk_is_the_verdict() {
    let mut config = Config::new(Persona::load("sink").unwrap(), temp_dir("bdat-refused"));
    config.persona.limits.max_message_size = 40;
    let h = FakeUpstream::start(config).await.unwrap();
    let mut cfg = upstream(&h, TlsMode::StartTls, None);
    cfg.bdat = Some(32);
    let mut up = Upstream::connect(&cfg).await.unwrap();
    up.envelope(
        &from("a@x.example"),
        &MailParams::default(),
        &[to("b@y.example")],
    )
    .await
    .unwrap();
    up.data().await.unwrap();
    up.body(&[b'a'; 100]).await.unwrap();
    let reply = up.end_of_data().await.unwrap();
    assert_eq!(reply.code, 552, "{reply}");
    up.rset().await.unwrap();
    up.envelope(
        &from("a@x.example"),
        &MailParams::default(),
        &[to("b@y.example")],
    )
    .await
    .unwrap();
    up.data().await.unwrap();
    up.body(b"ok\r\n").await.unwrap();
    assert!(up.end_of_data().await.unwrap().is_positive());
    up.quit().await;
    h.shutdown().await;
}

#[tokio::test]
async fn pipelines_the_envelope_when_offered() {
    let h = fake("sink", "pipelining", vec![]).await;
    let mut up = Upstream::connect(&upstream(&h, TlsMode::StartTls, None))
        .await
        .unwrap();
    assert!(up.capabilities().pipelining());
    let env = up
        .envelope(
            &from("a@x.example"),
            &MailParams::default(),
            &[to("b@y.example"), to("c@y.example")],
        )
        .await
        .unwrap();
    assert_eq!(env.rcpts.len(), 2);
    // MAIL and both RCPTs went out before the first reply was read: one write.
    let t = up.transcript();
    let mail = t.iter().position(|l| l.starts_with("C: MAIL")).unwrap();
    assert!(
        t[mail + 1].starts_with("C: RCPT") && t[mail + 2].starts_with("C: RCPT"),
        "{t:?}"
    );
    up.quit().await;
    h.shutdown().await;
}

#[tokio::test]
async fn wrong_code_is_the_upstreams_verdict_verbatim_and_secrets_stay_out() {
    let h = fake("163", "wrong-code", vec![]).await;
    let err = Upstream::connect(&upstream(
        &h,
        TlsMode::Implicit,
        Some(("alice@163.com", "WRONG")),
    ))
    .await
    .unwrap_err();
    match &err {
        UpstreamError::AuthRejected { reply, .. } => {
            assert_eq!(reply.to_string(), "535 Error: authentication failed")
        }
        other => panic!("{other:?}"),
    }
    let client = err.client_reply();
    assert_eq!((client.code, client.enhanced), (454, Some((4, 7, 0))));
    assert!(client.text().contains("535 Error: authentication failed"));
    // The upstream transcript redacts the AUTH payload.
    let mut up = Upstream::connect(&upstream(&h, TlsMode::Implicit, alice()))
        .await
        .unwrap();
    assert!(
        up.transcript()
            .iter()
            .any(|l| l == "C: AUTH PLAIN <redacted>")
    );
    assert!(!up.transcript().concat().contains("ALICEAUTHCODE163"));
    up.rset().await.unwrap();
    up.quit().await;
    h.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_a_451_naming_it() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = UpstreamConfig {
        name: "smtp.example:1".into(),
        addr: format!("127.0.0.1:{port}"),
        server_name: "localhost".into(),
        tls: TlsMode::None,
        tls_policy: TlsPolicy::None,
        tls_config: None,
        config_at: String::new(),
        helo_name: "relay.test".into(),
        credentials: None,
        timeouts: Timeouts::default(),
        transcript: true,
        bdat: None,
    };
    let err = Upstream::connect(&config).await.unwrap_err();
    let r = err.client_reply();
    assert_eq!((r.code, r.enhanced), (451, Some((4, 4, 1))));
    assert!(
        r.text()
            .starts_with("upstream smtp.example:1: cannot connect"),
        "{r}"
    );
}

#[tokio::test]
async fn stalled_upstream_times_out_naming_the_phase() {
    let h = fake("163", "stall", vec![Fault::on(Stage::Rcpt).stall()]).await;
    let mut config = upstream(&h, TlsMode::Implicit, alice());
    config.timeouts.command = Duration::from_millis(300);
    let mut up = Upstream::connect(&config).await.unwrap();
    up.mail(&from("alice@163.com"), &MailParams::default())
        .await
        .unwrap();
    let (rcpt, params) = to("bob@163.com");
    let err = up.rcpt(&rcpt, &params).await.unwrap_err();
    assert!(err.is_timeout());
    let r = err.client_reply();
    assert_eq!((r.code, r.enhanced), (451, Some((4, 4, 2))));
    assert!(r.text().ends_with("no reply to RCPT after 0s"), "{r}");
    h.shutdown().await;
}

#[tokio::test]
async fn dropped_mid_data_is_never_a_success() {
    let h = fake(
        "163",
        "drop",
        vec![Fault::on(Stage::EndOfData).drop(DropWhen::Before)],
    )
    .await;
    let mut up = Upstream::connect(&upstream(&h, TlsMode::Implicit, alice()))
        .await
        .unwrap();
    up.envelope(
        &from("alice@163.com"),
        &MailParams::default(),
        &[to("bob@163.com")],
    )
    .await
    .unwrap();
    up.data().await.unwrap();
    up.body(b"From: alice@163.com\r\n\r\nx\r\n").await.unwrap();
    let err = up.end_of_data().await.unwrap_err();
    assert!(
        matches!(
            err,
            UpstreamError::Closed {
                phase: Phase::EndOfData,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.client_reply().code, 451);
    assert!(h.received().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn greeting_421_is_refused_with_the_upstreams_text() {
    let h = fake(
        "163",
        "greeting",
        vec![Fault::on(Stage::Greeting).reply("421 HL:ICC 163 too many connections")],
    )
    .await;
    let err = Upstream::connect(&upstream(&h, TlsMode::Implicit, alice()))
        .await
        .unwrap_err();
    let r = err.client_reply();
    assert_eq!(r.code, 451);
    assert!(
        r.text().contains("421 HL:ICC 163 too many connections"),
        "{r}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_handshake() {
    let h = fake("163", "tls-errors", vec![]).await;
    // A certificate from another CA: the handshake must fail, not fall back.
    let other = fake("163", "tls-other-ca", vec![]).await;
    let mut config = upstream(&h, TlsMode::Implicit, alice());
    config.tls_config = Some(verify_ca_pem("other.pem", other.ca_pem()).unwrap());
    let err = Upstream::connect(&config).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Tls { .. }), "{err:?}");
    let r = err.client_reply();
    assert_eq!((r.code, r.enhanced), (451, Some((4, 7, 5))));
    assert!(
        r.text()
            .contains("TLS: certificate not trusted: certificate for localhost")
            && r.text().ends_with("signed by another CA of the same name"),
        "{r}"
    );
    // The log's sentence names the certificate, the trust and the fix.
    let said = err.to_string();
    for part in [
        "issued by CN=smtp-relay fake-upstream CA",
        "the CA in other.pem has the name of its issuer but did not sign it",
        "Fix: if CN=smtp-relay fake-upstream CA, O=smtp-relay is your organisation's CA, write in [upstream] of the test: ca = ",
    ] {
        assert!(said.contains(part), "{part:?} in {said}");
    }
    other.shutdown().await;
    h.shutdown().await;
}
