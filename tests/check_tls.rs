//! `smtp-relay check-tls` against the fake upstream presenting each kind of certificate users
//! meet (self-signed as `openssl req -x509` makes it, a private CA, a wrong name, an expired
//! one): what it reports, its exit status, and that the config lines it prints are the ones
//! that make the relay's upstream connector deliver there. Dates are judged at a fixed moment.

use std::path::PathBuf;
use std::time::Duration;

use fake_upstream::tls::{CertKind, TlsFiles};
use fake_upstream::{Config, FakeUpstream, Handle, Persona};
use rustls::pki_types::UnixTime;
use rustls::pki_types::pem::PemObject;
use smtp_relay::check_tls::{CheckTlsArgs, Options, Outcome, Report, check};
use smtp_relay::upstream::{Timeouts, TlsMode, Upstream, UpstreamConfig};
use smtp_relay::upstream_tls::{
    CertProblem, CertSummary, Fingerprint, TlsPolicy, Trust, config_for,
};

/// 2030-06-01: inside every generated certificate's dates except the expired one's.
fn at_2030() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(1_906_588_800))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("check-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The sink persona on 127.0.0.1 (or `listen`), presenting a certificate of `kind`.
async fn fake(kind: CertKind, name: &str, listen: Option<&str>) -> (Handle, TlsFiles) {
    let dir = temp_dir(name);
    let files = TlsFiles::in_dir(&dir.join("tls"));
    fake_upstream::tls::generate_kind(&files, kind).unwrap();
    let mut config = Config::new(Persona::load("sink").unwrap(), dir);
    config.tls_files = Some(files.clone());
    if let Some(l) = listen {
        config.listen = l.parse().unwrap();
        config.listen_tls = Some(l.parse().unwrap());
    }
    (FakeUpstream::start(config).await.unwrap(), files)
}

fn args(target: String) -> CheckTlsArgs {
    CheckTlsArgs {
        target,
        starttls: false,
        implicit: false,
        server_name: None,
        ca: None,
        save: None,
        helo: "check.test".into(),
        timeout: Duration::from_secs(5),
    }
}

async fn run(a: CheckTlsArgs) -> Report {
    check(&Options::from_args(&a).unwrap(), at_2030()).await
}

fn cert_of(files: &TlsFiles) -> CertSummary {
    let der = rustls::pki_types::CertificateDer::from_pem_file(&files.cert).unwrap();
    CertSummary::parse(&der).unwrap()
}

/// The relay's connector with `policy`, to the fake's plain listener over STARTTLS.
fn relay_config(h: &Handle, server_name: &str, policy: TlsPolicy, trust: Trust) -> UpstreamConfig {
    UpstreamConfig {
        name: "fake".into(),
        addr: h.addr().to_string(),
        server_name: server_name.into(),
        tls: TlsMode::StartTls,
        tls_policy: policy,
        tls_config: Some(config_for(policy, trust).unwrap()),
        config_at: "[upstream] of the test".into(),
        helo_name: "relay.test".into(),
        credentials: None,
        timeouts: Timeouts::default(),
        transcript: false,
        bdat: None,
    }
}

/// Pulls the pinned value out of the `fingerprints = ["..."]` line check-tls prints.
fn printed_pin(text: &str) -> Fingerprint {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("fingerprints = [\""))
        .unwrap_or_else(|| panic!("no fingerprints line in:\n{text}"));
    let value = line.split('"').nth(1).unwrap();
    value.parse().unwrap()
}

#[tokio::test]
async fn a_self_signed_ca_certificate_is_described_and_the_printed_pin_delivers() {
    let (h, files) = fake(CertKind::SelfSignedCa, "self-signed-ca", None).await;
    let report = run(args(format!("localhost:{}", h.addr().port()))).await;
    assert_eq!(report.outcome(), Outcome::NotVerified);
    assert_eq!(report.addresses.len(), 1);
    let a = &report.addresses[0];
    assert!(a.tls.is_some(), "STARTTLS negotiated");
    assert_eq!(a.name_ok, Some(true));
    assert_eq!(a.chain.len(), 1);
    assert!(
        a.verdicts[0].result.is_err(),
        "the public roots do not verify it"
    );
    let text = report.render();
    for want in [
        "check-tls localhost:",
        "(STARTTLS; the certificate must carry localhost)",
        "S: 220 ",
        "C: STARTTLS",
        "offers: ",
        "CA flag:    CA:TRUE",
        "(self-signed)",
        "names:      localhost, 127.0.0.1, ::1",
        "tls = \"starttls\"",
        "tls_policy = \"fingerprint\"",
        "--save FILE writes it",
        "(exit 1)",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let cert = cert_of(&files);
    assert!(text.contains(&cert.sha256.to_string()), "{text}");
    // What check-tls says to pin is what the relay then accepts; a wrong pin is refused.
    let pin = printed_pin(&text);
    assert_eq!(pin, cert.sha256_key);
    let up = Upstream::connect(&relay_config(
        &h,
        "localhost",
        TlsPolicy::Fingerprint,
        Trust::Pins(vec![pin]),
    ))
    .await
    .unwrap();
    up.quit().await;
    assert!(
        Upstream::connect(&relay_config(
            &h,
            "localhost",
            TlsPolicy::Fingerprint,
            Trust::Pins(vec![Fingerprint([7; 32])]),
        ))
        .await
        .is_err()
    );

    // With the certificate as `ca` (what --save writes), verify accepts it: exit 0.
    let mut a = args(format!("127.0.0.1:{}", h.addr().port()));
    a.ca = Some(files.cert.clone());
    let report = run(a).await;
    assert_eq!(report.outcome(), Outcome::Verified, "{}", report.render());
    let text = report.render();
    assert!(
        text.contains(&format!("    ca = \"{}\"", files.cert.display())),
        "{text}"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_private_ca_is_named_and_verifies_with_its_ca_over_implicit_tls() {
    let (h, files) = fake(CertKind::PrivateCa, "private-ca", None).await;
    let port = h.tls_addr().unwrap().port();
    let mut a = args(format!("localhost:{port}"));
    a.implicit = true;
    let report = run(a).await;
    assert_eq!(report.outcome(), Outcome::NotVerified);
    let r = report.addresses[0].verdicts[0].result.as_ref().unwrap_err();
    assert_eq!(r.problem, CertProblem::UnknownIssuer);
    let text = report.render();
    assert!(text.contains("(implicit TLS;"), "{text}");
    assert!(text.contains("tls = \"implicit\""), "{text}");
    assert!(
        text.contains("FILE holding the certificate of CN=smtp-relay fake-upstream CA"),
        "{text}"
    );
    let mut a = args(format!("localhost:{port}"));
    a.implicit = true;
    a.ca = Some(files.ca.clone());
    let report = run(a).await;
    assert_eq!(report.outcome(), Outcome::Verified, "{}", report.render());
    // STARTTLS asked of the implicit-TLS port: connected, no greeting, and the hint.
    let mut a = args(format!("localhost:{port}"));
    a.timeout = Duration::from_millis(300);
    let report = run(a).await;
    assert_eq!(report.outcome(), Outcome::NotVerified);
    assert!(
        report.render().contains("try --implicit"),
        "{}",
        report.render()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_wrong_name_says_which_server_name_to_write_and_that_one_verifies() {
    let (h, files) = fake(CertKind::WrongName, "wrong-name", None).await;
    let mut a = args(format!("localhost:{}", h.addr().port()));
    a.ca = Some(files.ca.clone());
    let report = run(a).await;
    assert_eq!(report.outcome(), Outcome::NotVerified);
    let addr = &report.addresses[0];
    assert_eq!(addr.name_ok, Some(false));
    assert!(matches!(
        addr.verdicts[1].result.as_ref().unwrap_err().problem,
        CertProblem::WrongName { .. }
    ));
    let text = report.render();
    assert!(text.contains("name localhost: NOT carried"), "{text}");
    assert!(
        text.contains("server_name = \"mail.internal.example\""),
        "{text}"
    );
    let mut a = args(format!("localhost:{}", h.addr().port()));
    a.ca = Some(files.ca.clone());
    a.server_name = Some("mail.internal.example".into());
    assert_eq!(run(a).await.outcome(), Outcome::Verified);
    h.shutdown().await;
}

#[tokio::test]
async fn an_expired_certificate_is_judged_at_the_given_moment() {
    let (h, files) = fake(CertKind::Expired, "expired", None).await;
    let mut a = args(format!("localhost:{}", h.addr().port()));
    a.ca = Some(files.ca.clone());
    let options = Options::from_args(&a).unwrap();
    let report = check(&options, at_2030()).await;
    assert_eq!(report.outcome(), Outcome::NotVerified);
    assert_eq!(
        report.addresses[0].verdicts[1]
            .result
            .as_ref()
            .unwrap_err()
            .problem,
        CertProblem::Expired
    );
    let text = report.render();
    assert!(
        text.contains("2019-01-01 to 2020-01-01 (EXPIRED)"),
        "{text}"
    );
    assert!(
        text.contains("renew") || text.contains("fingerprint"),
        "{text}"
    );
    // In 2019 the same certificate was good: the clock is the caller's.
    let mid_2019 = UnixTime::since_unix_epoch(Duration::from_secs(1_561_939_200));
    let report = check(&options, mid_2019).await;
    assert_eq!(report.outcome(), Outcome::Verified, "{}", report.render());
    h.shutdown().await;
}

#[tokio::test]
async fn ipv6_addresses_are_bracketed_and_nothing_listening_is_exit_2() {
    let (h, files) = fake(CertKind::SelfSigned, "ipv6", Some("[::1]:0")).await;
    let port = h.addr().port();
    let mut a = args(format!("[::1]:{port}"));
    a.ca = Some(files.cert.clone());
    let report = run(a).await;
    assert_eq!(report.outcome(), Outcome::Verified, "{}", report.render());
    let text = report.render();
    assert!(text.contains(&format!("\n[::1]:{port}\n")), "{text}");
    assert!(text.contains("name ::1: carried"), "{text}");
    h.shutdown().await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let report = run(args(format!("127.0.0.1:{port}"))).await;
    assert_eq!(report.outcome(), Outcome::Unreachable);
    assert_eq!(report.outcome().code(), 2);
    let text = report.render();
    assert!(text.contains("  failed: "), "{text}");
    assert!(text.contains("(exit 2)"), "{text}");
}

/// A server that offers STARTTLS and answers the ClientHello with plaintext (a broken
/// TLS set-up); on every connection, so that `may`'s plaintext retry finds it too.
async fn broken_starttls_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut io = BufReader::new(stream);
                io.get_mut().write_all(b"220 broken.test ESMTP\r\n").await?;
                let mut line = String::new();
                loop {
                    line.clear();
                    if io.read_line(&mut line).await? == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    let verb = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if verb.starts_with("EHLO") {
                        b"250-broken.test\r\n250 STARTTLS\r\n"
                    } else if verb == "STARTTLS" {
                        io.get_mut().write_all(b"220 go ahead\r\n").await?;
                        let mut hello = [0u8; 5];
                        io.read_exact(&mut hello).await?;
                        io.get_mut().write_all(b"500 this is not TLS\r\n").await?;
                        return Ok(());
                    } else if verb == "QUIT" {
                        io.get_mut().write_all(b"221 bye\r\n").await?;
                        return Ok(());
                    } else {
                        b"502 5.5.1 not here\r\n"
                    };
                    io.get_mut().write_all(reply).await?;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_failed_starttls_handshake_is_said_and_the_plaintext_session_shown() {
    let addr = broken_starttls_server().await;
    let report = run(args(addr.to_string())).await;
    assert_eq!(report.outcome(), Outcome::NotVerified);
    let a = &report.addresses[0];
    assert!(a.tls.is_none());
    assert!(a.chain.is_empty());
    let text = report.render();
    assert!(
        text.contains(
            "* plaintext: TLS failed on the first connection (the server did not answer in TLS)"
        ),
        "{text}"
    );
    assert!(
        text.contains("TLS: the handshake failed, see above"),
        "{text}"
    );
}

fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
}

#[tokio::test]
async fn the_binary_exits_by_verdict_and_saves_what_was_presented() {
    let (h, files) = fake(CertKind::SelfSignedCa, "binary", None).await;
    let target = format!("127.0.0.1:{}", h.addr().port());
    let saved = temp_dir("binary-saved").with_extension("pem");
    let (t, s) = (target.clone(), saved.clone());
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["check-tls", &t, "--timeout", "5s", "--save"])
            .arg(&s)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("wrote the 1 certificate(s) presented"),
        "{stdout}"
    );
    assert_eq!(
        rustls::pki_types::CertificateDer::from_pem_file(&saved).unwrap(),
        rustls::pki_types::CertificateDer::from_pem_file(&files.cert).unwrap()
    );
    // The saved file, given as --ca, verifies: exit 0.
    let (t, s) = (target.clone(), saved.clone());
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .args(["check-tls", &t, "--ca"])
            .arg(&s)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    h.shutdown().await;

    let out = bin().args(["check-tls", "smtp.163.com"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected HOST:PORT"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
