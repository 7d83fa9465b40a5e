//! The relay behind a load balancer: the PROXY protocol (v1 and v2) on its listeners, over
//! real sockets. The client's address is the header's for everything the relay decides and
//! records; nothing but a trusted balancer may connect; a missing or broken header closes the
//! connection.

use std::net::SocketAddr;
use std::time::Duration;

use fake_upstream::testing::Client;
use smtp_relay::relay::{AuthMode, ProxyProtocol, RelayConfig, RelayHandle};
use smtp_wire::proxy::{ProxyHeader, encode_v1, encode_v2};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Behind {
    sink: fake_upstream::Handle,
    relay: RelayHandle,
    spool: std::path::PathBuf,
    tls: fake_upstream::tls::TlsMaterial,
}

/// A relay whose listeners take PROXY headers from `balancers`, relaying without AUTH for
/// clients in 203.0.113.0/24 only (the loopback address the test connects from is not one:
/// mail goes through only when the relay believes the header), to a sink.
async fn behind(name: &str, balancers: &str, tweak: impl FnOnce(&mut RelayConfig)) -> Behind {
    let mut config = fake_upstream::testing::config("sink", &format!("proxy-{name}"));
    config.persona.rules.keep_messages = true;
    let sink = fake_upstream::testing::start(config).await;
    let tls =
        fake_upstream::tls::load(fake_upstream::tls::TlsFiles::in_dir(sink.data_dir())).unwrap();
    let spool = sink.data_dir().join("relay-spool");
    let (net, len) = balancers.split_once('/').unwrap();
    let mut config = RelayConfig {
        listen_tls: Some("127.0.0.1:0".parse().unwrap()),
        tls: Some(tls.server_config.clone()),
        auth: AuthMode::TrustedNetworks(vec![("203.0.113.0".parse().unwrap(), 24)]),
        proxy_protocol: Some(ProxyProtocol {
            trusted: vec![(net.parse().unwrap(), len.parse().unwrap())],
            header_timeout: Duration::from_secs(2),
        }),
        probe_routes: false,
        ..RelayConfig::new(
            "relay.test",
            "127.0.0.1:0".parse().unwrap(),
            spool.clone(),
            smtp_relay::load::plain_server(sink.addr()),
        )
    };
    tweak(&mut config);
    let relay = smtp_relay::relay::start(config).await.unwrap();
    Behind {
        sink,
        relay,
        spool,
        tls,
    }
}

fn proxied(source: &str, relay: SocketAddr) -> ProxyHeader {
    ProxyHeader::Proxied {
        source: source.parse().unwrap(),
        destination: relay,
    }
}

/// A connection to `addr` that first says `header`, as a balancer does.
async fn through_balancer(addr: SocketAddr, header: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    tcp
}

/// One message from `c` (greeted already); the final reply.
async fn send(c: &mut Client) -> String {
    c.cmd("EHLO client.example").await;
    let mail = c.cmd("MAIL FROM:<alice@example.com>").await;
    if !mail.starts_with("250") {
        return mail;
    }
    let rcpt = c.cmd("RCPT TO:<bob@example.org>").await;
    if !rcpt.starts_with("250") {
        return rcpt;
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send_raw(b"Subject: through the balancer\r\n\r\nhello\r\n.\r\n")
        .await;
    let r = c.reply().await.to_string();
    c.cmd("QUIT").await;
    r
}

fn spool_json(spool: &std::path::Path) -> Vec<serde_json::Value> {
    smtp_relay::spool::records(spool).unwrap()
}

#[tokio::test]
async fn the_client_is_who_the_header_says_in_v2_and_v1() {
    let b = behind("both", "127.0.0.0/8", |_| {}).await;
    let addr = b.relay.addr();
    for (header, source) in [
        (
            encode_v2(&proxied("203.0.113.7:40000", addr)),
            "203.0.113.7:40000",
        ),
        (
            encode_v1(&proxied("203.0.113.8:40001", addr)).into_bytes(),
            "203.0.113.8:40001",
        ),
    ] {
        let tcp = through_balancer(addr, &header).await;
        let mut c = Client::from_io(Box::new(tcp));
        assert!(c.reply().await.to_string().starts_with("220 relay.test"));
        let r = send(&mut c).await;
        assert!(r.starts_with("250"), "{source}: {r}");
        let received = b.sink.received();
        let last = received.last().unwrap();
        let text = String::from_utf8_lossy(&last.content);
        let ip = source.split(':').next().unwrap();
        assert!(
            text.starts_with(&format!("Received: from client.example ([{ip}])")),
            "{text}"
        );
    }
    let mut clients: Vec<String> = spool_json(&b.spool)
        .iter()
        .map(|j| j["client"].as_str().unwrap().to_string())
        .collect();
    clients.sort();
    assert_eq!(clients, ["203.0.113.7:40000", "203.0.113.8:40001"]);
    b.relay.shutdown().await;
    b.sink.shutdown().await;
}

#[tokio::test]
async fn the_header_decides_trust_a_health_check_is_the_balancer_itself() {
    let b = behind("trust", "127.0.0.0/8", |_| {}).await;
    let addr = b.relay.addr();
    // A client outside the relay's trusted networks, by its header: no relaying for it.
    let tcp = through_balancer(addr, &encode_v2(&proxied("198.51.100.1:5000", addr))).await;
    let mut c = Client::from_io(Box::new(tcp));
    c.reply().await;
    c.cmd("EHLO client.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.com>").await,
        "530 5.7.0 Authentication required"
    );
    // LOCAL (a health check): the balancer's own address, which is not trusted to relay.
    let tcp = through_balancer(addr, &encode_v2(&ProxyHeader::Local)).await;
    let mut c = Client::from_io(Box::new(tcp));
    assert!(c.reply().await.to_string().starts_with("220"));
    c.cmd("EHLO check.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<alice@example.com>").await,
        "530 5.7.0 Authentication required"
    );
    assert_eq!(b.sink.received_count(), 0);
    b.relay.shutdown().await;
    b.sink.shutdown().await;
}

#[tokio::test]
async fn implicit_tls_follows_the_header_in_the_same_packet() {
    let b = behind("tls", "127.0.0.0/8", |_| {}).await;
    let addr = b.relay.tls_addr().unwrap();
    let tcp = through_balancer(addr, &encode_v2(&proxied("203.0.113.9:40002", addr))).await;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = fake_upstream::testing::tls_connector(b.sink.ca_pem())
        .connect(name, tcp)
        .await
        .expect("TLS after the header");
    let mut c = Client::from_io(Box::new(tls));
    assert!(c.reply().await.to_string().starts_with("220 relay.test"));
    let r = send(&mut c).await;
    assert!(r.starts_with("250"), "{r}");
    let json = spool_json(&b.spool);
    assert_eq!(json[0]["client"], "203.0.113.9:40002");
    assert_eq!(json[0]["tls"], true);
    drop(b.tls);
    b.relay.shutdown().await;
    b.sink.shutdown().await;
}

#[tokio::test]
async fn per_ip_limits_count_the_clients_behind_the_balancer() {
    let b = behind("per-ip", "127.0.0.0/8", |c| c.max_sessions_per_ip = 1).await;
    let addr = b.relay.addr();
    let open = |source: &'static str| async move {
        let tcp = through_balancer(addr, &encode_v2(&proxied(source, addr))).await;
        let mut c = Client::from_io(Box::new(tcp));
        let greeting = c.reply().await.to_string();
        (c, greeting)
    };
    let (_first, g) = open("203.0.113.10:1").await;
    assert!(g.starts_with("220"), "{g}");
    // Another client through the same balancer: its own count.
    let (_second, g) = open("203.0.113.11:1").await;
    assert!(g.starts_with("220"), "{g}");
    // The first client again: its one session is open.
    let (_third, g) = open("203.0.113.10:2").await;
    assert!(g.starts_with("421 4.7.0"), "{g}");
    b.relay.shutdown().await;
    b.sink.shutdown().await;
}

#[tokio::test]
async fn anything_but_a_trusted_balancer_with_a_header_is_refused() {
    // The balancer is elsewhere: this loopback peer is no balancer and hears why.
    let b = behind("untrusted", "10.0.0.5/32", |c| {
        c.metrics = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let addr = b.relay.addr();
    let tcp = through_balancer(addr, &encode_v2(&proxied("203.0.113.7:1", addr))).await;
    let mut c = Client::from_io(Box::new(tcp));
    assert_eq!(
        c.reply().await.to_string(),
        "554 5.7.1 relay.test connections are accepted through the load balancer only"
    );
    assert!(c.closed().await);
    b.relay.shutdown().await;
    b.sink.shutdown().await;

    let b = behind("no-header", "127.0.0.0/8", |c| {
        c.metrics = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let addr = b.relay.addr();
    // A client that speaks first without a header, a broken header, and one that never ends
    // (closed at the 2 s limit): each connection closed without a greeting.
    for first in [
        b"EHLO direct.example\r\n".as_slice(),
        b"PROXY TCP4 203.0.113.7 10.0.0.1 99999 25\r\n",
        b"PROXY TCP4 203.0.113.7",
    ] {
        let tcp = through_balancer(addr, first).await;
        let mut c = Client::from_io(Box::new(tcp));
        assert!(
            c.try_reply().await.is_none(),
            "{:?}",
            String::from_utf8_lossy(first)
        );
    }
    let metrics = fake_upstream::testing::python(
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
        vec![format!(
            "http://{}/metrics",
            b.relay.metrics_addr().unwrap()
        )],
    )
    .await;
    assert!(
        metrics.contains("limit=\"proxy_protocol_header\"} 3"),
        "{metrics}"
    );
    assert_eq!(b.sink.received_count(), 0);
    b.relay.shutdown().await;
    b.sink.shutdown().await;
}
