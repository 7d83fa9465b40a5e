//! `smtp-relay check-tls`'s report read back: what each kind of server (verified, self-signed, expired, wrong name, STARTTLS) is told.

use super::*;

#[test]
fn targets_need_a_port() {
    assert_eq!(
        split_target("smtp.163.com:465").unwrap(),
        ("smtp.163.com".into(), 465)
    );
    assert_eq!(split_target("[::1]:25").unwrap(), ("::1".into(), 25));
    assert!(
        split_target("smtp.163.com")
            .unwrap_err()
            .contains("expected HOST:PORT")
    );
    assert!(split_target("h:x").unwrap_err().contains("not a port"));
    assert!(split_target(":25").unwrap_err().contains("no host"));
    assert!(split_target("::1:25").unwrap_err().contains("[::1]:25"));
}

fn args(target: &str) -> CheckTlsArgs {
    CheckTlsArgs {
        target: target.into(),
        starttls: false,
        implicit: false,
        server_name: None,
        ca: None,
        save: None,
        helo: "localhost".into(),
        timeout: Duration::from_secs(1),
    }
}

#[test]
fn tls_mode_follows_the_port_unless_told() {
    let o = Options::from_args(&args("h:465")).unwrap();
    assert_eq!(o.tls, TlsMode::Implicit);
    assert_eq!(o.server_name, "h");
    assert_eq!(
        Options::from_args(&args("h:587")).unwrap().tls,
        TlsMode::StartTls
    );
    let mut a = args("h:465");
    a.starttls = true;
    assert_eq!(Options::from_args(&a).unwrap().tls, TlsMode::StartTls);
    let mut a = args("h:2525");
    a.implicit = true;
    assert_eq!(Options::from_args(&a).unwrap().tls, TlsMode::Implicit);
    assert_eq!(
        Options::from_args(&args("[::1]:25")).unwrap().server_name,
        "::1"
    );
    let mut a = args("h:25");
    a.server_name = Some("not a name".into());
    assert!(
        Options::from_args(&a)
            .unwrap_err()
            .contains("--server-name")
    );
    let mut a = args("h:25");
    a.ca = Some("/nonexistent/ca.pem".into());
    assert!(
        Options::from_args(&a)
            .unwrap_err()
            .starts_with("--ca /nonexistent/ca.pem: ")
    );
}

#[test]
fn pem_round_trips() {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from(vec![0x30u8, 0x03, 0x02, 0x01, 0x05]);
    let text = pem(&[der.clone(), der.clone()]);
    let back: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back, vec![der.clone(), der]);
}
