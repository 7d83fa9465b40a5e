//! What a certificate says, for a person: its names, issuer, validity and fingerprint, and
//! what is wrong with it.

use super::*;

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
