//! Real clients against the fake upstream, over both listeners, verifying TLS against the
//! fake's CA: lettre (in-process), curl and python3's smtplib (child processes).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{config, start};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

fn message(subject: &str) -> Message {
    Message::builder()
        .from("alice@163.com".parse::<Mailbox>().unwrap())
        .to("bob@163.com".parse::<Mailbox>().unwrap())
        .to("friend@qq.com".parse::<Mailbox>().unwrap())
        .subject(subject)
        .body(String::from("Hello from lettre.\r\n.leading dot\r\n"))
        .unwrap()
}

fn tls_params(handle: &fake_upstream::Handle) -> TlsParameters {
    TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(handle.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn lettre_over_starttls_and_implicit_tls() {
    let h = start(config("163", "lettre")).await;
    let creds = Credentials::new("alice@163.com".into(), "ALICEAUTHCODE163".into());
    let starttls = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(h.addr().port())
        .tls(Tls::Required(tls_params(&h)))
        .credentials(creds.clone())
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let response = starttls.send(message("via STARTTLS")).await.unwrap();
    assert!(response.is_positive());
    assert!(
        response.message().collect::<Vec<_>>()[0].starts_with("Mail OK queued as"),
        "{response:?}"
    );
    let implicit = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(h.tls_addr().unwrap().port())
        .tls(Tls::Wrapper(tls_params(&h)))
        .credentials(creds)
        .timeout(Some(Duration::from_secs(10)))
        .build();
    implicit.send(message("via implicit TLS")).await.unwrap();

    let got = h.wait_for(2, Duration::from_secs(5)).await.unwrap();
    assert!(got.iter().all(|m| m.tls));
    assert_eq!(got[0].rcpt_to, ["bob@163.com", "friend@qq.com"]);
    let body = String::from_utf8_lossy(&got[1].content).to_string();
    assert!(body.contains("Subject: via implicit TLS"), "{body}");
    assert!(
        body.contains("\r\n.leading dot\r\n"),
        "dot-stuffing round trip: {body}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn lettre_gets_the_upstream_refusal_for_a_wrong_code() {
    let h = start(config("163", "lettre-wrong")).await;
    let t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(h.tls_addr().unwrap().port())
        .tls(Tls::Wrapper(tls_params(&h)))
        .credentials(Credentials::new("alice@163.com".into(), "WRONG".into()))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let err = t.send(message("x")).await.unwrap_err();
    assert_eq!(
        err.status().map(|c| c.to_string()).as_deref(),
        Some("535"),
        "{err}"
    );
    assert!(
        err.to_string().contains("Error: authentication failed"),
        "{err}"
    );
    h.shutdown().await;
}

fn have(cmd: &str) -> bool {
    Command::new(cmd).arg("--version").output().is_ok()
}

/// Runs a blocking child process off the runtime's threads.
async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("spawn"))
        .await
        .unwrap()
}

#[tokio::test]
async fn curl_over_starttls_and_smtps() {
    assert!(have("curl"), "curl is on every machine here");
    let h = start(config("163", "curl")).await;
    let dir = h.data_dir().to_path_buf();
    let mail = dir.join("curl-message.txt");
    std::fs::write(
        &mail,
        "From: alice@163.com\r\nTo: bob@163.com\r\nSubject: from curl\r\n\r\nHi.\r\n",
    )
    .unwrap();
    for url in [
        format!("smtp://localhost:{}", h.addr().port()),
        format!("smtps://localhost:{}", h.tls_addr().unwrap().port()),
    ] {
        let mut cmd = Command::new("curl");
        cmd.args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--url",
            &url,
        ])
        .args(["--ssl-reqd", "--cacert"])
        .arg(h.ca_path())
        .args(["--user", "alice@163.com:ALICEAUTHCODE163"])
        .args(["--mail-from", "alice@163.com", "--mail-rcpt", "bob@163.com"])
        .arg("--upload-file")
        .arg(&mail);
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = h.wait_for(2, Duration::from_secs(5)).await.unwrap();
    assert!(
        got.iter()
            .all(|m| m.tls && m.auth.as_deref() == Some("alice@163.com"))
    );
    h.shutdown().await;
}

#[tokio::test]
async fn python_smtplib_over_both_listeners() {
    assert!(have("python3"), "python3 is on every machine here");
    let h = start(config("163", "python")).await;
    let script = r#"
import smtplib, ssl, sys
ca, port, tls_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
msg = "From: alice@163.com\r\nTo: bob@163.com\r\nSubject: from smtplib\r\n\r\nHi.\r\n"
# Port 25 (the plain listener, also the MX) refuses an unknown mailbox at RCPT...
with smtplib.SMTP("localhost", port, timeout=20) as s:
    s.starttls(context=ctx)
    s.login("alice@163.com", "ALICEAUTHCODE163")
    try:
        s.sendmail("alice@163.com", ["nobody@163.com"], msg)
        print("unexpected success")
        sys.exit(1)
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["nobody@163.com"]
        print(code, text.decode())
# ...465 (implicit TLS, submission) takes every recipient (persona-163 10.6).
with smtplib.SMTP_SSL("localhost", tls_port, context=ctx, timeout=20) as s:
    s.login("alice@163.com", "ALICEAUTHCODE163")
    s.sendmail("alice@163.com", ["nobody@163.com"], msg)
"#;
    let stdout = fake_upstream::testing::python(
        script,
        vec![
            h.ca_path().display().to_string(),
            h.addr().port().to_string(),
            h.tls_addr().unwrap().port().to_string(),
        ],
    )
    .await;
    assert_eq!(stdout.trim(), "550 Invalid User");
    let got = h.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_to, ["nobody@163.com"]);
    assert!(got[0].tls);
    h.shutdown().await;
}

#[tokio::test]
async fn plaintext_on_the_tls_listener_gets_no_smtp_answer() {
    let h = start(config("163", "plain-on-tls")).await;
    let mut tcp = tokio::net::TcpStream::connect(h.tls_addr().unwrap())
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"EHLO x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"220") && !buf.starts_with(b"250"),
        "{buf:?}"
    );
    h.shutdown().await;
}
