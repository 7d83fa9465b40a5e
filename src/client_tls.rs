//! TLS from mail clients (implicit TLS and STARTTLS): the handshake with its timeout, and a
//! failed handshake told as a sentence with the hint that fits it, for the log and the
//! transcript. The most likely newcomer problem is a client that does not trust the relay's
//! certificate; it must not look like a session that simply ended.

use std::sync::Arc;
use std::time::Duration;

use rustls::AlertDescription;
use smtp_net::Io;

/// Why a handshake with a client failed, and what the person running the relay can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// What happened (`the client sent the alert unknown CA`).
    pub cause: String,
    /// What usually fixes it.
    pub hint: String,
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.cause, self.hint)
    }
}

/// Completes the server side of a handshake on `io` within `limit` (the relay's
/// `tls_handshake_timeout`). `trust`: the file clients should trust, named in the hint when
/// they do not.
pub async fn accept(
    config: Arc<rustls::ServerConfig>,
    io: impl Io + 'static,
    trust: Option<&std::path::Path>,
    limit: Duration,
) -> Result<Box<dyn Io>, HandshakeFailure> {
    match smtp_net::tls::accept(config, io, limit).await {
        Ok(stream) => Ok(Box::new(stream)),
        Err(smtp_net::tls::AcceptError::Failed(e)) => Err(explain(&e, trust)),
        Err(e @ smtp_net::tls::AcceptError::TimedOut(_)) => Err(HandshakeFailure {
            cause: e.to_string(),
            hint: "the client connected but did not complete the handshake: a plain-text \
                   client waiting for a greeting on the implicit-TLS port, or a stalled one \
                   (tls_handshake_timeout_secs)"
                .into(),
        }),
    }
}

/// The failure of a handshake as `tokio-rustls` reports it, told for a person.
pub fn explain(e: &std::io::Error, trust: Option<&std::path::Path>) -> HandshakeFailure {
    let trust_hint = match trust {
        Some(p) => format!(
            "the client does not trust the relay's certificate: make it trust {} \
             (swaks --tls-ca-path, curl --cacert, or the mail client's certificate store)",
            p.display()
        ),
        None => "the client does not trust the relay's certificate: give it the CA that \
                 signed the relay's certificate, or use a certificate from a public CA"
            .into(),
    };
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return HandshakeFailure {
            cause: "the client closed the connection during the TLS handshake".into(),
            hint: format!("often {trust_hint}"),
        };
    }
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(tls) = tls else {
        return HandshakeFailure {
            cause: format!("TLS handshake failed: {e}"),
            hint: "the connection failed under the handshake (reset by the client or the \
                   network)"
                .into(),
        };
    };
    match tls {
        rustls::Error::AlertReceived(alert) => {
            let hint = match alert {
                AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateExpired
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied => trust_hint,
                AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
                    "the client and the relay share no TLS version or cipher suite (the relay \
                     speaks TLS 1.2 and 1.3): update the client or its TLS settings"
                        .into()
                }
                _ => "see the client's own error for the reason".into(),
            };
            HandshakeFailure {
                cause: format!("the client sent the TLS alert {}", alert_name(*alert)),
                hint,
            }
        }
        rustls::Error::InvalidMessage(_) => HandshakeFailure {
            cause: "the client did not speak TLS".into(),
            hint: "a plain-text SMTP client on the implicit-TLS port: use the plain port with \
                   STARTTLS, or turn on TLS-on-connect (SMTPS) in the client"
                .into(),
        },
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoCertificatesPresented => {
            HandshakeFailure {
                cause: format!("the client's TLS is incompatible: {tls}"),
                hint: "the client and the relay share no TLS version or cipher suite (the relay \
                       speaks TLS 1.2 and 1.3): update the client or its TLS settings"
                    .into(),
            }
        }
        other => HandshakeFailure {
            cause: format!("TLS handshake failed: {other}"),
            hint: "see the client's own error for the reason".into(),
        },
    }
}

/// An alert as people search for it (`unknown CA`, `bad certificate`).
fn alert_name(a: AlertDescription) -> String {
    match a {
        AlertDescription::UnknownCA => "unknown CA".into(),
        AlertDescription::BadCertificate => "bad certificate".into(),
        AlertDescription::CertificateUnknown => "certificate unknown".into(),
        AlertDescription::CertificateExpired => "certificate expired".into(),
        AlertDescription::UnsupportedCertificate => "unsupported certificate".into(),
        AlertDescription::HandshakeFailure => "handshake failure".into(),
        AlertDescription::ProtocolVersion => "protocol version".into(),
        AlertDescription::AccessDenied => "access denied".into(),
        other => format!("{other:?}"),
    }
}
