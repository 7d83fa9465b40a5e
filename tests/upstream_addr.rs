//! Every address a name resolves to, over real loopback sockets: a refused address is passed
//! over and remembered, an address that never answers does not hold up the next one (the
//! RFC 8305 stagger), and when all fail the error names each address, IPv6 in brackets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smtp_relay::upstream_addr::{ConnectError, FailedAddresses, Failure, connect_any, order};

/// An address where nothing listens (bound, then closed).
fn refused(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap()
}

/// A listener whose accept queue is full, so that a further connect gets no answer at all
/// (its SYN is dropped), as from a host that is down. Keep the returned sockets alive.
fn black_hole() -> (
    SocketAddr,
    Vec<std::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
                return (addr, held, listener);
            }
        }
    }
    panic!("the accept queue of a backlog-0 listener never filled");
}

#[tokio::test]
async fn a_refused_address_is_passed_over_and_tried_last_afterwards() {
    let live = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let dead = refused("127.0.0.1");
    let failed = FailedAddresses::default();
    let c = connect_any(vec![dead, live_addr], Duration::from_secs(5), &failed)
        .await
        .unwrap();
    assert_eq!(c.addr, live_addr);
    assert_eq!(c.failed.len(), 1);
    assert_eq!(c.failed[0].addr, dead);
    assert!(matches!(c.failed[0].failure, Failure::Io(_)));
    assert!(failed.failed_recently(dead, Instant::now()));
    assert!(!failed.failed_recently(live_addr, Instant::now()));
    // Next time the live address goes first.
    assert_eq!(
        order(vec![dead, live_addr], &failed, Instant::now()),
        vec![live_addr, dead]
    );
}

#[tokio::test]
async fn an_address_that_never_answers_does_not_hold_up_the_next() {
    let (hole, _held, _listener) = black_hole();
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let timeout = Duration::from_secs(20);
    let started = Instant::now();
    let c = connect_any(vec![hole, live_addr], timeout, &FailedAddresses::default())
        .await
        .unwrap();
    assert_eq!(c.addr, live_addr);
    // The first attempt was still waiting when the second won: nothing failed yet.
    assert!(c.failed.is_empty());
    assert!(started.elapsed() < timeout / 2, "{:?}", started.elapsed());
}

#[tokio::test]
async fn when_every_address_fails_each_is_named_with_its_reason() {
    let (hole, _held, _listener) = black_hole();
    let v6 = refused("::1");
    let failed = FailedAddresses::default();
    let e = connect_any(vec![v6, hole], Duration::from_millis(300), &failed)
        .await
        .err()
        .unwrap();
    let ConnectError::AllFailed(attempts) = &e else {
        panic!("{e}")
    };
    assert_eq!(attempts.len(), 2);
    let text = e.to_string();
    assert!(
        text.starts_with("cannot connect to any of its 2 addresses: "),
        "{text}"
    );
    assert!(text.contains(&format!("[::1]:{}: ", v6.port())), "{text}");
    assert!(
        text.contains(&format!("{hole}: no answer after 300ms")),
        "{text}"
    );
    assert!(failed.failed_recently(v6, Instant::now()));
    assert!(failed.failed_recently(hole, Instant::now()));
}
