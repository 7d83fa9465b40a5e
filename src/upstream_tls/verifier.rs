//! One rustls certificate verifier for every policy: verify (roots or a CA), fingerprint,
//! encrypt (no check), may; a refusal classified into a [`Rejection`].

use super::*;

/// Certificates seen by a recording verifier (for `check-tls`).
pub type Seen = Arc<Mutex<Vec<CertificateDer<'static>>>>;

/// The rustls verifier of one upstream: applies its policy, wraps refusals in a [`Rejection`].
#[derive(Debug)]
pub struct PolicyVerifier {
    pub(super) policy: TlsPolicy,
    pub(super) source: TrustSource,
    pub(super) webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Certificates written in `ca`, trusted as given when presented as the server's own.
    pub(super) given: Vec<CertificateDer<'static>>,
    pub(super) pins: Vec<Fingerprint>,
    pub(super) algorithms: WebPkiSupportedAlgorithms,
    pub(super) seen: Option<Seen>,
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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
    pub(super) fn judge_given(
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

pub(super) fn name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// webpki's error, sorted into what a person can act on.
pub(super) fn classify(
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

pub(super) fn is_ca_as_ee(o: &OtherError) -> bool {
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
