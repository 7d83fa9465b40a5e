//! `up`'s web page end to end, in-process: a fault set through the HTTP API makes the next
//! RCPT through the relay fail as the fake said it (Python's smtplib as the mail client), the
//! one after it passes, and the message then appears in the API with its GB2312 subject
//! decoded, the relay's record and both transcripts beside it.

use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    up: smtp_relay::up::UpArgs,
}

async fn start_up(name: &str) -> smtp_relay::up::Up {
    let dir = std::env::temp_dir().join(format!("smtp-relay-web-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cli = Cli::try_parse_from([
        "up",
        "--data-dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--listen-tls",
        "127.0.0.1:0",
        "--upstream-listen",
        "127.0.0.1:0",
        "--upstream-listen-tls",
        "127.0.0.1:0",
        "--qq-listen",
        "127.0.0.1:0",
        "--web",
        "127.0.0.1:0",
    ])
    .unwrap();
    smtp_relay::up::start(&cli.up).await.unwrap()
}

/// smtplib through the relay: STARTTLS against `up`'s CA, AUTH as alice, one message with a
/// GB2312 subject to bob; prints `sent` or the refusal's code and text.
const SEND: &str = r#"
import smtplib, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
msg = (b"From: alice@163.com\r\nTo: bob@163.com\r\n"
       b"Subject: =?GB2312?B?u+HS6c2o1qo=?=\r\n\r\nHi.\r\n")
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    s.starttls(context=ssl.create_default_context(cafile=ca))
    s.login("alice@163.com", "ALICEAUTHCODE163")
    try:
        s.sendmail("alice@163.com", ["bob@163.com"], msg)
        print("sent")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["bob@163.com"]
        print(code, text.decode())
"#;

async fn smtplib(up: &smtp_relay::up::Up) -> String {
    fake_upstream::testing::python(
        SEND,
        vec![
            up.relay.addr().port().to_string(),
            up.ca.display().to_string(),
        ],
    )
    .await
    .trim()
    .to_string()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_set_through_the_api_reaches_the_mail_client_through_the_relay() {
    let up = start_up("fault").await;
    let web = up.web.as_ref().expect("the web page");
    let base = format!("http://{}", web.addr());
    let r = http()
        .post(format!("{base}/api/v1/faults"))
        .json(&json!({"fault": "RCPT bob@163.com: 451 4.7.1 busy, once"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // The relay passes the fake's refusal back as it was said.
    assert_eq!(smtplib(&up).await, "451 4.7.1 busy");
    assert_eq!(smtplib(&up).await, "sent");

    let page: Value = http()
        .get(format!("{base}/api/v1/messages?to=bob@163.com&wait=10s"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 1, "only the message that passed: {page}");
    assert_eq!(page["messages"][0]["subject"], "会议通知");
    assert_eq!(page["messages"][0]["server"], "163");
    let id = page["messages"][0]["id"]
        .as_str()
        .unwrap()
        .replace('/', "%2F")
        .replace('+', "%2B");
    let t: Value = http()
        .get(format!("{base}/api/v1/messages/{id}/transcript"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let relay: Vec<&str> = t["relay"]["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("{t}"))
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        relay.iter().any(|l| l.trim() == "U< 250 Mail OK"),
        "{relay:?}"
    );
    let record = &t["relay"]["record"];
    assert_eq!(record["mail_from"], "<alice@163.com>", "{record}");
    assert!(
        record["upstreams"][0]["reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("250 Mail OK queued as")),
        "each upstream's outcome: {record}"
    );
    let f: Value = http()
        .get(format!("{base}/api/v1/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(f["faults"][0]["seen"], 2, "{f}");
    let metrics = http()
        .get(format!("{base}/api/v1/relay/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("smtp_relay_"), "{metrics}");
    up.relay.shutdown().await;
    up.fake.shutdown().await;
}
