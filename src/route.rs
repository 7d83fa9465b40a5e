//! The routes table: which upstream gets which recipient. A recipient whose domain matches a
//! route goes to that route's upstream; every other recipient (and address literals,
//! `<postmaster>`) goes to the default route, `RelayConfig::upstream`.
//!
//! Patterns: `qq.com` matches that domain only; `.qq.com` (or `*.qq.com`) matches its
//! subdomains (`vip.qq.com`), not `qq.com` itself. Case does not matter, nor a trailing dot.
//! An exact pattern wins over a subdomain pattern; among subdomain patterns the longest wins;
//! among equals the first route in the table.

use smtp_wire::{Domain, ForwardPath};

use crate::upstream::UpstreamConfig;

/// One route of the table.
#[derive(Clone, Debug)]
pub struct Route {
    /// A short name for transcripts and logs, e.g. `qq`.
    pub label: String,
    /// The domain patterns this route serves (see the module documentation).
    pub domains: Vec<String>,
    pub upstream: UpstreamConfig,
    /// In pass-through AUTH mode: replay the client's credentials to this upstream as well
    /// (only for an upstream that knows the same accounts). Otherwise the route uses its own
    /// `upstream.credentials`, or none.
    pub passthrough: bool,
    /// Store and forward: this route's recipients are queued durably and delivered later
    /// (see [`crate::queue`]) instead of relayed live.
    pub queue: bool,
    /// Live mode: upstream sessions open to this route at once, busy or kept idle (see
    /// [`crate::upstream::SessionCap`]); `None`: no cap.
    pub max_sessions: Option<usize>,
}

/// One route of a relay: the default route (`RelayConfig::upstream`) or one of the table's.
/// Kept typed from the recipient's lookup to the leg, the transcript and the spool record, so
/// that no index is ever off by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(usize);

impl RouteId {
    /// The default route: recipients no table route matches.
    pub const DEFAULT: RouteId = RouteId(0);

    /// The route at `i` in the table.
    pub fn table(i: usize) -> RouteId {
        RouteId(i + 1)
    }

    /// Its place in the table, or `None` for the default route.
    pub fn table_index(self) -> Option<usize> {
        self.0.checked_sub(1)
    }

    /// Every route of a table of `routes` routes, the default first.
    pub fn all(routes: usize) -> impl Iterator<Item = RouteId> {
        (0..=routes).map(RouteId)
    }

    /// A dense index from 0 (the default) for per-route arrays of `routes + 1` slots.
    pub fn slot(self) -> usize {
        self.0
    }

    pub fn is_default(self) -> bool {
        self == RouteId::DEFAULT
    }
}

/// The route that serves `to`: the table's best match for its domain, or the default route
/// (address literals, `<postmaster>`, no match).
pub fn route_for(routes: &[Route], to: &ForwardPath) -> RouteId {
    let Some(mailbox) = to.mailbox() else {
        return RouteId::DEFAULT;
    };
    let Domain::Name(name) = mailbox.domain() else {
        return RouteId::DEFAULT;
    };
    match_domain(routes, name).map_or(RouteId::DEFAULT, RouteId::table)
}

/// The index in `routes` of the route for the domain `name`, if any.
pub fn match_domain(routes: &[Route], name: &str) -> Option<usize> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let mut best: Option<(usize, usize)> = None; // (route, score)
    for (i, route) in routes.iter().enumerate() {
        for pattern in &route.domains {
            let Some(score) = score(pattern, &name) else {
                continue;
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((i, score));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// How well `pattern` matches the lower-case `name`: `usize::MAX` for an exact match, the
/// suffix length for a subdomain match, `None` for no match.
fn score(pattern: &str, name: &str) -> Option<usize> {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let suffix = p.strip_prefix('*').unwrap_or(&p);
    if suffix.starts_with('.') {
        (name.len() > suffix.len() && name.ends_with(suffix)).then_some(suffix.len())
    } else {
        (name == p).then_some(usize::MAX)
    }
}

/// Checks a pattern as a config file gives it: a domain name, optionally with a leading `.`
/// or `*.`. The error says what is wrong.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let bare = pattern
        .strip_prefix("*.")
        .or_else(|| pattern.strip_prefix('.'))
        .unwrap_or(pattern);
    match Domain::parse(bare.trim_end_matches('.')) {
        Ok(Domain::Name(_)) => Ok(()),
        Ok(_) => Err(format!(
            "{pattern:?}: address literals are not routed (they go to the default route)"
        )),
        Err(e) => Err(format!(
            "{pattern:?} is not a domain pattern (example.com, .example.com or *.example.com): {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Timeouts, TlsMode};

    fn route(label: &str, domains: &[&str]) -> Route {
        Route {
            label: label.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            max_sessions: None,
            upstream: UpstreamConfig {
                name: label.into(),
                addr: "127.0.0.1:25".into(),
                server_name: "localhost".into(),
                tls: TlsMode::None,
                tls_policy: crate::upstream_tls::TlsPolicy::None,
                tls_config: None,
                config_at: String::new(),
                helo_name: "relay.test".into(),
                credentials: None,
                timeouts: Timeouts::default(),
                transcript: true,
                bdat: None,
            },
            passthrough: false,
            queue: false,
        }
    }

    fn to(addr: &str) -> ForwardPath {
        addr.parse().unwrap_or_else(|e| panic!("{addr}: {e:?}"))
    }

    #[test]
    fn table() {
        let routes = [
            route("qq", &["qq.com", "foxmail.com"]),
            route("qq-sub", &[".qq.com"]),
            route("deep", &["*.mail.qq.com"]),
            route("bupt", &["BUPT.edu.cn."]),
        ];
        for (addr, want) in [
            ("friend@qq.com", 1),
            ("friend@QQ.COM", 1),
            ("x@foxmail.com", 1),
            ("x@vip.qq.com", 2),
            ("x@a.mail.qq.com", 3),
            ("x@mail.qq.com", 2),
            ("x@bupt.edu.cn", 4),
            ("x@cs.bupt.edu.cn", 0),
            ("x@163.com", 0),
            ("x@notqq.com", 0),
            ("x@[127.0.0.1]", 0),
            ("postmaster", 0),
        ] {
            assert_eq!(route_for(&routes, &to(addr)).slot(), want, "{addr}");
        }
    }

    #[test]
    fn first_of_equals_wins() {
        let routes = [route("a", &["x.org"]), route("b", &["x.org"])];
        assert_eq!(match_domain(&routes, "x.org"), Some(0));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern("qq.com").is_ok());
        assert!(check_pattern(".qq.com").is_ok());
        assert!(check_pattern("*.qq.com").is_ok());
        assert!(
            check_pattern("qq com")
                .unwrap_err()
                .contains("not a domain pattern")
        );
        assert!(
            check_pattern("[127.0.0.1]")
                .unwrap_err()
                .contains("literals")
        );
        assert!(check_pattern("").is_err());
    }
}
