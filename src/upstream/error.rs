//! What can go wrong with an upstream, by phase, and what the relay's client hears of it;
//! how an upstream's reply is sorted into a verdict or an error.

use super::*;

/// The part of a session an error happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connect,
    Tls,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    Body,
    EndOfData,
    Rset,
    Quit,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::Tls => "TLS handshake",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::StartTls => "STARTTLS",
            Phase::Auth => "AUTH",
            Phase::Mail => "MAIL",
            Phase::Rcpt => "RCPT",
            Phase::Data => "DATA",
            Phase::Body => "message data",
            Phase::EndOfData => "end of data",
            Phase::Rset => "RSET",
            Phase::Quit => "QUIT",
        })
    }
}

/// What went wrong with an upstream. [`UpstreamError::client_reply`] is what the relay's
/// client hears: always a 4yz, never a 250, naming the upstream and the reason.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpstreamError {
    /// The name did not resolve, or none of its addresses answered.
    Connect {
        upstream: String,
        error: ConnectError,
    },
    /// The TLS handshake failed or the upstream's certificate was refused; `at` is where the
    /// upstream is configured, for the fix the log line suggests.
    Tls {
        upstream: String,
        failure: TlsFailure,
        at: String,
    },
    Timeout {
        upstream: String,
        phase: Phase,
        after: Duration,
    },
    /// The upstream closed the connection.
    Closed { upstream: String, phase: Phase },
    Io {
        upstream: String,
        phase: Phase,
        source: std::io::Error,
    },
    /// The upstream refused the greeting, EHLO or STARTTLS, or said 421 (closing).
    Refused {
        upstream: String,
        phase: Phase,
        reply: Reply,
    },
    /// The upstream refused a command of the relay's own making as malformed or out of
    /// sequence (500, 501 syntax, 503, 504, 555): a relay bug, never the client's fault.
    Bug {
        upstream: String,
        phase: Phase,
        reply: Reply,
    },
    /// The upstream's verdict on the credentials (163: `535 Error: authentication failed`).
    AuthRejected { upstream: String, reply: Reply },
    /// Something that is not SMTP as we know it (bad reply syntax, a missing extension,
    /// bytes after the 220 to STARTTLS).
    Protocol { upstream: String, reason: String },
    /// Every session the cap allows to this upstream stayed busy for `waited` (see
    /// [`super::cap`]); nothing was sent to it.
    Busy {
        upstream: String,
        open: usize,
        waited: Duration,
    },
}

impl UpstreamError {
    pub fn upstream(&self) -> &str {
        match self {
            UpstreamError::Connect { upstream, .. }
            | UpstreamError::Tls { upstream, .. }
            | UpstreamError::Timeout { upstream, .. }
            | UpstreamError::Closed { upstream, .. }
            | UpstreamError::Io { upstream, .. }
            | UpstreamError::Refused { upstream, .. }
            | UpstreamError::Bug { upstream, .. }
            | UpstreamError::AuthRejected { upstream, .. }
            | UpstreamError::Protocol { upstream, .. }
            | UpstreamError::Busy { upstream, .. } => upstream,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::Timeout { .. })
    }

    /// The TLS handshake itself failed (not STARTTLS missing).
    pub fn is_tls_handshake(&self) -> bool {
        matches!(self, UpstreamError::Tls { failure, .. } if *failure != TlsFailure::NotOffered)
            || matches!(
                self,
                UpstreamError::Closed {
                    phase: Phase::Tls,
                    ..
                }
            )
    }

    /// The upstream's own reply, when it gave one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            UpstreamError::Refused { reply, .. }
            | UpstreamError::Bug { reply, .. }
            | UpstreamError::AuthRejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The reply for the relay's client: a transient failure that names the upstream and the
    /// reason (smtp-edge-cases, "Translated").
    pub fn client_reply(&self) -> Reply {
        let up = self.upstream();
        match self {
            UpstreamError::Connect { error, .. } => {
                Reply::new(451, (4, 4, 1), format!("upstream {up}: {error}"))
            }
            // Postfix's codes: 4.7.4 when TLS is required and not offered, 4.7.5 for a
            // failed handshake or a refused certificate (RFC 3463 X.7.4, X.7.5).
            UpstreamError::Tls { failure, .. } => Reply::new(
                451,
                if *failure == TlsFailure::NotOffered {
                    (4, 7, 4)
                } else {
                    (4, 7, 5)
                },
                format!("upstream {up}: TLS: {}", failure.short()),
            ),
            UpstreamError::Timeout { phase, after, .. } => Reply::new(
                451,
                (4, 4, 2),
                format!(
                    "upstream {up}: no reply to {phase} after {}s",
                    after.as_secs()
                ),
            ),
            UpstreamError::Closed { phase, .. } => Reply::new(
                451,
                (4, 4, 2),
                format!("upstream {up}: connection closed during {phase}"),
            ),
            UpstreamError::Io { phase, source, .. } => Reply::new(
                451,
                (4, 4, 2),
                format!("upstream {up}: connection lost during {phase}: {source}"),
            ),
            UpstreamError::Refused { phase, reply, .. } => Reply::new(
                451,
                (4, 4, 5),
                format!("upstream {up}: {phase} refused: {}", said(reply)),
            ),
            UpstreamError::Bug { phase, reply, .. } => Reply::new(
                451,
                (4, 3, 0),
                format!(
                    "upstream {up}: refused the relay's own {phase} command: {} (a relay bug, logged)",
                    said(reply)
                ),
            ),
            UpstreamError::AuthRejected { reply, .. } => Reply::new(
                454,
                (4, 7, 0),
                format!("upstream {up}: authentication refused: {}", said(reply)),
            ),
            UpstreamError::Protocol { reason, .. } => {
                Reply::new(451, (4, 3, 0), format!("upstream {up}: {reason}"))
            }
            // RFC 3463 X.4.5: mail system congestion.
            UpstreamError::Busy { open, waited, .. } => Reply::new(
                451,
                (4, 4, 5),
                format!(
                    "upstream {up}: sessions: {open} of {open} busy (max_sessions) for {}s, try again later",
                    waited.as_secs()
                ),
            ),
        }
    }
}

/// The log's form: the client's reply, and for a TLS failure the whole story with the fix.
impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamError::Tls {
                upstream,
                failure,
                at,
            } => write!(f, "upstream {upstream}: TLS: {}", failure.sentence(at)),
            _ => f.write_str(&self.client_reply().text()),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A reply on one line as it was said, enhanced code included (`554 5.7.1 no thanks`), for
/// texts that quote an upstream.
pub fn said(reply: &Reply) -> String {
    match reply.enhanced {
        Some((a, b, c)) => format!("{} {a}.{b}.{c} {}", reply.code, reply.text()),
        None => format!("{} {}", reply.code, reply.text()),
    }
}

/// Sorts an upstream's reply to MAIL, RCPT, DATA or the end of data: a verdict on the
/// message or a mailbox is passed on (`Ok`); a `421` (the upstream is closing) and a refusal
/// of the relay's own command as malformed or out of sequence (`500`, `503`, `504`, `555`,
/// and a `501` that says it is about syntax: enhanced code `5.5.x` or the word "syntax") are
/// errors (smtp-edge-cases, "Translated"). A policy `501` such as QQ's `501 mail from address
/// must be same as authorization user` is a verdict and passes.
pub fn vet(upstream: &str, phase: Phase, reply: Reply) -> Result<Reply, UpstreamError> {
    let syntax = |r: &Reply| {
        matches!(r.enhanced, Some((_, 5, _))) || r.text().to_ascii_lowercase().contains("syntax")
    };
    match reply.code {
        421 => Err(UpstreamError::Refused {
            upstream: upstream.to_string(),
            phase,
            reply,
        }),
        500 | 503 | 504 | 555 => Err(UpstreamError::Bug {
            upstream: upstream.to_string(),
            phase,
            reply,
        }),
        501 if syntax(&reply) => Err(UpstreamError::Bug {
            upstream: upstream.to_string(),
            phase,
            reply,
        }),
        _ => Ok(reply),
    }
}
