//! Who may open a session: the per-IP session slot and trusted networks.

use super::*;
pub(super) use smtp_net::admission::IpSlot;

/// A session counted against its client's address while it lives (the count shared with
/// the fake upstream's: [`smtp_net::admission`]); `None` when the address already has
/// `max_sessions_per_ip` open.
pub(super) fn ip_slot(shared: &Shared, ip: IpAddr) -> Option<IpSlot> {
    let slot = shared.per_ip.enter(ip);
    (slot.count() as usize <= shared.config.max_sessions_per_ip).then_some(slot)
}

/// A session refused for the count (`per_ip`: its address has `max_sessions_per_ip` open;
/// else the relay has `max_sessions`): logged, counted, and told with a 421 (inside TLS on
/// the implicit-TLS listener).
pub(super) async fn refuse(
    shared: &Shared,
    io: Box<dyn Io>,
    peer: SocketAddr,
    kind: Transport,
    per_ip: bool,
) {
    let cfg = &shared.config;
    let (limit, text, max) = if per_ip {
        (
            "max_sessions_per_ip",
            "Too many connections from your address, try again later",
            cfg.max_sessions_per_ip,
        )
    } else {
        (
            "max_sessions",
            "Too many connections, try again later",
            cfg.max_sessions,
        )
    };
    tracing::info!(peer = %peer, limit, max, tls = kind == Transport::Tls, "session refused: too many connections");
    shared.metrics.session_refused(limit);
    let reply = Reply::new(421, (4, 7, 0), format!("{} {text}", cfg.hostname));
    // On the implicit-TLS listener the reason is said inside TLS: a bare close would
    // read as a broken handshake to every client.
    let io: Option<Box<dyn Io>> = match kind {
        Transport::Plain => Some(io),
        Transport::Tls => match &cfg.tls {
            Some(tls) => {
                crate::client_tls::accept(tls.clone(), io, None, cfg.tls_handshake_timeout)
                    .await
                    .ok()
            }
            None => None,
        },
    };
    if let Some(mut io) = io {
        let _ = write(&mut io, &reply.to_bytes()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
    }
}

/// Behind a load balancer ([`ProxyProtocol`]): the connection's PROXY header read, and the
/// client's address taken from it. A peer outside the trusted networks is refused (`554
/// 5.7.1` on the plain listener: it is no balancer, and could claim any address); a missing,
/// broken or late header closes the connection. Each is logged and counted.
pub(super) async fn proxied(
    shared: &Shared,
    pp: &super::ProxyProtocol,
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Transport,
) -> Option<(Box<dyn Io>, SocketAddr)> {
    let trusted = pp
        .trusted
        .iter()
        .any(|(net, len)| in_network(peer.ip(), *net, *len));
    if !trusted {
        tracing::warn!(peer = %peer, "connection refused: not from a trusted load balancer (proxy_protocol.trusted)");
        shared.metrics.session_refused("proxy_protocol_untrusted");
        if kind == Transport::Plain {
            let reply = Reply::new(
                554,
                (5, 7, 1),
                format!(
                    "{} connections are accepted through the load balancer only",
                    shared.config.hostname
                ),
            );
            let mut io: Box<dyn Io> = Box::new(tcp);
            let _ = write(&mut io, &reply.to_bytes()).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
        }
        return None;
    }
    match smtp_net::proxy::read_header(tcp, peer, pp.header_timeout).await {
        Ok((io, client)) => Some((Box::new(io), client)),
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "connection closed: no valid PROXY header from the load balancer");
            shared.metrics.session_refused("proxy_protocol_header");
            None
        }
    }
}

/// The protocol machine's settings for a client at `peer`: AUTH offered and required by the
/// auth mode and the client's network, in clear only from loopback.
pub(super) fn server_config(shared: &Shared, peer: SocketAddr) -> Arc<ServerConfig> {
    let cfg = &shared.config;
    let kind = ConfigKind {
        loopback: peer.ip().is_loopback(),
        trusted: match &cfg.auth {
            AuthMode::Passthrough | AuthMode::Users(_) => false,
            AuthMode::TrustedNetworks(nets) => nets
                .iter()
                .any(|(net, len)| in_network(peer.ip(), *net, *len)),
        },
        // RFC 6531 3.1: SMTPUTF8 comes with 8BITMIME.
        smtputf8: shared.smtputf8() && shared.eight_bit_mime(),
        eight_bit_mime: shared.eight_bit_mime(),
        binarymime: cfg.chunking && shared.binarymime(),
    };
    let mut known = shared
        .server_configs
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    known
        .entry(kind)
        .or_insert_with(|| Arc::new(kind.config(cfg)))
        .clone()
}

/// What a client session's protocol settings depend on besides the configuration: five
/// answers, so at most 32 settings, shared by every session of their kind (an idle
/// session does not carry its own copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ConfigKind {
    /// AUTH in clear only from loopback (a local mail client on the developer's machine).
    loopback: bool,
    /// From a trusted network: no AUTH needed.
    trusted: bool,
    /// Every route's upstream offered it when last seen.
    smtputf8: bool,
    eight_bit_mime: bool,
    /// Every route's upstream offered CHUNKING and BINARYMIME when last seen.
    binarymime: bool,
}

impl ConfigKind {
    fn config(self, cfg: &RelayConfig) -> ServerConfig {
        ServerConfig {
            hostname: cfg.hostname.clone(),
            greeting: "ESMTP smtp-relay".into(),
            max_message_size: cfg.max_message_size,
            max_recipients: cfg.max_recipients,
            max_rcpt_commands: cfg.max_rcpt_commands,
            starttls: cfg.tls.is_some(),
            auth_mechanisms: match cfg.auth {
                AuthMode::Passthrough | AuthMode::Users(_) => {
                    vec![Mechanism::Plain, Mechanism::Login]
                }
                AuthMode::TrustedNetworks(_) => Vec::new(),
            },
            auth_requires_tls: !self.loopback,
            auth_required: !self.trusted,
            smtputf8: self.smtputf8,
            eight_bit_mime: self.eight_bit_mime,
            chunking: cfg.chunking,
            binarymime: self.binarymime,
            ..ServerConfig::default()
        }
    }
}

pub(super) fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}
