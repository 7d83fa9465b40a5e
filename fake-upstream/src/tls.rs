//! TLS material: a CA and a leaf certificate signed by it (never a self-issued leaf), generated
//! with rcgen on first start into the data directory and reused after, or loaded from paths.

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

fn generate(files: &TlsFiles) -> Result<(), Error> {
    let tls = |e: rcgen::Error| Error::Tls(format!("certificate generation: {e}"));
    let now = chrono::Utc::now().timestamp();
    let (not_before, not_after) = (
        rcgen::date_time_ymd(2024, 1, 1),
        // Ten years from now: long enough for any development setup.
        rcgen::date_time_ymd(1970 + ((now / 31_556_952) as i32) + 10, 1, 1),
    );

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
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(tls)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(tls)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    leaf.subject_alt_names = LEAF_NAMES
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => (*n).try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(tls)?;
    leaf.distinguished_name
        .push(DnType::CommonName, "fake-upstream");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_key = KeyPair::generate().map_err(tls)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(tls)?;

    if let Some(dir) = files.ca.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write(&files.ca, ca_cert.pem().as_bytes(), false)?;
    write(&files.cert, leaf_cert.pem().as_bytes(), false)?;
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
