//! A refused certificate or a failed handshake with an upstream, told as a sentence with
//! the fix that fits it.

use super::*;

/// Where the relay took its trust from, for the sentences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustSource {
    /// The Mozilla roots bundled with the relay.
    PublicRoots,
    /// The certificates of a `ca` file (its path, as written).
    CaFile(String),
    /// The pinned fingerprints.
    Pins,
    /// Nothing is checked (encrypt, may).
    Unchecked,
}

/// A refused certificate: what was wrong, and the certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub problem: CertProblem,
    pub cert: Option<Box<CertSummary>>,
    pub trust: TrustSource,
}

impl Rejection {
    /// The short form, for the relay's client: `certificate not trusted: self-signed
    /// certificate (CA:TRUE) for localhost`.
    pub fn short(&self) -> String {
        let what = self.cert.as_ref().map(|c| c.short());
        let what = what.as_deref().unwrap_or("the certificate");
        match &self.problem {
            CertProblem::UnknownIssuer | CertProblem::CaAsServerCert => {
                format!("certificate not trusted: {what}")
            }
            CertProblem::OtherIssuerSameName => {
                format!("certificate not trusted: {what}, signed by another CA of the same name")
            }
            CertProblem::WrongName { expected } => {
                format!("certificate name mismatch: {what}, not {expected}")
            }
            CertProblem::Expired => format!(
                "certificate expired on {}",
                self.cert
                    .as_ref()
                    .map(|c| day(c.not_after))
                    .unwrap_or_default()
            ),
            CertProblem::NotYetValid => format!(
                "certificate not valid before {}",
                self.cert
                    .as_ref()
                    .map(|c| day(c.not_before))
                    .unwrap_or_default()
            ),
            CertProblem::NotPinned { .. } => {
                format!("certificate does not match the pinned fingerprint: {what}")
            }
            CertProblem::Other(e) => format!("certificate refused: {e}"),
        }
    }

    /// What was wrong, in full.
    pub fn sentence(&self) -> String {
        let cert = self
            .cert
            .as_ref()
            .map(|c| format!("the server's {}", c.describe()))
            .unwrap_or_else(|| "the server's certificate (unreadable)".into());
        let trusted = match &self.trust {
            TrustSource::PublicRoots => "the bundled public CAs".to_string(),
            TrustSource::CaFile(f) => format!("the CA in {f}"),
            TrustSource::Pins => "the pinned fingerprints".into(),
            TrustSource::Unchecked => "nothing".into(),
        };
        let why = match &self.problem {
            CertProblem::UnknownIssuer => format!("it is not signed by {trusted}"),
            CertProblem::OtherIssuerSameName => format!(
                "{trusted} has the name of its issuer but did not sign it (a CA made again under the same name, or a forgery)"
            ),
            CertProblem::CaAsServerCert => format!(
                "it is a CA certificate (CA:TRUE, as `openssl req -x509` makes by default) presented as the server's own, which is trusted only when written in ca, and it is not signed by {trusted}"
            ),
            CertProblem::WrongName { expected } => {
                format!("it is not valid for {expected}, the name the relay connected to")
            }
            CertProblem::Expired => "it has expired".into(),
            CertProblem::NotYetValid => "it is not valid yet".into(),
            CertProblem::NotPinned { pins } => format!(
                "neither its fingerprint ({}) nor its key's ({}) is among the pinned {}",
                self.cert
                    .as_ref()
                    .map(|c| c.sha256.to_string())
                    .unwrap_or_default(),
                self.cert
                    .as_ref()
                    .map(|c| c.sha256_key.to_string())
                    .unwrap_or_default(),
                pins.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            CertProblem::Other(e) => e.clone(),
        };
        format!("{cert}: {why}")
    }

    /// The config lines that would make the relay accept this server (after its owner has
    /// checked the certificate is the server's), for the section named `at`.
    pub fn fix(&self, at: &str) -> String {
        let at = if at.is_empty() { "the route" } else { at };
        let Some(c) = &self.cert else {
            return "check the server's certificate with smtp-relay check-tls".to_string();
        };
        let pin = format!(
            "tls_policy = \"fingerprint\" and fingerprints = [\"{}\"] (or its key, \"{}\", which survives a renewal with the same key)",
            c.sha256, c.sha256_key
        );
        match &self.problem {
            CertProblem::UnknownIssuer | CertProblem::CaAsServerCert if c.self_signed => format!(
                "if this is your server's certificate, write in {at}: ca = \"<a file with this certificate>\" (it is then trusted as given), or {pin}"
            ),
            CertProblem::UnknownIssuer
            | CertProblem::CaAsServerCert
            | CertProblem::OtherIssuerSameName => format!(
                "if {} is your organisation's CA, write in {at}: ca = \"<its certificate, PEM>\"; or pin this server: {pin}",
                c.issuer
            ),
            CertProblem::WrongName { .. } => format!(
                "if this is the right server, write in {at}: server_name = \"{}\" (a name the certificate carries)",
                c.names
                    .first()
                    .map(|n| n.trim_end_matches(" (CN only)"))
                    .unwrap_or_default()
            ),
            CertProblem::Expired | CertProblem::NotYetValid => format!(
                "renew the certificate on the server (or check its clock); until then, write in {at}: {pin} (a pin ignores dates)"
            ),
            CertProblem::NotPinned { .. } => format!(
                "if the server's certificate was changed on purpose (check with smtp-relay check-tls from a trusted network), write in {at}: fingerprints = [\"{}\"]",
                c.sha256
            ),
            CertProblem::Other(_) => {
                "check the server's certificate with smtp-relay check-tls".to_string()
            }
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sentence())
    }
}

impl std::error::Error for Rejection {}

/// Why a TLS handshake with an upstream failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The relay refused the server's certificate.
    Certificate(Box<Rejection>),
    /// The server did not answer in TLS (a plaintext greeting on a port taken for implicit TLS).
    NotTls,
    /// STARTTLS is required and the upstream does not offer it.
    NotOffered,
    /// No protocol version or cipher suite in common.
    Incompatible(String),
    /// The server refused the handshake with an alert.
    AlertFromServer(String),
    /// The relay could not name the server for TLS.
    BadName(String),
    Other(String),
}

impl TlsFailure {
    /// Sorts the error of a failed handshake (tokio-rustls wraps rustls' errors in io errors).
    pub fn from_io(e: &std::io::Error) -> TlsFailure {
        let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return TlsFailure::Other(e.to_string());
        };
        TlsFailure::from_rustls(inner)
    }

    pub fn from_rustls(e: &rustls::Error) -> TlsFailure {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
                let err: &(dyn std::error::Error + Send + Sync) = &*o.0;
                match err.downcast_ref::<Rejection>() {
                    Some(r) => TlsFailure::Certificate(Box::new(r.clone())),
                    None => TlsFailure::Other(e.to_string()),
                }
            }
            rustls::Error::InvalidMessage(_) => TlsFailure::NotTls,
            rustls::Error::PeerIncompatible(p) => TlsFailure::Incompatible(format!("{p:?}")),
            rustls::Error::AlertReceived(a) => TlsFailure::AlertFromServer(format!("{a:?}")),
            other => TlsFailure::Other(other.to_string()),
        }
    }

    /// The short form, for the client's reply.
    pub fn short(&self) -> String {
        match self {
            TlsFailure::Certificate(r) => r.short(),
            TlsFailure::NotTls => "the server did not answer in TLS".into(),
            TlsFailure::NotOffered => {
                "STARTTLS is required and the upstream does not offer it".into()
            }
            TlsFailure::Incompatible(_) => "no TLS version or cipher in common".into(),
            TlsFailure::AlertFromServer(a) => format!("the server refused the handshake ({a})"),
            TlsFailure::BadName(n) => format!("cannot use {n:?} as a TLS server name"),
            TlsFailure::Other(e) => format!("TLS failed: {e}"),
        }
    }

    /// The whole story with the fix, for the log (`at` names the config section).
    pub fn sentence(&self, at: &str) -> String {
        let at_or = if at.is_empty() { "the route" } else { at };
        match self {
            TlsFailure::Certificate(r) => format!("{}. Fix: {}", r.sentence(), r.fix(at)),
            TlsFailure::NotTls => format!(
                "the server answered in plaintext, not TLS: it expects STARTTLS (write tls = \"starttls\" in {at_or}) or this is not its TLS port (465 is implicit TLS)"
            ),
            TlsFailure::NotOffered => format!(
                "STARTTLS is required (tls = \"starttls\") and the upstream does not offer it: the path may strip it (an attack) or the server has no TLS; if plaintext is acceptable for this route write tls_policy = \"may\" in {at_or} (never with credentials)"
            ),
            TlsFailure::Incompatible(d) => format!(
                "the server and the relay have no TLS version or cipher suite in common ({d}); the relay speaks TLS 1.2 and 1.3 only"
            ),
            TlsFailure::AlertFromServer(a) => format!(
                "the server refused the handshake with the alert {a} (it may want a client certificate or an older TLS version)"
            ),
            TlsFailure::BadName(n) => format!(
                "{n:?} is not a DNS name or an IP address: write server_name = \"the name in its certificate\" in {at_or}"
            ),
            TlsFailure::Other(e) => format!("TLS failed: {e}"),
        }
    }
}
