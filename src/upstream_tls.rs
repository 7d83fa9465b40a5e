//! How the relay trusts an upstream over TLS: a policy per route in Postfix's terms
//! (`smtp_tls_security_level`: verify, fingerprint, encrypt, may, none), the rustls
//! certificate verifier that applies it, and every failure said as a sentence a person can act
//! on: which certificate (names, issuer, validity, CA flag, fingerprints), what was wrong with
//! it, and the line of config that would fix it.
//!
//! The verifier wraps each refusal in a [`Rejection`] carried through rustls'
//! `CertificateError::Other`, so the handshake's caller gets the certificate's details back
//! ([`TlsFailure::from_io`]) instead of a debug dump.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

/// How strictly one upstream is secured (Postfix's security levels, same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// TLS required; the certificate chains to the bundled public roots or to `ca`, and carries
    /// the upstream's name. A certificate written in `ca` itself (a self-signed server
    /// certificate) is trusted as given, as OpenSSL and Postfix do.
    Verify,
    /// TLS required; the certificate or its public key matches a pinned SHA-256 fingerprint.
    /// Issuer, names and dates are not checked: the pin is the trust (RFC 7671 5.1 for DANE-EE).
    Fingerprint,
    /// TLS required, certificate not checked: protects against a passive listener only.
    Encrypt,
    /// STARTTLS when the upstream offers it, unchecked; plaintext otherwise. For MX-style
    /// routes; never for a route that carries credentials.
    May,
    /// Plaintext.
    None,
}

impl TlsPolicy {
    pub const NAMES: &'static str = "\"verify\", \"fingerprint\", \"encrypt\", \"may\" or \"none\"";

    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::Verify => "verify",
            TlsPolicy::Fingerprint => "fingerprint",
            TlsPolicy::Encrypt => "encrypt",
            TlsPolicy::May => "may",
            TlsPolicy::None => "none",
        }
    }

    /// Whether the upstream's identity is checked (verify, fingerprint).
    pub fn authenticates(self) -> bool {
        matches!(self, TlsPolicy::Verify | TlsPolicy::Fingerprint)
    }
}

impl FromStr for TlsPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "verify" => TlsPolicy::Verify,
            "fingerprint" => TlsPolicy::Fingerprint,
            "encrypt" => TlsPolicy::Encrypt,
            "may" => TlsPolicy::May,
            "none" => TlsPolicy::None,
            other => return Err(format!("{other:?}: expected {}", TlsPolicy::NAMES)),
        })
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A SHA-256 digest of a certificate (DER) or of its public key (SubjectPublicKeyInfo DER),
/// written `sha256:AB:CD:...`. Parsing also takes what `openssl x509 -fingerprint -sha256`
/// prints, bare hex, any case, with or without colons.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let rest = ["sha256:", "sha256 fingerprint=", "sha256="]
            .iter()
            .find_map(|p| lower.strip_prefix(p))
            .unwrap_or(&lower);
        let hex: String = rest.chars().filter(|c| *c != ':').collect();
        let bad = || {
            format!(
                "{s:?}: expected a SHA-256 fingerprint, 64 hex digits (sha256:AB:CD:..., as smtp-relay check-tls prints it)"
            )
        };
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(chunk).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// What a person needs to know about a certificate to decide whether to trust it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    /// `CN=localhost, O=Example`.
    pub subject: String,
    /// The subjectAltName entries (`localhost`, `127.0.0.1`), or the subject's CN when there
    /// are none.
    pub names: Vec<String>,
    pub issuer: String,
    pub self_signed: bool,
    /// basicConstraints CA:TRUE (what `openssl req -x509` makes by default).
    pub ca: bool,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// `RSA 2048 bits`, `EC 256 bits`.
    pub key: String,
    pub sha256: Fingerprint,
    pub sha256_key: Fingerprint,
}

impl CertSummary {
    /// `None` when the bytes are not an X.509 certificate.
    pub fn parse(der: &[u8]) -> Option<CertSummary> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => names.push(d.to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => names.push(
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string(),
                        ),
                        16 => names.push(
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string(),
                        ),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        if names.is_empty() {
            names.extend(
                cert.subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .map(|cn| format!("{cn} (CN only)")),
            );
        }
        let spki = cert.public_key();
        let key = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(k)) => format!("RSA {} bits", k.key_size()),
            Ok(x509_parser::public_key::PublicKey::EC(k)) => format!("EC {} bits", k.key_size()),
            _ => format!("key type {}", spki.algorithm.algorithm),
        };
        Some(CertSummary {
            subject: cert.subject().to_string(),
            names,
            issuer: cert.issuer().to_string(),
            self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
            ca: cert.is_ca(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            key,
            sha256: Fingerprint::of(der),
            sha256_key: Fingerprint::of(spki.raw),
        })
    }

    /// `self-signed certificate (CA:TRUE) for localhost, 127.0.0.1`.
    pub fn short(&self) -> String {
        let what = match (self.self_signed, self.ca) {
            (true, true) => "self-signed certificate (CA:TRUE)",
            (true, false) => "self-signed certificate",
            (false, true) => "CA certificate",
            (false, false) => "certificate",
        };
        format!("{what} for {}", self.names.join(", "))
    }

    /// The certificate in one sentence: names, issuer, validity, CA flag.
    pub fn describe(&self) -> String {
        let issuer = if self.self_signed {
            "issued by itself (self-signed)".to_string()
        } else {
            format!("issued by {}", self.issuer)
        };
        format!(
            "certificate for {} ({}), {issuer}, valid {} to {}, {}",
            self.names.join(", "),
            self.subject,
            day(self.not_before),
            day(self.not_after),
            if self.ca {
                "CA:TRUE (a CA certificate)"
            } else {
                "CA:FALSE"
            }
        )
    }
}

/// `2027-01-01` (UTC).
pub fn day(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("@{t}"))
}

/// Why a certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertProblem {
    /// Not signed by any trusted CA (self-signed, or a private CA not in `ca`).
    UnknownIssuer,
    /// A CA certificate (CA:TRUE) presented as the server's own, and not written in `ca`.
    CaAsServerCert,
    /// A trusted CA has the issuer's name but did not sign it (a CA made again under the same
    /// name, or a forgery).
    OtherIssuerSameName,
    /// The certificate does not carry the name the relay connected to.
    WrongName {
        expected: String,
    },
    Expired,
    NotYetValid,
    /// Neither the certificate's nor its key's fingerprint is pinned.
    NotPinned {
        pins: Vec<Fingerprint>,
    },
    /// Anything else webpki refused (a bad signature, an unsupported algorithm).
    Other(String),
}

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

/// What to trust, as configured.
#[derive(Clone, Debug)]
pub enum Trust {
    /// The bundled Mozilla roots.
    PublicRoots,
    /// The certificates of a PEM file: CAs, and server certificates trusted as given.
    Ca {
        label: String,
        certs: Vec<CertificateDer<'static>>,
    },
    /// SHA-256 pins of certificates or public keys.
    Pins(Vec<Fingerprint>),
    /// Nothing checked.
    Unchecked,
}

impl Trust {
    /// The certificates of a PEM text (`label` names the file in messages).
    pub fn ca_pem(label: &str, pem: &str) -> Result<Trust, String> {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{label}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("{label}: no certificate in it (expected PEM)"));
        }
        Ok(Trust::Ca {
            label: label.to_string(),
            certs,
        })
    }
}

/// Certificates seen by a recording verifier (for `check-tls`).
pub type Seen = Arc<Mutex<Vec<CertificateDer<'static>>>>;

/// The rustls verifier of one upstream: applies its policy, wraps refusals in a [`Rejection`].
#[derive(Debug)]
pub struct PolicyVerifier {
    policy: TlsPolicy,
    source: TrustSource,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Certificates written in `ca`, trusted as given when presented as the server's own.
    given: Vec<CertificateDer<'static>>,
    pins: Vec<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
    seen: Option<Seen>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PolicyVerifier {
    pub fn new(policy: TlsPolicy, trust: Trust) -> Result<PolicyVerifier, String> {
        let provider = provider();
        let mut roots = rustls::RootCertStore::empty();
        let (source, given, pins) = match (&policy, trust) {
            (TlsPolicy::Verify, Trust::PublicRoots) => {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                (TrustSource::PublicRoots, Vec::new(), Vec::new())
            }
            (TlsPolicy::Verify, Trust::Ca { label, certs }) => {
                for c in &certs {
                    roots
                        .add(c.clone())
                        .map_err(|e| format!("{label}: a certificate in it is unusable: {e}"))?;
                }
                (TrustSource::CaFile(label), certs, Vec::new())
            }
            (TlsPolicy::Fingerprint, Trust::Pins(pins)) if !pins.is_empty() => {
                (TrustSource::Pins, Vec::new(), pins)
            }
            (TlsPolicy::Encrypt | TlsPolicy::May, Trust::Unchecked) => {
                (TrustSource::Unchecked, Vec::new(), Vec::new())
            }
            (p, t) => return Err(format!("tls_policy {p} cannot use {t:?}")),
        };
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("certificate verifier: {e}"))?,
            )
        };
        Ok(PolicyVerifier {
            policy,
            source,
            webpki,
            given,
            pins,
            algorithms: provider.signature_verification_algorithms,
            seen: None,
        })
    }

    /// Also records every certificate chain presented (for `check-tls`).
    pub fn recording(mut self, seen: Seen) -> PolicyVerifier {
        self.seen = Some(seen);
        self
    }

    /// The policy's verdict on a chain, without a handshake (`check-tls` asks each policy).
    pub fn judge(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), Rejection> {
        let reject = |problem| Rejection {
            problem,
            cert: CertSummary::parse(end_entity).map(Box::new),
            trust: self.source.clone(),
        };
        match self.policy {
            TlsPolicy::Verify => {
                if self.given.iter().any(|g| g.as_ref() == end_entity.as_ref()) {
                    return self
                        .judge_given(end_entity, server_name, now)
                        .map_err(reject);
                }
                let webpki = self
                    .webpki
                    .as_ref()
                    .ok_or_else(|| reject(CertProblem::UnknownIssuer))?;
                webpki
                    .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                    .map(|_| ())
                    .map_err(|e| {
                        let summary = CertSummary::parse(end_entity);
                        let problem = classify(&e, summary.as_ref(), server_name);
                        Rejection {
                            problem,
                            cert: summary.map(Box::new),
                            trust: self.source.clone(),
                        }
                    })
            }
            TlsPolicy::Fingerprint => {
                let cert = Fingerprint::of(end_entity.as_ref());
                let key = CertSummary::parse(end_entity).map(|c| c.sha256_key);
                if self.pins.contains(&cert) || key.is_some_and(|k| self.pins.contains(&k)) {
                    Ok(())
                } else {
                    Err(reject(CertProblem::NotPinned {
                        pins: self.pins.clone(),
                    }))
                }
            }
            TlsPolicy::Encrypt | TlsPolicy::May | TlsPolicy::None => Ok(()),
        }
    }

    /// A certificate written in `ca` and presented as the server's own: trusted as given, if
    /// it carries the name and is within its dates.
    fn judge_given(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), CertProblem> {
        let summary = CertSummary::parse(end_entity)
            .ok_or_else(|| CertProblem::Other("the certificate cannot be parsed".into()))?;
        if !names_match(end_entity, server_name) {
            return Err(CertProblem::WrongName {
                expected: name_text(server_name),
            });
        }
        let now = now.as_secs() as i64;
        if now > summary.not_after {
            return Err(CertProblem::Expired);
        }
        if now < summary.not_before {
            return Err(CertProblem::NotYetValid);
        }
        Ok(())
    }
}

/// Whether the certificate carries `server_name` (its subjectAltNames, as webpki reads them).
pub fn names_match(end_entity: &CertificateDer<'_>, server_name: &ServerName<'_>) -> bool {
    rustls::server::ParsedCertificate::try_from(end_entity)
        .is_ok_and(|parsed| rustls::client::verify_server_name(&parsed, server_name).is_ok())
}

fn name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// webpki's error, sorted into what a person can act on.
fn classify(
    e: &rustls::Error,
    cert: Option<&CertSummary>,
    server_name: &ServerName<'_>,
) -> CertProblem {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => CertProblem::UnknownIssuer,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                CertProblem::WrongName {
                    expected: name_text(server_name),
                }
            }
            CertificateError::BadSignature => CertProblem::OtherIssuerSameName,
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertProblem::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                CertProblem::NotYetValid
            }
            // webpki's CaUsedAsEndEntity comes as an `Other`.
            CertificateError::Other(o) if cert.is_some_and(|c| c.ca) || is_ca_as_ee(o) => {
                CertProblem::CaAsServerCert
            }
            other => CertProblem::Other(format!("{other:?}")),
        },
        other => CertProblem::Other(other.to_string()),
    }
}

fn is_ca_as_ee(o: &OtherError) -> bool {
    format!("{o:?}").contains("CaUsedAsEndEntity")
}

impl ServerCertVerifier for PolicyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(seen) = &self.seen {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.clear();
            seen.push(end_entity.clone().into_owned());
            seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        }
        self.judge(end_entity, intermediates, server_name, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(|r| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client config that applies `verifier`.
pub fn client_config(verifier: PolicyVerifier) -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}

/// The client config for `policy` with `trust` (config-time errors as text).
pub fn config_for(policy: TlsPolicy, trust: Trust) -> Result<Arc<rustls::ClientConfig>, String> {
    Ok(client_config(PolicyVerifier::new(policy, trust)?))
}

/// `verify` against the bundled public roots.
pub fn public_roots() -> Arc<rustls::ClientConfig> {
    config_for(TlsPolicy::Verify, Trust::PublicRoots).expect("the bundled roots are usable")
}

/// `verify` against the CA(s) in a PEM text.
pub fn verify_ca_pem(label: &str, pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    config_for(TlsPolicy::Verify, Trust::ca_pem(label, pem)?)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_forms_people_paste() {
        let hex = "AB".repeat(32);
        let colons: Vec<String> = (0..32).map(|_| "ab".to_string()).collect();
        let want = Fingerprint([0xAB; 32]);
        for s in [
            format!("sha256:{hex}"),
            hex.clone(),
            colons.join(":"),
            format!("SHA256 Fingerprint={}", colons.join(":").to_uppercase()),
            format!("  sha256:{}  ", colons.join(":")),
        ] {
            assert_eq!(s.parse::<Fingerprint>(), Ok(want), "{s}");
        }
        assert_eq!(want.to_string().parse::<Fingerprint>(), Ok(want));
        assert!(want.to_string().starts_with("sha256:AB:AB:"));
        for bad in [
            "",
            "sha256:",
            &"AB".repeat(31),
            &"AB".repeat(33),
            &"GG".repeat(32),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn policies_parse_and_say_what_they_are() {
        for p in [
            TlsPolicy::Verify,
            TlsPolicy::Fingerprint,
            TlsPolicy::Encrypt,
            TlsPolicy::May,
            TlsPolicy::None,
        ] {
            assert_eq!(p.as_str().parse::<TlsPolicy>(), Ok(p));
        }
        assert!(
            "secure"
                .parse::<TlsPolicy>()
                .unwrap_err()
                .contains("expected")
        );
        assert!(TlsPolicy::Fingerprint.authenticates());
        assert!(!TlsPolicy::Encrypt.authenticates());
    }
}
