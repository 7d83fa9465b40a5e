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

mod cert;
mod rejection;
mod verifier;
pub use cert::*;
pub use rejection::*;
pub use verifier::*;

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
