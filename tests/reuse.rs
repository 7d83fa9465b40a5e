//! Upstream sessions kept for the next client (connection caching), over real sockets: one
//! upstream connection carries the messages of several client sessions; one the upstream
//! closed while it was kept is not used (the message goes through a new one); the message cap
//! and pass-through mode (the client's own credentials) each get their own connection. A
//! route's cap on sessions at once keeps the relay under the upstream's limit on connections
//! from one address (163's `421 HL:ICC`): past it, a session waits for a kept one or a slot.

use std::net::SocketAddr;
use std::time::Duration;

use fake_upstream::testing::Client;
use smtp_relay::relay::{AuthMode, RelayConfig, RelayHandle, ReuseSettings};

async fn relay_to_sink(
    name: &str,
    sink_tweak: impl FnOnce(&mut fake_upstream::Config),
    reuse: Option<ReuseSettings>,
) -> (fake_upstream::Handle, RelayHandle) {
    relay_to_sink_with(name, sink_tweak, reuse, |_| {}).await
}

async fn relay_to_sink_with(
    name: &str,
    sink_tweak: impl FnOnce(&mut fake_upstream::Config),
    reuse: Option<ReuseSettings>,
    relay_tweak: impl FnOnce(&mut RelayConfig),
) -> (fake_upstream::Handle, RelayHandle) {
    let mut config = fake_upstream::testing::config("sink", &format!("reuse-{name}"));
    config.persona.rules.keep_messages = true;
    sink_tweak(&mut config);
    let sink = fake_upstream::testing::start(config).await;
    let spool = sink.data_dir().join("relay-spool");
    let config = RelayConfig {
        auth: AuthMode::TrustedNetworks(vec![("127.0.0.0".parse().unwrap(), 8)]),
        upstream_reuse: reuse,
        probe_routes: false,
        ..RelayConfig::new(
            "relay.test",
            "127.0.0.1:0".parse().unwrap(),
            spool,
            smtp_relay::load::plain_server(sink.addr()),
        )
    };
    let mut config = config;
    relay_tweak(&mut config);
    let relay = smtp_relay::relay::start(config).await.unwrap();
    (sink, relay)
}

const KEEP: ReuseSettings = ReuseSettings {
    idle: Duration::from_secs(60),
    max_messages: 100,
    max_idle: 4,
};

/// One client session, one message; the final reply.
async fn one_message(relay: SocketAddr, i: usize) -> String {
    let (c, mail) = in_transaction(relay).await;
    assert!(mail.starts_with("250"), "{mail}");
    finish(c, i).await
}

/// The relay's source address for each message the sink took, in order: one per upstream
/// connection.
fn upstream_connections(sink: &fake_upstream::Handle) -> Vec<SocketAddr> {
    sink.received().iter().map(|r| r.client).collect()
}

/// The relay keeps its session after the client's QUIT; wait until it is back in the pool
/// before the next client comes (the client hears 221 before the relay is done with it).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn one_upstream_connection_carries_several_clients_messages() {
    let (sink, relay) = relay_to_sink("shared", |_| {}, Some(KEEP)).await;
    for i in 0..3 {
        let r = one_message(relay.addr(), i).await;
        assert!(r.starts_with("250"), "{r}");
        settle().await;
    }
    let conns = upstream_connections(&sink);
    assert_eq!(conns.len(), 3);
    assert!(
        conns.iter().all(|c| *c == conns[0]),
        "one upstream connection for three client sessions: {conns:?}"
    );
    relay.shutdown().await;
    sink.shutdown().await;

    // Without reuse, as before: a connection per client session.
    let (sink, relay) = relay_to_sink("not-shared", |_| {}, None).await;
    for i in 0..2 {
        assert!(one_message(relay.addr(), i).await.starts_with("250"));
        settle().await;
    }
    let conns = upstream_connections(&sink);
    assert_ne!(conns[0], conns[1]);
    relay.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test]
async fn a_kept_session_the_upstream_closed_is_not_used() {
    // The sink closes an idle session after 1 s (421 and close), well within the relay's 60 s.
    let (sink, relay) = relay_to_sink(
        "closed",
        |c| c.persona.limits.idle_timeout_secs = 1,
        Some(KEEP),
    )
    .await;
    assert!(one_message(relay.addr(), 0).await.starts_with("250"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = one_message(relay.addr(), 1).await;
    assert!(
        r.starts_with("250"),
        "the message goes through a new connection: {r}"
    );
    let conns = upstream_connections(&sink);
    assert_eq!(conns.len(), 2);
    assert_ne!(conns[0], conns[1]);
    relay.shutdown().await;
    sink.shutdown().await;
}

/// The upstream drops the kept session at the next client's MAIL, after the relay's check that
/// it was still open (the race the check cannot close): the relay sends MAIL again on a new
/// connection, and the client never sees the failure.
#[tokio::test]
async fn a_kept_session_that_dies_at_mail_is_replaced_unseen() {
    use fake_upstream::faults::{DropWhen, Fault, Stage};
    let (sink, relay) = relay_to_sink(
        "dies",
        |c| {
            for n in [2, 4] {
                c.faults
                    .push(Fault::on(Stage::Mail).nth(n).drop(DropWhen::Before));
            }
        },
        Some(KEEP),
    )
    .await;
    assert!(one_message(relay.addr(), 0).await.starts_with("250"));
    settle().await;
    let r = one_message(relay.addr(), 1).await;
    assert!(r.starts_with("250"), "MAIL again on a new connection: {r}");
    settle().await;
    // The same with MAIL and RCPT pipelined (forwarded upstream as one group).
    let mut c = Client::connect(relay.addr()).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    c.send_raw(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\n")
        .await;
    let (mail, rcpt) = (c.reply().await.to_string(), c.reply().await.to_string());
    assert!(
        mail.starts_with("250") && rcpt.starts_with("250"),
        "{mail} / {rcpt}"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send_raw(b"Subject: 2\r\n\r\nmessage 2\r\n.\r\n").await;
    assert!(c.reply().await.to_string().starts_with("250"));
    c.cmd("QUIT").await;
    let conns = upstream_connections(&sink);
    assert_eq!(conns.len(), 3, "every message delivered, once each");
    assert!(conns[0] != conns[1] && conns[1] != conns[2], "{conns:?}");
    relay.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test]
async fn a_session_at_its_message_cap_is_closed_not_kept() {
    let cap = ReuseSettings {
        max_messages: 2,
        ..KEEP
    };
    let (sink, relay) = relay_to_sink("cap", |_| {}, Some(cap)).await;
    for i in 0..3 {
        assert!(one_message(relay.addr(), i).await.starts_with("250"));
        settle().await;
    }
    let conns = upstream_connections(&sink);
    assert_eq!(conns[0], conns[1], "two messages on the first connection");
    assert_ne!(conns[1], conns[2], "then a new one");
    relay.shutdown().await;
    sink.shutdown().await;
}

/// A client in a transaction: greeted, and MAIL answered (by then the relay's upstream session
/// is open); MAIL's reply.
async fn in_transaction(relay: SocketAddr) -> (Client, String) {
    let mut c = Client::connect(relay).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    let mail = c.cmd("MAIL FROM:<alice@example.com>").await.to_string();
    (c, mail)
}

/// The rest of [`one_message`] for a client [`in_transaction`]: the final reply.
async fn finish(mut c: Client, i: usize) -> String {
    assert!(c.cmd("RCPT TO:<bob@example.org>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send_raw(format!("Subject: {i}\r\n\r\nmessage {i}\r\n.\r\n").as_bytes())
        .await;
    let r = c.reply().await.to_string();
    c.cmd("QUIT").await;
    assert!(c.closed().await);
    r
}

/// The relay's counters as Prometheus scrapes them (curl, off the runtime that serves them).
async fn scrape(relay: &RelayHandle) -> String {
    let url = format!("http://{}/metrics", relay.metrics_addr().unwrap());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sf", "--max-time", "10", &url])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The sink refuses a third connection from one address at its greeting, as 163 does
/// (`421 HL:ICC`).
fn two_connections_per_ip(c: &mut fake_upstream::Config) {
    c.persona.limits.connections_per_ip = Some(2);
}

#[tokio::test]
async fn past_the_cap_a_session_waits_and_the_upstreams_limit_is_never_hit() {
    // Without a cap the third client at once meets the upstream's refusal.
    let (sink, relay) = relay_to_sink("uncapped", two_connections_per_ip, Some(KEEP)).await;
    let (a, ra) = in_transaction(relay.addr()).await;
    let (b, rb) = in_transaction(relay.addr()).await;
    assert!(
        ra.starts_with("250") && rb.starts_with("250"),
        "{ra} / {rb}"
    );
    let (c, rc) = in_transaction(relay.addr()).await;
    assert!(rc.starts_with("451"), "the upstream refused a third: {rc}");
    drop((a, b, c));
    relay.shutdown().await;
    sink.shutdown().await;

    // With the cap at the upstream's limit, the third waits for the first one's session.
    let (sink, relay) = relay_to_sink_with("capped", two_connections_per_ip, Some(KEEP), |c| {
        c.upstream_max_sessions = Some(2);
        c.metrics = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let (a, ra) = in_transaction(relay.addr()).await;
    let (b, rb) = in_transaction(relay.addr()).await;
    assert!(
        ra.starts_with("250") && rb.starts_with("250"),
        "{ra} / {rb}"
    );
    let third = tokio::spawn(in_transaction(relay.addr()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "the third waits");
    assert!(finish(a, 0).await.starts_with("250"));
    let (c, rc) = third.await.unwrap();
    assert!(
        rc.starts_with("250"),
        "the third took the first one's session: {rc}"
    );
    assert!(finish(b, 1).await.starts_with("250"));
    assert!(finish(c, 2).await.starts_with("250"));
    let conns = upstream_connections(&sink);
    assert_eq!(conns.len(), 3);
    assert_eq!(
        conns[0], conns[2],
        "the first session carried the third message: {conns:?}"
    );
    let metrics = scrape(&relay).await;
    assert!(
        metrics.contains("\nsmtp_relay_upstream_session_waits_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("\nsmtp_relay_upstream_busy_total 0\n"));
    relay.shutdown().await;
    sink.shutdown().await;
}

#[tokio::test]
async fn a_session_that_waits_too_long_hears_451_and_may_try_again() {
    let (sink, relay) = relay_to_sink_with(
        "busy",
        |_| {},
        Some(KEEP),
        |c| {
            c.upstream_max_sessions = Some(1);
            c.upstream_session_wait = Duration::from_secs(2);
        },
    )
    .await;
    let (a, ra) = in_transaction(relay.addr()).await;
    assert!(ra.starts_with("250"), "{ra}");
    let (mut b, rb) = in_transaction(relay.addr()).await;
    assert!(
        rb.starts_with("451 4.4.5 ") && rb.contains("1 of 1 busy (max_sessions)"),
        "{rb}"
    );
    // Nothing went upstream for it; once the first is done, its session serves the second.
    assert!(finish(a, 0).await.starts_with("250"));
    settle().await;
    let again = b.cmd("MAIL FROM:<alice@example.com>").await.to_string();
    assert!(again.starts_with("250"), "{again}");
    assert!(finish(b, 1).await.starts_with("250"));
    let conns = upstream_connections(&sink);
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0], conns[1]);
    relay.shutdown().await;
    sink.shutdown().await;
}

/// Without reuse the cap still holds: a waiting session gets the slot a closed one gives back.
#[tokio::test]
async fn without_reuse_a_closed_session_gives_its_slot_to_the_waiter() {
    let (sink, relay) = relay_to_sink_with("slot", two_connections_per_ip, None, |c| {
        c.upstream_max_sessions = Some(1);
    })
    .await;
    let (a, ra) = in_transaction(relay.addr()).await;
    assert!(ra.starts_with("250"), "{ra}");
    let second = tokio::spawn(in_transaction(relay.addr()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second waits");
    assert!(finish(a, 0).await.starts_with("250"));
    let (b, rb) = second.await.unwrap();
    assert!(rb.starts_with("250"), "{rb}");
    assert!(finish(b, 1).await.starts_with("250"));
    let conns = upstream_connections(&sink);
    assert_eq!(conns.len(), 2);
    assert_ne!(conns[0], conns[1], "a new connection each");
    relay.shutdown().await;
    sink.shutdown().await;
}
