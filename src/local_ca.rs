//! The certificate `up` presents to mail clients, and the CA users are told to trust for it.
//!
//! That CA can vouch for nothing but this machine: it carries RFC 5280 name constraints
//! (localhost, 127.0.0.1, ::1 and the relay's hostname), it is valid for [`VALID_DAYS`], and its
//! private key is dropped once the one leaf is signed, so whoever holds the data directory can
//! issue nothing else with it. `up` renews both when fewer than [`RENEW_DAYS`] are left (users
//! then trust the new `ca.pem`). The fake upstream's CA, whose leaf names smtp.163.com and
//! smtp.qq.com, stays the relay's own business (`<data-dir>/upstream/ca.pem`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Datelike, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType,
};

/// How long the CA and its leaf are valid.
pub const VALID_DAYS: i64 = 90;
/// Renewed at start when fewer days than this are left.
pub const RENEW_DAYS: i64 = 30;

/// The relay's client-facing TLS, ready to serve.
#[derive(Debug)]
pub struct LocalTls {
    /// The file mail clients should trust.
    pub ca: PathBuf,
    pub not_after: DateTime<Utc>,
    /// Made (or made anew) by this call.
    pub renewed: bool,
    pub server_config: std::sync::Arc<rustls::ServerConfig>,
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
struct State {
    names: Vec<String>,
    not_after: DateTime<Utc>,
}

/// The names a local relay answers as.
pub fn local_names(hostname: &str) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if !names.iter().any(|n| n.eq_ignore_ascii_case(hostname)) {
        names.push(hostname.to_ascii_lowercase());
    }
    names
}

/// `dir/ca.pem`, `dir/relay-cert.pem`, `dir/relay-key.pem` as they are, or made anew when
/// missing, for other names, or near expiry at `now`.
pub fn load_or_renew(dir: &Path, hostname: &str, now: DateTime<Utc>) -> Result<LocalTls, String> {
    let files = fake_upstream::tls::TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("relay-cert.pem"),
        key: dir.join("relay-key.pem"),
    };
    let state_path = dir.join("relay-tls.json");
    let names = local_names(hostname);
    let state: Option<State> = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let fresh = state.as_ref().is_some_and(|s| {
        s.names == names
            && (s.not_after - now).num_days() >= RENEW_DAYS
            && files.ca.exists()
            && files.cert.exists()
            && files.key.exists()
    });
    let (not_after, renewed) = match state {
        Some(s) if fresh => (s.not_after, false),
        _ => {
            let not_after = generate(&files, &names, now)?;
            let state = State {
                names: names.clone(),
                not_after,
            };
            let json = serde_json::to_vec_pretty(&state).expect("serializable");
            crate::spool::write_private(&state_path, &json)
                .map_err(|e| format!("{}: {e}", state_path.display()))?;
            (not_after, true)
        }
    };
    let material = fake_upstream::tls::load(files.clone()).map_err(|e| e.to_string())?;
    Ok(LocalTls {
        ca: files.ca,
        not_after,
        renewed,
        server_config: material.server_config,
    })
}

/// A CA limited to `names` by name constraints, valid from `from` for [`VALID_DAYS`].
fn constrained_ca(
    names: &[String],
    from: DateTime<Utc>,
) -> Result<(CertificateParams, KeyPair), rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("smtp-relay local CA ({})", names.join(", ")),
    );
    ca.distinguished_name
        .push(DnType::OrganizationName, "smtp-relay");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => {
                    GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, full_prefix(ip)))
                }
                Err(_) => GeneralSubtree::DnsName(n.clone()),
            })
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    set_validity(&mut ca, from);
    let key = KeyPair::generate()?;
    Ok((ca, key))
}

fn full_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn set_validity(p: &mut CertificateParams, from: DateTime<Utc>) {
    let day = |t: DateTime<Utc>| rcgen::date_time_ymd(t.year(), t.month() as u8, t.day() as u8);
    p.not_before = day(from - chrono::Duration::days(1));
    p.not_after = day(from + chrono::Duration::days(VALID_DAYS));
}

/// A server certificate for `names`, signed by `issuer`.
fn leaf(
    names: &[String],
    issuer: &Issuer<'_, KeyPair>,
    from: DateTime<Utc>,
) -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    leaf.distinguished_name
        .push(DnType::CommonName, "smtp-relay");
    leaf.use_authority_key_identifier_extension = true;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut leaf, from);
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// Makes the CA and the leaf, writes `ca.pem`, the leaf and its key (the CA's key is never
/// written), and returns the end of their validity.
fn generate(
    files: &fake_upstream::tls::TlsFiles,
    names: &[String],
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    let err = |e: rcgen::Error| format!("the relay's certificate: {e}");
    let (ca_params, ca_key) = constrained_ca(names, now).map_err(err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let (cert, key) = leaf(names, &issuer, now).map_err(err)?;
    for (path, bytes) in [
        (&files.ca, ca_cert.pem()),
        (&files.cert, cert.pem()),
        (&files.key, key.serialize_pem()),
    ] {
        crate::spool::write_private(path, bytes.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let end = now + chrono::Duration::days(VALID_DAYS);
    Ok(end
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    fn verifier(ca_pem: &str) -> std::sync::Arc<dyn rustls::client::danger::ServerCertVerifier> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    /// The CA vouches for the local names and for nothing else: a leaf it signed for
    /// smtp.163.com (which `up` never makes; the test holds the key to try) is refused by
    /// webpki, as browsers and OpenSSL refuse it.
    #[test]
    fn the_local_ca_cannot_vouch_for_163() {
        let now = Utc::now();
        let names = local_names("relay.example");
        let (params, key) = constrained_ca(&names, now).unwrap();
        let ca = params.self_signed(&key).unwrap();
        let issuer = Issuer::new(params, key);
        let v = verifier(&ca.pem());
        let t = UnixTime::now();
        let (good, _) = leaf(&names, &issuer, now).unwrap();
        for name in ["localhost", "127.0.0.1", "relay.example"] {
            let server = ServerName::try_from(name).unwrap();
            assert!(
                v.verify_server_cert(good.der(), &[], &server, &[], t)
                    .is_ok(),
                "{name}"
            );
        }
        let (evil, _) = leaf(&["smtp.163.com".to_string()], &issuer, now).unwrap();
        let server = ServerName::try_from("smtp.163.com").unwrap();
        let refused = v.verify_server_cert(evil.der(), &[], &server, &[], t);
        assert!(
            refused.is_err(),
            "a constrained CA vouched for smtp.163.com"
        );
    }

    #[test]
    fn kept_while_valid_renewed_near_expiry_and_for_other_names() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-local-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t0 = Utc::now();
        let first = load_or_renew(&dir, "localhost", t0).unwrap();
        assert!(first.renewed);
        let days = (first.not_after - t0).num_days();
        assert!((VALID_DAYS - 1..=VALID_DAYS).contains(&days), "{days}");
        let pem = std::fs::read(&first.ca).unwrap();
        let again = load_or_renew(&dir, "localhost", t0 + chrono::Duration::days(10)).unwrap();
        assert!(!again.renewed);
        assert_eq!(std::fs::read(&again.ca).unwrap(), pem);
        let late = t0 + chrono::Duration::days(VALID_DAYS - RENEW_DAYS + 1);
        assert!(load_or_renew(&dir, "localhost", late).unwrap().renewed);
        let other = load_or_renew(&dir, "mail.example", late).unwrap();
        assert!(other.renewed, "a new hostname needs a new certificate");
        assert!(!dir.join("ca-key.pem").exists());
        let files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            files.len(),
            4,
            "ca.pem, the leaf, its key and the state: {files:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
