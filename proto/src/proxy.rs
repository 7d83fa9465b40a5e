//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and 2) that a load
//! balancer sends before the client's bytes, so that a server behind it learns the client's
//! address. Bytes in, a header out: [`parse`] says how many bytes the header took, or that it
//! needs more, or why the bytes are not one. Nothing else is read: what follows the header
//! (an implicit-TLS client's hello) belongs to the session.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A version 1 header is at most this long, CRLF included.
pub const V1_MAX: usize = 107;

/// The longest version 2 header accepted (16 bytes, the addresses, and TLVs up to this):
/// HAProxy's own TLVs (ALPN, authority, unique id, SSL) fit well within it.
pub const V2_MAX: usize = 16 + 2048;

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A client connection relayed: its source and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer's own connection (v2 `LOCAL`: a health check) or a client whose address
    /// it does not know (v1 `UNKNOWN`, v2 unspecified family or a UNIX socket): the
    /// connection's own addresses stand.
    Local,
}

/// How far [`parse`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes so far are the start of a header: read more (up to [`V2_MAX`] in all).
    NeedMore,
    /// A whole header, the first `len` bytes; what follows is the session's.
    Header { header: ProxyHeader, len: usize },
}

/// Why the bytes are not a PROXY header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyError {
    /// Neither signature: the peer speaks something else (a client connecting directly).
    NotProxy,
    /// A version 1 header that breaks its grammar (what is wrong, in words).
    V1(String),
    /// A version 2 header that breaks its format.
    V2(String),
    /// Longer than the limit for its version.
    TooLong(usize),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NotProxy => f.write_str("no PROXY protocol header (v1 or v2)"),
            ProxyError::V1(why) => write!(f, "bad PROXY v1 header: {why}"),
            ProxyError::V2(why) => write!(f, "bad PROXY v2 header: {why}"),
            ProxyError::TooLong(max) => write!(f, "PROXY header longer than {max} bytes"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Parses the header at the start of `input`.
pub fn parse(input: &[u8]) -> Result<Parsed, ProxyError> {
    if input.is_empty() {
        return Ok(Parsed::NeedMore);
    }
    let common = input.len().min(V2_SIGNATURE.len());
    if input[..common] == V2_SIGNATURE[..common] {
        if input.len() < V2_SIGNATURE.len() {
            return Ok(Parsed::NeedMore);
        }
        return parse_v2(input);
    }
    let common = input.len().min(6);
    if input[..common] == b"PROXY "[..common] {
        return parse_v1(input);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(input: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(end) = input.windows(2).position(|w| w == b"\r\n") else {
        if input.len() >= V1_MAX {
            return Err(ProxyError::TooLong(V1_MAX));
        }
        if input.contains(&b'\n') {
            return Err(ProxyError::V1("a bare LF ends the line".into()));
        }
        return Ok(Parsed::NeedMore);
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(ProxyError::TooLong(V1_MAX));
    }
    let line =
        std::str::from_utf8(&input[..end]).map_err(|_| ProxyError::V1("not ASCII".into()))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader::Local,
        ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v6 = *family == "TCP6";
            let source = SocketAddr::new(v1_ip(src, v6)?, v1_port(sport)?);
            let destination = SocketAddr::new(v1_ip(dst, v6)?, v1_port(dport)?);
            ProxyHeader::Proxied {
                source,
                destination,
            }
        }
        ["PROXY", "TCP4" | "TCP6", ..] => {
            return Err(ProxyError::V1(
                "expected 'PROXY TCP4|TCP6 <source> <destination> <source port> <destination port>'"
                    .into(),
            ));
        }
        ["PROXY", other, ..] => {
            return Err(ProxyError::V1(format!(
                "unknown protocol {other:?} (TCP4, TCP6 or UNKNOWN)"
            )));
        }
        _ => return Err(ProxyError::V1("nothing after PROXY".into())),
    };
    Ok(Parsed::Header { header, len })
}

fn v1_ip(text: &str, v6: bool) -> Result<IpAddr, ProxyError> {
    let ip = if v6 {
        text.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| {
        let family = if v6 { "IPv6" } else { "IPv4" };
        ProxyError::V1(format!("{text:?} is not an {family} address"))
    })
}

fn v1_port(text: &str) -> Result<u16, ProxyError> {
    // The grammar: 0 to 65535, no sign, no leading zero.
    let ok = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && !(text.len() > 1 && text.starts_with('0'));
    ok.then(|| text.parse::<u16>().ok())
        .flatten()
        .ok_or_else(|| ProxyError::V1(format!("{text:?} is not a port")))
}

fn parse_v2(input: &[u8]) -> Result<Parsed, ProxyError> {
    if input.len() < 16 {
        return Ok(Parsed::NeedMore);
    }
    let version = input[12] >> 4;
    let command = input[12] & 0x0f;
    if version != 2 {
        return Err(ProxyError::V2(format!("version {version}, expected 2")));
    }
    let block = u16::from_be_bytes([input[14], input[15]]) as usize;
    let len = 16 + block;
    if len > V2_MAX {
        return Err(ProxyError::TooLong(V2_MAX));
    }
    if input.len() < len {
        return Ok(Parsed::NeedMore);
    }
    let addresses = &input[16..len];
    let header = match command {
        0 => ProxyHeader::Local,
        1 => v2_addresses(input[13], addresses)?,
        other => {
            return Err(ProxyError::V2(format!(
                "command {other}, expected LOCAL or PROXY"
            )));
        }
    };
    Ok(Parsed::Header { header, len })
}

/// The addresses of a v2 `PROXY` header; TLVs after them are skipped.
fn v2_addresses(family: u8, block: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let short = |need: usize| {
        ProxyError::V2(format!(
            "address block of {} bytes, its family needs {need}",
            block.len()
        ))
    };
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    match family {
        // TCP over IPv4.
        0x11 => {
            if block.len() < 12 {
                return Err(short(12));
            }
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[at],
                    block[at + 1],
                    block[at + 2],
                    block[at + 3],
                ))
            };
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // TCP over IPv6.
        0x21 => {
            if block.len() < 36 {
                return Err(short(36));
            }
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // Unspecified, or a UNIX socket: no address to take.
        0x00 | 0x31 | 0x32 => Ok(ProxyHeader::Local),
        other => Err(ProxyError::V2(format!(
            "family/transport 0x{other:02x} (TCP over IPv4 or IPv6 expected)"
        ))),
    }
}

/// A version 2 header for `header` (what a balancer sends; for tests and the load generator).
pub fn encode_v2(header: &ProxyHeader) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    match header {
        ProxyHeader::Local => {
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        }
        ProxyHeader::Proxied {
            source,
            destination,
        } => {
            let mut block = Vec::new();
            let family = match (source.ip(), destination.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    block.extend_from_slice(&s.octets());
                    block.extend_from_slice(&d.octets());
                    0x11
                }
                (s, d) => {
                    block.extend_from_slice(&v6(s).octets());
                    block.extend_from_slice(&v6(d).octets());
                    0x21
                }
            };
            block.extend_from_slice(&source.port().to_be_bytes());
            block.extend_from_slice(&destination.port().to_be_bytes());
            out.extend_from_slice(&[0x21, family]);
            out.extend_from_slice(&(block.len() as u16).to_be_bytes());
            out.extend_from_slice(&block);
        }
    }
    out
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A version 1 header for `header`.
pub fn encode_v1(header: &ProxyHeader) -> String {
    match header {
        ProxyHeader::Local => "PROXY UNKNOWN\r\n".into(),
        ProxyHeader::Proxied {
            source,
            destination,
        } => {
            let family = if source.is_ipv4() && destination.is_ipv4() {
                "TCP4"
            } else {
                "TCP6"
            };
            let ip = |a: &SocketAddr| match (family, a.ip()) {
                ("TCP6", ip) => v6(ip).to_string(),
                (_, ip) => ip.to_string(),
            };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                ip(source),
                ip(destination),
                source.port(),
                destination.port()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxied(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader::Proxied {
            source: addr(src),
            destination: addr(dst),
        }
    }

    #[test]
    fn v1_headers_from_the_specification() {
        let cases: &[(&[u8], Result<Parsed, ProxyError>)] = &[
            (
                b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nEHLO",
                Ok(Parsed::Header {
                    header: proxied("192.168.0.1:56324", "192.168.0.11:443"),
                    len: 47,
                }),
            ),
            (
                b"PROXY TCP6 ::1 2001:db8::1 65535 25\r\n",
                Ok(Parsed::Header {
                    header: proxied("[::1]:65535", "[2001:db8::1]:25"),
                    len: 37,
                }),
            ),
            (
                b"PROXY UNKNOWN\r\n",
                Ok(Parsed::Header {
                    header: ProxyHeader::Local,
                    len: 15,
                }),
            ),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
                Ok(Parsed::Header {
                    header: ProxyHeader::Local,
                    len: 59,
                }),
            ),
            (b"PROXY TCP4 192.168.0.1", Ok(Parsed::NeedMore)),
            (b"PRO", Ok(Parsed::NeedMore)),
            (b"", Ok(Parsed::NeedMore)),
            (b"EHLO client\r\n", Err(ProxyError::NotProxy)),
            (b"\x16\x03\x01\x02\x00", Err(ProxyError::NotProxy)),
        ];
        for (input, want) in cases {
            assert_eq!(&parse(input), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn v1_mistakes_are_named() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                "expected 'PROXY TCP4|TCP6",
            ),
            (
                b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
                "\"::1\" is not an IPv4 address",
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
                "\"1.2.3.4\" is not an IPv6 address",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                "\"65536\" is not a port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
                "\"01\" is not a port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
                "\"-1\" is not a port",
            ),
            (
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
                "unknown protocol \"UDP4\"",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "a bare LF"),
            (b"PROXY \r\n", "unknown protocol \"\""),
        ];
        for (input, want) in cases {
            let e = parse(input).unwrap_err();
            assert!(
                e.to_string().contains(want),
                "{:?}: {e}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyError::TooLong(V1_MAX)));
    }

    #[test]
    fn v2_round_trips_and_reads_only_its_own_bytes() {
        for header in [
            proxied("203.0.113.7:40000", "10.0.0.2:25"),
            proxied("[2001:db8::7]:40000", "[2001:db8::2]:465"),
            ProxyHeader::Local,
        ] {
            let mut bytes = encode_v2(&header);
            let len = bytes.len();
            bytes.extend_from_slice(b"\x16\x03\x01 a TLS client hello");
            assert_eq!(parse(&bytes), Ok(Parsed::Header { header, len }));
            for cut in 0..len {
                assert_eq!(
                    parse(&bytes[..cut]).map_err(|_| cut),
                    Ok(Parsed::NeedMore),
                    "{cut}"
                );
            }
            let v1 = encode_v1(&header);
            assert_eq!(
                parse(v1.as_bytes()),
                Ok(Parsed::Header {
                    header,
                    len: v1.len()
                })
            );
        }
    }

    #[test]
    fn v2_tlvs_are_skipped_and_bad_headers_refused() {
        // HAProxy's send-proxy-v2 with a TLV (PP2_TYPE_AUTHORITY, "relay").
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0, 12 + 8]);
        bytes.extend_from_slice(&[198, 51, 100, 1, 10, 0, 0, 1, 0x9c, 0x40, 0, 25]);
        bytes.extend_from_slice(&[0x02, 0, 5]);
        bytes.extend_from_slice(b"relay");
        assert_eq!(
            parse(&bytes),
            Ok(Parsed::Header {
                header: proxied("198.51.100.1:40000", "10.0.0.1:25"),
                len: bytes.len()
            })
        );
        let with = |b12: u8, b13: u8, block: &[u8]| {
            let mut v = V2_SIGNATURE.to_vec();
            v.extend_from_slice(&[b12, b13]);
            v.extend_from_slice(&(block.len() as u16).to_be_bytes());
            v.extend_from_slice(block);
            parse(&v)
        };
        assert!(
            matches!(with(0x11, 0x11, &[0; 12]), Err(ProxyError::V2(w)) if w.contains("version 1"))
        );
        assert!(
            matches!(with(0x22, 0x11, &[0; 12]), Err(ProxyError::V2(w)) if w.contains("command 2"))
        );
        assert!(
            matches!(with(0x21, 0x11, &[0; 8]), Err(ProxyError::V2(w)) if w.contains("needs 12"))
        );
        assert!(
            matches!(with(0x21, 0x21, &[0; 12]), Err(ProxyError::V2(w)) if w.contains("needs 36"))
        );
        assert!(matches!(with(0x21, 0x12, &[0; 12]), Err(ProxyError::V2(w)) if w.contains("0x12")));
        assert_eq!(
            with(0x21, 0x31, &[0; 216]),
            Ok(Parsed::Header {
                header: ProxyHeader::Local,
                len: 232
            })
        );
        assert_eq!(
            with(0x21, 0x11, &[0; V2_MAX]),
            Err(ProxyError::TooLong(V2_MAX))
        );
    }
}
