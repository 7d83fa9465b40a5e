//! Every address an upstream's name resolves to, tried in turn as RFC 5321 5.1 asks: IPv6
//! and IPv4 interleaved and a new attempt started every 250 ms while earlier ones are still
//! pending (RFC 8305 "Happy Eyeballs", sections 4 and 5), each with its own connect timeout.
//! An address that failed is remembered for a while and tried after the others.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::net::TcpStream;

/// RFC 8305 5: the recommended Connection Attempt Delay.
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// How long a failed address is tried after the others.
pub const REMEMBER_FAILURE: Duration = Duration::from_secs(300);

/// At most this many failed addresses are remembered.
const MEMORY_CAP: usize = 1024;

/// `host:port`, with an IPv6 address in brackets (`[::1]:25`).
pub fn host_port(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{bare}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A host as written in a config (`[::1]`, `::1`, `smtp.163.com`) without brackets.
pub fn bare_host(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The host part of `host:port` (brackets of an IPv6 address removed).
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Why one address could not be connected to.
#[derive(Debug)]
pub enum Failure {
    Io(std::io::Error),
    TimedOut(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::TimedOut(after) if after.subsec_millis() == 0 => {
                write!(f, "no answer after {}s", after.as_secs())
            }
            Failure::TimedOut(after) => write!(f, "no answer after {}ms", after.as_millis()),
        }
    }
}

/// One address tried and how it failed.
#[derive(Debug)]
pub struct Attempt {
    pub addr: SocketAddr,
    pub failure: Failure,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.addr, self.failure)
    }
}

/// Why no connection was made.
#[derive(Debug)]
pub enum ConnectError {
    /// The name did not resolve (or to no address).
    Resolve(String),
    /// Every address failed, in the order they were tried.
    AllFailed(Vec<Attempt>),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Resolve(e) => write!(f, "cannot resolve: {e}"),
            ConnectError::AllFailed(a) if a.len() == 1 => {
                write!(f, "cannot connect to {}: {}", a[0].addr, a[0].failure)
            }
            ConnectError::AllFailed(a) => {
                write!(f, "cannot connect to any of its {} addresses: ", a.len())?;
                for (i, at) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{at}")?;
                }
                Ok(())
            }
        }
    }
}

/// Addresses that failed recently, with when.
#[derive(Debug, Default)]
pub struct FailedAddresses {
    map: Mutex<HashMap<SocketAddr, Instant>>,
}

impl FailedAddresses {
    pub fn remember(&self, addr: SocketAddr, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MEMORY_CAP {
            map.retain(|_, at| now.saturating_duration_since(*at) < REMEMBER_FAILURE);
            if map.len() >= MEMORY_CAP {
                map.clear();
            }
        }
        map.insert(addr, now);
    }

    pub fn forget(&self, addr: SocketAddr) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }

    pub fn failed_recently(&self, addr: SocketAddr, now: Instant) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .is_some_and(|at| now.saturating_duration_since(*at) < REMEMBER_FAILURE)
    }
}

/// The process's memory of failed upstream addresses.
pub static FAILED: LazyLock<FailedAddresses> = LazyLock::new(FailedAddresses::default);

/// The order to try `addrs` in: the families interleaved starting with the resolver's first
/// (RFC 8305 4), then any address that failed recently moved behind the others.
pub fn order(addrs: Vec<SocketAddr>, failed: &FailedAddresses, now: Instant) -> Vec<SocketAddr> {
    let mut seen = std::collections::HashSet::new();
    let addrs: Vec<SocketAddr> = addrs.into_iter().filter(|a| seen.insert(*a)).collect();
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_v6 = first.is_ipv6();
    let (mut a, mut b): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|x| x.is_ipv6() == first_v6);
    a.reverse();
    b.reverse();
    let mut interleaved = Vec::with_capacity(addrs.len());
    loop {
        match (a.pop(), b.pop()) {
            (None, None) => break,
            (x, y) => interleaved.extend(x.into_iter().chain(y)),
        }
    }
    let (fresh, stale): (Vec<_>, Vec<_>) = interleaved
        .into_iter()
        .partition(|x| !failed.failed_recently(*x, now));
    fresh.into_iter().chain(stale).collect()
}

/// A connection, with the addresses that failed before it.
pub struct Connected {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    pub failed: Vec<Attempt>,
}

/// Resolves `addr` (`host:port`), bounded by `timeout`.
pub async fn resolve(addr: &str, timeout: Duration) -> Result<Vec<SocketAddr>, ConnectError> {
    match tokio::time::timeout(timeout, tokio::net::lookup_host(addr)).await {
        Ok(Ok(found)) => {
            let found: Vec<SocketAddr> = found.collect();
            if found.is_empty() {
                Err(ConnectError::Resolve(format!("{addr} has no address")))
            } else {
                Ok(found)
            }
        }
        Ok(Err(e)) => Err(ConnectError::Resolve(format!("{addr}: {e}"))),
        Err(_) => Err(ConnectError::Resolve(format!(
            "{addr}: no answer from the resolver after {}s",
            timeout.as_secs()
        ))),
    }
}

/// Resolves `addr` and connects to the first of its addresses that answers.
pub async fn connect(addr: &str, timeout: Duration) -> Result<Connected, ConnectError> {
    let found = resolve(addr, timeout).await?;
    connect_any(order(found, &FAILED, Instant::now()), timeout, &FAILED).await
}

/// Tries `addrs` in order, starting the next one when an attempt fails or after
/// [`ATTEMPT_DELAY`] without an answer; the first connection wins and the others are dropped.
/// Each attempt has its own `timeout`.
pub async fn connect_any(
    addrs: Vec<SocketAddr>,
    timeout: Duration,
    failed: &FailedAddresses,
) -> Result<Connected, ConnectError> {
    let attempt = |addr: SocketAddr| async move {
        let result = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(Failure::Io(e)),
            Err(_) => Err(Failure::TimedOut(timeout)),
        };
        (addr, result)
    };
    let mut pending = FuturesUnordered::new();
    let mut next = addrs.iter().copied();
    let mut failures: Vec<Attempt> = Vec::new();
    let mut left = addrs.len();
    if let Some(a) = next.next() {
        pending.push(attempt(a));
    }
    while left > 0 {
        let more = next.len() > 0;
        tokio::select! {
            Some((addr, result)) = pending.next() => {
                left -= 1;
                match result {
                    Ok(stream) => {
                        failed.forget(addr);
                        return Ok(Connected { stream, addr, failed: failures });
                    }
                    Err(failure) => {
                        failed.remember(addr, Instant::now());
                        failures.push(Attempt { addr, failure });
                        if let Some(a) = next.next() {
                            pending.push(attempt(a));
                        }
                    }
                }
            }
            _ = tokio::time::sleep(ATTEMPT_DELAY), if more => {
                if let Some(a) = next.next() {
                    pending.push(attempt(a));
                }
            }
        }
    }
    Err(ConnectError::AllFailed(failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_in_brackets() {
        assert_eq!(host_port("::1", 25), "[::1]:25");
        assert_eq!(host_port("[::1]", 25), "[::1]:25");
        assert_eq!(host_port("127.0.0.1", 25), "127.0.0.1:25");
        assert_eq!(host_port("smtp.163.com", 465), "smtp.163.com:465");
        assert_eq!(host_of("[::1]:25"), "::1");
        assert_eq!(host_of("smtp.163.com:465"), "smtp.163.com");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(bare_host("[::1]"), "::1");
        assert_eq!(bare_host("::1"), "::1");
    }

    #[test]
    fn families_interleave_starting_with_the_first() {
        let none = FailedAddresses::default();
        let now = Instant::now();
        let got = order(
            vec![
                a("[2001:db8::1]:25"),
                a("[2001:db8::2]:25"),
                a("[2001:db8::3]:25"),
                a("192.0.2.1:25"),
                a("192.0.2.2:25"),
            ],
            &none,
            now,
        );
        assert_eq!(
            got,
            vec![
                a("[2001:db8::1]:25"),
                a("192.0.2.1:25"),
                a("[2001:db8::2]:25"),
                a("192.0.2.2:25"),
                a("[2001:db8::3]:25"),
            ]
        );
        let got = order(
            vec![a("127.0.0.1:25"), a("[::1]:25"), a("127.0.0.1:25")],
            &none,
            now,
        );
        assert_eq!(got, vec![a("127.0.0.1:25"), a("[::1]:25")]);
    }

    #[test]
    fn a_failed_address_goes_last_for_a_while() {
        let failed = FailedAddresses::default();
        let t0 = Instant::now();
        failed.remember(a("127.0.0.1:25"), t0);
        let both = || vec![a("127.0.0.1:25"), a("[::1]:25")];
        assert_eq!(
            order(both(), &failed, t0 + Duration::from_secs(10)),
            vec![a("[::1]:25"), a("127.0.0.1:25")]
        );
        assert_eq!(
            order(both(), &failed, t0 + REMEMBER_FAILURE),
            both(),
            "forgotten after {REMEMBER_FAILURE:?}"
        );
        failed.forget(a("127.0.0.1:25"));
        assert_eq!(order(both(), &failed, t0), both());
    }

    #[test]
    fn the_memory_is_bounded() {
        let failed = FailedAddresses::default();
        let t0 = Instant::now();
        for port in 0..(MEMORY_CAP as u16 + 10) {
            failed.remember(SocketAddr::from(([127, 0, 0, 1], port)), t0);
        }
        assert!(failed.map.lock().unwrap().len() <= MEMORY_CAP);
    }
}
