//! TLS material: a CA and a leaf certificate signed by it (never a self-issued leaf), generated
//! with rcgen on first start into the data directory and reused after, or loaded from paths;
//! and on request the certificates users meet on their own servers ([`CertKind`]: self-signed
//! with and without CA:TRUE, a wrong name, expired), for the relay's TLS policy tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// The names the leaf certificate is valid for.
pub const LEAF_NAMES: [&str; 5] = [
    "localhost",
    "127.0.0.1",
    "::1",
    "smtp.163.com",
    "smtp.qq.com",
];

/// PEM files of a CA and a server certificate signed by it.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.pem`, `cert.pem`, `key.pem` in `dir`.
    pub fn in_dir(dir: &Path) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    fn all_exist(&self) -> bool {
        self.ca.exists() && self.cert.exists() && self.key.exists()
    }
}

/// Loaded TLS material.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub files: TlsFiles,
    /// The CA certificate, PEM: what clients verify against.
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

/// Uses the files if all three exist, else generates a new CA and leaf into them.
pub fn load_or_generate(files: TlsFiles) -> Result<TlsMaterial, Error> {
    if !files.all_exist() {
        generate(&files)?;
    }
    load(files)
}

/// Loads existing PEM files.
pub fn load(files: TlsFiles) -> Result<TlsMaterial, Error> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::io(p, e));
    let ca_pem = String::from_utf8(read(&files.ca)?)
        .map_err(|_| Error::Tls(format!("{}: not a PEM file", files.ca.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", files.cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate in it",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| Error::Tls(format!("{}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("{}: {e}", files.cert.display())))?;
    Ok(TlsMaterial {
        files,
        ca_pem,
        server_config: Arc::new(server_config),
    })
}

/// The kinds of server certificate users meet, for the relay's TLS policy tests and the
/// scenarios' `upstream-cert:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// A leaf signed by a private CA (`ca.pem`): what the fake uses by default.
    PrivateCa,
    /// One self-signed certificate with CA:TRUE, as `openssl req -x509 -newkey ...` makes it
    /// (`ca.pem` is the certificate itself).
    SelfSignedCa,
    /// One self-signed certificate with CA:FALSE (`ca.pem` is the certificate itself).
    SelfSigned,
    /// Signed by a private CA, for `mail.internal.example` only.
    WrongName,
    /// Signed by a private CA, valid 2019-01-01 to 2020-01-01.
    Expired,
}

impl CertKind {
    pub const NAMES: &'static str = "private-ca, self-signed-ca, self-signed, wrong-name, expired";

    pub fn as_str(self) -> &'static str {
        match self {
            CertKind::PrivateCa => "private-ca",
            CertKind::SelfSignedCa => "self-signed-ca",
            CertKind::SelfSigned => "self-signed",
            CertKind::WrongName => "wrong-name",
            CertKind::Expired => "expired",
        }
    }
}

impl std::str::FromStr for CertKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "private-ca" => CertKind::PrivateCa,
            "self-signed-ca" => CertKind::SelfSignedCa,
            "self-signed" => CertKind::SelfSigned,
            "wrong-name" => CertKind::WrongName,
            "expired" => CertKind::Expired,
            other => return Err(format!("{other:?}: expected one of {}", CertKind::NAMES)),
        })
    }
}

/// The name a `wrong-name` certificate carries.
pub const WRONG_NAME: &str = "mail.internal.example";

fn generate(files: &TlsFiles) -> Result<(), Error> {
    generate_kind(files, CertKind::PrivateCa)
}

fn cert_error(e: rcgen::Error) -> Error {
    Error::Tls(format!("certificate generation: {e}"))
}

fn sans(names: &[&str]) -> Result<Vec<SanType>, Error> {
    names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => (*n).try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(cert_error)
}

/// Writes `ca.pem`, `cert.pem` and `key.pem` of the given kind into `files`.
pub fn generate_kind(files: &TlsFiles, kind: CertKind) -> Result<(), Error> {
    let tls = cert_error;
    let now = chrono::Utc::now().timestamp();
    let (not_before, not_after) = (
        rcgen::date_time_ymd(2024, 1, 1),
        // Ten years from now: long enough for any development setup.
        rcgen::date_time_ymd(1970 + ((now / 31_556_952) as i32) + 10, 1, 1),
    );
    // The kinds a test asks for end on a fixed day, so that messages quoting them do not
    // depend on the year they are made in.
    let fixed_end = rcgen::date_time_ymd(2049, 12, 31);
    let leaf_key = KeyPair::generate().map_err(tls)?;
    let (ca_pem, leaf_pem) = match kind {
        CertKind::SelfSignedCa | CertKind::SelfSigned => {
            // What `openssl req -x509 -subj /CN=localhost -addext subjectAltName=...` makes.
            let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
            p.subject_alt_names = sans(&["localhost", "127.0.0.1", "::1"])?;
            p.distinguished_name.push(DnType::CommonName, "localhost");
            if kind == CertKind::SelfSignedCa {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }
            p.not_before = not_before;
            p.not_after = fixed_end;
            let cert = p.self_signed(&leaf_key).map_err(tls)?;
            (cert.pem(), cert.pem())
        }
        CertKind::PrivateCa | CertKind::WrongName | CertKind::Expired => {
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            ca_params
                .distinguished_name
                .push(DnType::CommonName, "smtp-relay fake-upstream CA");
            ca_params
                .distinguished_name
                .push(DnType::OrganizationName, "smtp-relay");
            ca_params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            ca_params.not_before = rcgen::date_time_ymd(2018, 1, 1);
            ca_params.not_after = not_after;
            let ca_key = KeyPair::generate().map_err(tls)?;
            let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
            let issuer = Issuer::new(ca_params, ca_key);

            let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
            let (names, cn): (&[&str], &str) = if kind == CertKind::WrongName {
                (&[WRONG_NAME], WRONG_NAME)
            } else {
                (&LEAF_NAMES, "fake-upstream")
            };
            leaf.subject_alt_names = sans(names)?;
            leaf.distinguished_name.push(DnType::CommonName, cn);
            leaf.use_authority_key_identifier_extension = true;
            leaf.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            if kind == CertKind::Expired {
                leaf.not_before = rcgen::date_time_ymd(2019, 1, 1);
                leaf.not_after = rcgen::date_time_ymd(2020, 1, 1);
            } else {
                leaf.not_before = not_before;
                leaf.not_after = if kind == CertKind::PrivateCa {
                    not_after
                } else {
                    fixed_end
                };
            }
            let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(tls)?;
            (ca_cert.pem(), leaf_cert.pem())
        }
    };
    if let Some(dir) = files.ca.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write(&files.ca, ca_pem.as_bytes(), false)?;
    write(&files.cert, leaf_pem.as_bytes(), false)?;
    write(&files.key, leaf_key.serialize_pem().as_bytes(), true)?;
    Ok(())
}

fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), Error> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// A rustls client config that trusts only `ca_pem`: for tests and for the relay's `up`.
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| Error::Tls(format!("CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("CA: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
