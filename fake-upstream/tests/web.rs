//! The web page's HTTP API over real HTTP (reqwest) against a fake 163 on 127.0.0.1: the
//! list and its search, waiting for a message, a message decoded (GB2312 subject and body,
//! an attachment), its raw source and transcript, deleting, faults and quotas changed at run
//! time and seen by the next SMTP session, the live event stream, and the guard.

mod common;

use std::time::Duration;

use common::{Client, b64, config, start};
use fake_upstream::web::{Server, Web, WebConfig};
use serde_json::Value;

/// 会议通知 ("meeting notice") in GB2312, as Foxmail encodes it (not 测试, "test": 163 refuses that
/// subject as spam).
const GB2312_SUBJECT: &str = "=?GB2312?B?u+HS6c2o1qo=?=";

async fn web_for(h: &fake_upstream::Handle) -> Web {
    Web::start(WebConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        vec![Server {
            name: "163".into(),
            handle: h.clone(),
        }],
    ))
    .await
    .unwrap()
}

/// A message id in a URL path: 163's ids may hold `/` and `+`.
fn path_id(id: &str) -> String {
    id.replace('/', "%2F").replace('+', "%2B")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get(w: &Web, path: &str) -> (u16, Value) {
    let r = http()
        .get(format!("http://{}{path}", w.addr()))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn send_json(w: &Web, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .request(method, format!("http://{}{path}", w.addr()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A Foxmail-like message: GB2312 subject and body (base64), a PDF attachment.
fn foxmail_message() -> Vec<u8> {
    // 你好 in GB2312, base64: xOO6ww==
    format!(
        "From: alice@163.com\r\nTo: bob@163.com\r\nSubject: {GB2312_SUBJECT}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain; charset=\"GB2312\"\r\nContent-Transfer-Encoding: base64\r\n\r\nxOO6ww==\r\n\
         --b1\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Disposition: attachment; filename=\"report.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n"
    )
    .into_bytes()
}

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

/// MAIL, RCPT, DATA with `message`; the RCPT reply when it is not 250, else the final reply.
async fn deliver(c: &mut fake_upstream::testing::Client, rcpt: &str, message: &[u8]) -> String {
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if !r.starts_with("250") {
        c.cmd("RSET").await;
        return r;
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut data = message.to_vec();
    data.extend_from_slice(b".\r\n");
    c.send_raw(&data).await;
    c.reply().await.to_string()
}

#[tokio::test]
async fn a_ci_script_waits_for_a_message_and_reads_it_decoded() {
    let h = start(config("163", "web-wait")).await;
    let w = web_for(&h).await;
    // Asked before the message exists: the answer comes when it arrives.
    let waiter = {
        let url = format!(
            "http://{}/api/v1/messages?to=bob@163.com&wait=10s",
            w.addr()
        );
        tokio::spawn(async move { http().get(url).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = authed(&h).await;
    let reply = deliver(&mut c, "bob@163.com", &foxmail_message()).await;
    assert!(reply.starts_with("250 Mail OK queued as"), "{reply}");
    let r = waiter.await.unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["total"], 1, "{page}");
    let m = &page["messages"][0];
    assert_eq!(m["subject"], "会议通知", "{m}");
    assert_eq!(m["rcpt_to"][0], "bob@163.com");
    assert_eq!(m["auth"], "alice@163.com");
    // 163's ids may hold a `/` and a `+`: in a path, encoded.
    let id = path_id(m["id"].as_str().unwrap());

    // Nobody has mail for carol: a wait ends in a 404 with a JSON error.
    let (status, err) = get(&w, "/api/v1/messages?to=carol@163.com&wait=200ms").await;
    assert_eq!(status, 404);
    assert_eq!(err["status"], 404);
    assert!(
        err["error"].as_str().unwrap().contains("within 200ms"),
        "{err}"
    );
    let (status, err) = get(&w, "/api/v1/messages?wait=1h").await;
    assert_eq!((status, err["status"].clone()), (400, Value::from(400)));

    // The message decoded: subject, GB2312 body, the attachment, the persona's headers.
    let (status, v) = get(&w, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["subject"], "会议通知");
    assert_eq!(v["text"].as_str().unwrap().trim(), "你好", "{v}");
    assert_eq!(v["attachments"][0]["name"], "report.pdf");
    assert_eq!(v["attachments"][0]["content_type"], "application/pdf");
    let subject = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "Subject")
        .unwrap();
    assert_eq!(subject["raw"], GB2312_SUBJECT);
    assert_eq!(subject["decoded"], "会议通知");
    assert!(
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "X-CM-TRANSID"),
        "the delivered copy, with 163's headers: {v}"
    );
    let pdf = http()
        .get(format!(
            "http://{}/api/v1/messages/{id}/attachments/0",
            w.addr()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(pdf.status(), 200);
    assert_eq!(
        pdf.headers()["content-type"],
        "application/octet-stream",
        "saved, never shown in place"
    );
    assert!(
        pdf.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("report.pdf")
    );
    assert_eq!(&pdf.bytes().await.unwrap()[..], b"%PDF-1.4\n");
    let raw = http()
        .get(format!("http://{}/api/v1/messages/{id}/raw", w.addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.starts_with("DKIM-Signature: "), "{raw}");
    assert!(raw.contains(GB2312_SUBJECT));
    let data = http()
        .get(format!(
            "http://{}/api/v1/messages/{id}/raw?data=true&limit=5",
            w.addr()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(data, "From:", "the DATA phase as it came, cut at limit");

    // The session that delivered it, AUTH redacted.
    let (_, t) = get(&w, &format!("/api/v1/messages/{id}/transcript")).await;
    let lines: Vec<&str> = t["upstream"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(lines.contains(&"C: MAIL FROM:<alice@163.com>"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("C: AUTH PLAIN")
            && !l.contains(&b64("\0alice@163.com\0ALICEAUTHCODE163"))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("S: 250 Mail OK queued as"))
    );
    assert_eq!(t["upstream"]["data"][0]["bare_lf"], 0);
    assert!(t["relay"].is_null(), "no relay in front of this fake");
    h.shutdown().await;
}

#[tokio::test]
async fn faults_and_quotas_changed_through_the_api_change_what_the_next_session_sees() {
    let h = start(config("163", "web-faults")).await;
    let w = web_for(&h).await;
    let (status, f) = send_json(
        &w,
        reqwest::Method::POST,
        "/api/v1/faults",
        serde_json::json!({"fault": "RCPT bob@163.com: 451 4.7.1 busy, once"}),
    )
    .await;
    assert_eq!(status, 201, "{f}");
    assert_eq!(
        f["faults"][0]["text"],
        "RCPT bob@163.com: 451 4.7.1 busy, once"
    );
    let mut c = authed(&h).await;
    let msg = b"From: alice@163.com\r\nSubject: hi\r\n\r\nbody\r\n";
    assert_eq!(deliver(&mut c, "bob@163.com", msg).await, "451 4.7.1 busy");
    assert!(deliver(&mut c, "bob@163.com", msg).await.starts_with("250"));
    let (_, f) = get(&w, "/api/v1/faults").await;
    assert_eq!(f["faults"][0]["seen"], 2, "{f}");
    // A second fault beside it: the first keeps its count (it does not fire again).
    let (status, _) = send_json(
        &w,
        reqwest::Method::POST,
        "/api/v1/faults",
        serde_json::json!({"fault": "MAIL: 421 HL:ICC closing, twice"}),
    )
    .await;
    assert_eq!(status, 201);
    let (_, f) = get(&w, "/api/v1/faults").await;
    assert_eq!(f["faults"][0]["seen"], 2, "{f}");
    assert_eq!(f["faults"][1]["seen"], 0, "{f}");
    // A fault the syntax does not know: 400 and what is expected.
    let (status, err) = send_json(
        &w,
        reqwest::Method::POST,
        "/api/v1/faults",
        serde_json::json!({"fault": "RCPX: 451 x"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("not a stage"),
        "{err}"
    );
    let r = http()
        .delete(format!("http://{}/api/v1/faults/1", w.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .delete(format!("http://{}/api/v1/faults/7", w.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(h.faults().len(), 1);

    // 163's quotas off at run time, then a limit set by key.
    let (_, l) = get(&w, "/api/v1/limits").await;
    assert_eq!(l["quotas"], true, "{l}");
    let (status, l) = send_json(
        &w,
        reqwest::Method::PUT,
        "/api/v1/limits",
        serde_json::json!({"quotas": false}),
    )
    .await;
    assert_eq!(
        (status, l["quotas"].clone()),
        (200, Value::from(false)),
        "{l}"
    );
    assert_eq!(l["limits"]["sender_per_15min"], Value::Null);
    let (status, l) = send_json(
        &w,
        reqwest::Method::PUT,
        "/api/v1/limits",
        serde_json::json!({"set": {"max_recipients": 1}}),
    )
    .await;
    assert_eq!(status, 200, "{l}");
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    assert!(c.cmd("RCPT TO:<bob@163.com>").await.starts_with("250"));
    let second = c.cmd("RCPT TO:<carol@163.com>").await;
    assert!(
        second.starts_with("5"),
        "one recipient at most now: {second}"
    );
    let (status, err) = send_json(
        &w,
        reqwest::Method::PUT,
        "/api/v1/limits",
        serde_json::json!({"set": {"max_message_size": 10}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("fixed when the server starts")
    );
    let (_, a) = get(&w, "/api/v1/accounts").await;
    assert!(
        a["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["address"] == "alice@163.com" && u["code"] == "ALICEAUTHCODE163"),
        "{a}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn the_event_stream_tells_of_each_message_as_it_arrives_and_deletes_remove_files() {
    use futures_util::StreamExt;
    let h = start(config("163", "web-events")).await;
    let w = web_for(&h).await;
    let r = http()
        .get(format!("http://{}/api/v1/events", w.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut c = authed(&h).await;
    let msg = b"From: alice@163.com\r\nSubject: live\r\n\r\nbody\r\n";
    assert!(deliver(&mut c, "bob@163.com", msg).await.starts_with("250"));
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = stream.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("event: message") && seen.contains("\"subject\":\"live\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "{seen}");

    let (_, page) = get(&w, "/api/v1/messages").await;
    let id = path_id(page["messages"][0]["id"].as_str().unwrap());
    let eml = h.received()[0].files[0].clone();
    assert!(eml.exists());
    let r = http()
        .delete(format!("http://{}/api/v1/messages/{id}", w.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!eml.exists() && !eml.with_extension("json").exists());
    assert!(h.received().is_empty());
    let (status, _) = get(&w, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 404);
    // Delete all: every file, and the list is empty.
    for _ in 0..3 {
        assert!(deliver(&mut c, "bob@163.com", msg).await.starts_with("250"));
    }
    let (_, page) = get(&w, "/api/v1/messages?wait=5s&limit=1").await;
    assert_eq!(page["limit"], 1);
    let files: Vec<_> = h.received().iter().flat_map(|r| r.files.clone()).collect();
    assert_eq!(files.len(), 3);
    let r = http()
        .delete(format!("http://{}/api/v1/messages", w.addr()))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["deleted"], 3, "{body}");
    assert!(files.iter().all(|f| !f.exists()));
    let (_, page) = get(&w, "/api/v1/messages").await;
    assert_eq!(page["total"], 0);
    h.shutdown().await;
}

#[tokio::test]
async fn an_earlier_runs_mailboxes_are_listed_and_pages_split_the_list() {
    let dir = common::temp_dir("web-disk");
    let mut cfg = config("163", "web-disk-unused");
    cfg.data_dir = dir.clone();
    let h = start(cfg.clone()).await;
    let mut c = authed(&h).await;
    for i in 0..5 {
        let msg = format!("From: alice@163.com\r\nSubject: number {i}\r\n\r\nbody\r\n");
        assert!(
            deliver(&mut c, "bob@163.com", msg.as_bytes())
                .await
                .starts_with("250")
        );
    }
    c.cmd("QUIT").await;
    h.shutdown().await;
    // A new run in the same directory remembers nothing; its page lists them from disk.
    let h = start(cfg).await;
    let w = web_for(&h).await;
    let (_, page) = get(&w, "/api/v1/messages?wait=5s&limit=2&offset=1").await;
    assert_eq!(page["total"], 5, "{page}");
    let subjects: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        ["number 3", "number 2"],
        "newest first, after the first"
    );
    assert_eq!(page["messages"][0]["from_disk"], true);
    let (_, page) = get(&w, "/api/v1/messages?subject=NUMBER%204").await;
    assert_eq!(page["total"], 1);
    let raw_id = page["messages"][0]["id"].as_str().unwrap().to_string();
    let (status, v) = get(&w, &format!("/api/v1/messages/{}", path_id(&raw_id))).await;
    assert_eq!(status, 200);
    assert_eq!(v["text"].as_str().unwrap().trim(), "body");
    // The id as its file is named finds it too (`/` as `_`).
    let stem = fake_upstream::store::file_stem(&raw_id).replace('+', "%2B");
    let (status, v) = get(&w, &format!("/api/v1/messages/{stem}")).await;
    assert_eq!((status, v["id"].as_str()), (200, Some(raw_id.as_str())));
    h.shutdown().await;
}

#[tokio::test]
async fn the_guard_wants_a_loopback_host_json_changes_and_the_token_when_set() {
    let h = start(config("163", "web-guard")).await;
    let w = web_for(&h).await;
    // DNS rebinding: a page on evil.example that resolves to 127.0.0.1.
    let r = http()
        .get(format!("http://{}/api/v1/health", w.addr()))
        .header("host", "evil.example:8025")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A cross-site form posts text/plain, never JSON without a preflight.
    let r = http()
        .post(format!("http://{}/api/v1/faults", w.addr()))
        .header("content-type", "text/plain")
        .body(r#"{"fault":"RCPT: 550 no"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(h.faults().is_empty());
    let page = http()
        .get(format!("http://{}/", w.addr()))
        .send()
        .await
        .unwrap();
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    assert!(page.text().await.unwrap().contains("<title>fake upstream"));

    let mut cfg = WebConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        vec![Server {
            name: "163".into(),
            handle: h.clone(),
        }],
    );
    cfg.token = Some("s3cret".into());
    let t = Web::start(cfg).await.unwrap();
    assert!(t.url().ends_with("/?token=s3cret"));
    let (status, _) = get(&t, "/api/v1/health").await;
    assert_eq!(status, 401);
    let (status, _) = get(&t, "/api/v1/health?token=s3cret").await;
    assert_eq!(status, 200);
    let r = http()
        .get(format!("http://{}/api/v1/health", t.addr()))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, err) = get(&w, "/api/v1/nothing").await;
    assert_eq!((status, err["status"].clone()), (404, Value::from(404)));
    h.shutdown().await;
}

#[tokio::test]
async fn a_message_over_the_view_limit_is_shown_by_its_headers_and_downloaded_whole() {
    let h = start(config("163", "web-large")).await;
    let mut cfg = WebConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        vec![Server {
            name: "163".into(),
            handle: h.clone(),
        }],
    );
    // A small limit stands for the 16 MiB one: the same code path, without 16 MiB in a test.
    cfg.view_max = 2048;
    let w = Web::start(cfg).await.unwrap();
    let mut c = authed(&h).await;
    let mut msg =
        b"From: alice@163.com\r\nSubject: big\r\nContent-Type: text/html\r\n\r\n".to_vec();
    for _ in 0..100 {
        msg.extend_from_slice(b"<p>0123456789012345678901234567890123456789</p>\r\n");
    }
    assert!(
        deliver(&mut c, "bob@163.com", &msg)
            .await
            .starts_with("250")
    );
    let (_, page) = get(&w, "/api/v1/messages?wait=5s").await;
    let id = path_id(page["messages"][0]["id"].as_str().unwrap());
    let (status, v) = get(&w, &format!("/api/v1/messages/{id}")).await;
    assert_eq!(status, 200);
    assert!(
        v["body_omitted"]
            .as_str()
            .unwrap()
            .contains("more than this page decodes (2048)"),
        "{v}"
    );
    assert!(v["text"].is_null() && v["html"] == false, "{v}");
    assert!(
        v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "Subject" && h["raw"] == "big")
    );
    let (status, err) = get(&w, &format!("/api/v1/messages/{id}/html")).await;
    assert_eq!(status, 413, "{err}");
    let raw = http()
        .get(format!("http://{}/api/v1/messages/{id}/raw", w.addr()))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        raw.len() > 5000 && raw.ends_with(b"</p>\r\n"),
        "the whole message: {}",
        raw.len()
    );
    h.shutdown().await;
}
