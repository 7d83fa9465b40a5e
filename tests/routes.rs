//! Several routes in one transaction: 163.com (and everything else) to a fake 163, qq.com to a
//! fake QQ standing in for qq.com's MX (no AUTH, any sender, unknown mailboxes refused after
//! the data as QQ does). The client authenticates once, against 163 (pass-through).

mod common;

use std::time::Duration;

use common::{Setup, setup_with, snapshot, upstream_config};
use fake_upstream::testing::Client;
use fake_upstream::{Fault, Handle, Stage, User};
use mail_parser::MimeHeaders;
use smtp_relay::route::Route;

const MESSAGE: &[u8] = b"From: alice@163.com\r\nTo: bob@163.com, friend@qq.com\r\nSubject: routes\r\n\r\nOne message, two upstreams.\r\n";

/// A fake qq.com MX: the QQ persona without its submission rules.
async fn fake_qq(name: &str, faults: Vec<Fault>) -> Handle {
    let mut config = fake_upstream::testing::config("qq", &format!("routes-qq-{name}"));
    config.persona.rules.sender = fake_upstream::persona::SenderRule::Any;
    config.users = vec![User {
        address: "friend@qq.com".into(),
        code: "FRIENDCODE".into(),
        smtp: true,
    }];
    config.faults = faults;
    fake_upstream::testing::start(config).await
}

struct Two {
    s: Setup,
    qq: Handle,
}

async fn two_routes(name: &str, qq_faults: Vec<Fault>) -> Two {
    let qq = fake_qq(name, qq_faults).await;
    let route = Route {
        label: "qq".into(),
        domains: vec!["qq.com".into(), ".qq.com".into()],
        upstream: upstream_config(&qq, "smtp.qq.com (fake)", "smtp.qq.com"),
        passthrough: false,
        queue: false,
        max_sessions: None,
    };
    let s = setup_with(&format!("routes-{name}"), vec![], move |c| {
        c.routes = vec![route];
    })
    .await;
    Two { s, qq }
}

impl Two {
    async fn envelope(&self, rcpts: &[(&str, &str)]) -> Client {
        let (mut c, auth) = self.s.login("ALICEAUTHCODE163").await;
        assert_eq!(auth, "235 Authentication successful");
        assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
        for (rcpt, want) in rcpts {
            assert_eq!(&c.cmd(&format!("RCPT TO:<{rcpt}>")).await, want, "{rcpt}");
        }
        c
    }

    async fn stop(self) {
        self.s.stop().await;
        self.qq.shutdown().await;
    }
}

async fn send_message(c: &mut Client, message: &[u8]) -> String {
    let go = c.cmd("DATA").await;
    assert!(go.starts_with("354"), "{go}");
    c.send_raw(message).await;
    c.send_raw(b".\r\n").await;
    c.reply().await.to_string()
}

fn spool_record(spool: &std::path::Path) -> serde_json::Value {
    smtp_relay::spool::records(spool)
        .unwrap()
        .into_iter()
        .next()
        .expect("a spool record")
}

#[tokio::test]
async fn each_recipient_goes_to_its_routes_upstream_and_both_queue_ids_come_back() {
    let t = two_routes("all-ok", vec![]).await;
    let mut c = t
        .envelope(&[("bob@163.com", "250 Mail OK"), ("friend@qq.com", "250 OK")])
        .await;
    let reply = send_message(&mut c, MESSAGE).await;
    assert!(
        reply.starts_with("250-2.0.0 OK: delivered by 2 upstreams:\r\n"),
        "{reply}"
    );
    assert!(
        reply.contains("250-2.0.0 smtp.163.com (fake): 250 Mail OK queued as "),
        "{reply}"
    );
    assert!(
        reply.ends_with("250 2.0.0 smtp.qq.com (fake): 250 OK: queued as."),
        "{reply}"
    );
    c.cmd("QUIT").await;

    let on_163 = t.s.fake.wait_for(1, Duration::from_secs(5)).await.unwrap();
    let on_qq = t.qq.wait_for(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(on_163[0].rcpt_to, vec!["bob@163.com".to_string()]);
    assert_eq!(on_qq[0].rcpt_to, vec!["friend@qq.com".to_string()]);
    for got in [&on_163[0], &on_qq[0]] {
        let original = &got.content[..];
        assert!(original.starts_with(b"Received: from foxmail.example ([127.0.0.1])"));
        assert!(
            original.ends_with(MESSAGE),
            "byte for byte after the trace header"
        );
    }
    let json = spool_record(&t.s.spool);
    let ups = json["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), 2, "{json}");
    assert_eq!(ups[0]["route"], "default");
    assert_eq!(ups[1]["route"], "qq");
    assert_eq!(ups[1]["rcpts"][0]["to"], "<friend@qq.com>");
    assert_eq!(ups[1]["rcpts"][0]["reply"], "250 OK");
    assert!(json["dsn"].is_null());

    t.s.relay.shutdown().await;
    let transcript = t.s.relay.transcripts().join("");
    snapshot("relay_two_routes", &transcript);
    t.stop().await;
}

/// 163 takes its recipient, QQ refuses after the data (an unknown mailbox): the client gets
/// 250 with both upstreams' words, and the sender gets an RFC 3464 bounce through 163, sent
/// as alice herself since 163 refuses the null sender.
#[tokio::test]
async fn mixed_outcome_is_250_and_a_bounce_to_the_sender() {
    let t = two_routes("mixed", vec![]).await;
    let mut c = t
        .envelope(&[
            ("bob@163.com", "250 Mail OK"),
            ("friend@qq.com", "250 OK"),
            ("nobody@qq.com", "250 OK"),
        ])
        .await;
    let reply = send_message(&mut c, MESSAGE).await;
    assert!(
        reply.starts_with("250-2.0.0 OK: delivered by 1 of 2 upstreams:\r\n"),
        "{reply}"
    );
    assert!(
        reply.contains("250-2.0.0 smtp.qq.com (fake): 550 Mailbox not found\r\n"),
        "{reply}"
    );
    assert!(
        reply.ends_with("250 2.0.0 2 recipient(s) failed: a delivery status notification goes to <alice@163.com>"),
        "{reply}"
    );
    c.cmd("QUIT").await;

    // bob's copy, then the bounce to alice.
    let got = t.s.fake.wait_for(2, Duration::from_secs(10)).await.unwrap();
    assert_eq!(got[0].rcpt_to, vec!["bob@163.com".to_string()]);
    let bounce = &got[1];
    assert_eq!(bounce.rcpt_to, vec!["alice@163.com".to_string()]);
    let original = &bounce.content[..];
    let m = mail_parser::MessageParser::default()
        .parse(original)
        .unwrap();
    let ct = m.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
    let text = String::from_utf8_lossy(original);
    for rcpt in ["friend@qq.com", "nobody@qq.com"] {
        assert!(
            text.contains(&format!("Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.0.0\r\nRemote-MTA: dns; smtp.qq.com\r\nDiagnostic-Code: smtp; 550 Mailbox not found\r\n")),
            "{text}"
        );
    }
    assert!(!text.contains("Final-Recipient: rfc822; bob@163.com"));
    assert!(
        text.contains("Subject: routes\r\n"),
        "the original headers come back"
    );
    assert!(t.qq.received().is_empty(), "QQ delivered nothing");

    let json = spool_record(&t.s.spool);
    let dsn = json["dsn"].as_str().expect("a bounce is recorded");
    assert!(t.s.spool.join(dsn).exists());
    t.stop().await;
}

/// Neither upstream takes it (the GTUBE test string is spam to both): one reply that keeps
/// each upstream's words, with the first one's code.
#[tokio::test]
async fn refused_by_every_upstream_is_one_reply_with_each_text() {
    let t = two_routes("none", vec![]).await;
    let mut c = t
        .envelope(&[("bob@163.com", "250 Mail OK"), ("friend@qq.com", "250 OK")])
        .await;
    let spam = b"From: alice@163.com\r\nSubject: hi\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    let reply = send_message(&mut c, spam).await;
    let lines: Vec<&str> = reply.split("\r\n").collect();
    assert_eq!(lines.len(), 3, "{reply}");
    assert_eq!(lines[0], "554-refused by 2 upstreams, in their words:");
    assert!(
        lines[1].starts_with("554-smtp.163.com (fake): 554 DT:SPM 163 "),
        "{reply}"
    );
    assert_eq!(lines[2], "554 smtp.qq.com (fake): 550 Mail content denied");
    // The session goes on: a new transaction to both upstreams.
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<friend@qq.com>").await, "250 OK");
    let reply = send_message(&mut c, MESSAGE).await;
    assert_eq!(reply, "250 OK: queued as.");
    c.cmd("QUIT").await;
    assert_eq!(
        t.qq.wait_for(1, Duration::from_secs(5))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(t.s.fake.received_count(), 0);
    t.stop().await;
}

/// A route whose upstream cannot be reached: its recipients get a 4xx naming it at RCPT, the
/// others go on and are delivered.
#[tokio::test]
async fn unreachable_route_is_a_4xx_for_its_recipients_only() {
    let qq_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = setup_with("routes-down", vec![], move |c| {
        let mut upstream = c.upstream.clone();
        upstream.name = "mx.qq.com (down)".into();
        upstream.addr = format!("127.0.0.1:{qq_port}");
        c.routes = vec![Route {
            label: "qq".into(),
            domains: vec!["qq.com".into()],
            upstream,
            passthrough: false,
            queue: false,
            max_sessions: None,
        }];
    })
    .await;
    let (mut c, _) = s.login("ALICEAUTHCODE163").await;
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<bob@163.com>").await, "250 Mail OK");
    let refused = c.cmd("RCPT TO:<friend@qq.com>").await.to_string();
    assert!(
        refused.starts_with("451 4.4.1 upstream mx.qq.com (down): cannot connect"),
        "{refused}"
    );
    let reply = send_message(&mut c, MESSAGE).await;
    assert!(reply.starts_with("250 Mail OK queued as"), "{reply}");
    c.cmd("QUIT").await;
    assert_eq!(
        s.fake.wait_for(1, Duration::from_secs(5)).await.unwrap()[0].rcpt_to,
        vec!["bob@163.com".to_string()]
    );
    s.stop().await;
}

/// One upstream stalls on DATA (no 354): nothing is sent anywhere, the client gets the 4xx.
/// One drops the connection at the end of data after the other has taken the message: 250
/// with the loss reported, and a bounce (never a silent loss).
#[tokio::test]
async fn trouble_before_the_end_of_data_delivers_nothing_anywhere() {
    let t = two_routes(
        "data-fault",
        vec![Fault::on(Stage::Data).first(1).reply("451 4.3.2 try later")],
    )
    .await;
    let mut c = t
        .envelope(&[("bob@163.com", "250 Mail OK"), ("friend@qq.com", "250 OK")])
        .await;
    assert_eq!(c.cmd("DATA").await, "451 4.3.2 try later");
    // The transaction is over for the relay: the client starts again, and now it works.
    c.cmd("RSET").await;
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<bob@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<friend@qq.com>").await, "250 OK");
    let reply = send_message(&mut c, MESSAGE).await;
    assert!(
        reply.starts_with("250-2.0.0 OK: delivered by 2 upstreams:"),
        "{reply}"
    );
    c.cmd("QUIT").await;
    assert_eq!(
        t.s.fake
            .wait_for(1, Duration::from_secs(5))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        t.qq.wait_for(1, Duration::from_secs(5))
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(t.s.fake.received_count(), 1, "163 got it once, not twice");
    t.stop().await;
}

#[tokio::test]
async fn connection_lost_at_the_end_of_data_on_one_route_is_reported_and_bounced() {
    let t = two_routes(
        "eod-drop",
        vec![Fault::on(Stage::EndOfData).drop(fake_upstream::DropWhen::Before)],
    )
    .await;
    let mut c = t
        .envelope(&[("bob@163.com", "250 Mail OK"), ("friend@qq.com", "250 OK")])
        .await;
    let reply = send_message(&mut c, MESSAGE).await;
    assert!(
        reply.starts_with("250-2.0.0 OK: delivered by 1 of 2 upstreams:"),
        "{reply}"
    );
    assert!(
        reply.contains("smtp.qq.com (fake): 451 4.4.2 upstream smtp.qq.com (fake): connection closed during end of data"),
        "{reply}"
    );
    c.cmd("QUIT").await;
    let got = t.s.fake.wait_for(2, Duration::from_secs(10)).await.unwrap();
    let bounce = String::from_utf8_lossy(&got[1].content).into_owned();
    assert!(
        bounce.contains(
            "Final-Recipient: rfc822; friend@qq.com\r\nAction: failed\r\nStatus: 4.4.2\r\n"
        ),
        "{bounce}"
    );
    t.stop().await;
}
