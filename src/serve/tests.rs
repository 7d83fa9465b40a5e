//! `relay.toml` read: every key's meaning, every refusal's message, the example file.

use super::*;

const BASE: &str = r#"
hostname = "relay.test"
listen = "127.0.0.1:0"
spool_dir = "spool"
[auth]
mode = "passthrough"
[upstream]
host = "smtp.163.com"
port = 465
tls = "implicit"
"#;

#[test]
fn the_example_config_parses() {
    let text = include_str!("../../relay.example.toml");
    let loaded = parse(text, "relay.example.toml", Path::new("/etc/smtp-relay")).unwrap();
    let config = loaded.relay;
    assert_eq!(config.upstream.addr, "smtp.163.com:465");
    assert_eq!(config.upstream.tls, TlsMode::Implicit);
    assert_eq!(
        config.spool_dir,
        Path::new("/etc/smtp-relay/smtp-relay-data/spool")
    );
    assert_eq!(
        loaded.log_dir,
        Path::new("/etc/smtp-relay/smtp-relay-data/log")
    );
}

/// A route towards an internal server, `none` auth (no credentials on board).
fn internal(extra: &str) -> String {
    let none = BASE.replace(
        "mode = \"passthrough\"",
        "mode = \"none\"\ntrusted_networks = [\"127.0.0.0/8\"]",
    );
    format!(
        "{none}\n[[routes]]\nname = \"lab\"\ndomains = [\"lab.example\"]\nhost = \"mail.lab.example\"\nport = 25\n{extra}\n"
    )
}

fn route_error(extra: &str) -> String {
    parse(&internal(extra), "r.toml", Path::new("/x")).unwrap_err()
}

#[test]
fn tls_policies_parse_with_what_each_needs() {
    let pin = format!("sha256:{}", "AB".repeat(32));
    for (extra, policy) in [
        ("tls = \"starttls\"", TlsPolicy::Verify),
        (
            "tls = \"starttls\"\ntls_policy = \"verify\"",
            TlsPolicy::Verify,
        ),
        ("tls = \"starttls\"\ntls_policy = \"may\"", TlsPolicy::May),
        (
            "tls = \"implicit\"\ntls_policy = \"encrypt\"",
            TlsPolicy::Encrypt,
        ),
        (
            &*format!(
                "tls = \"starttls\"\ntls_policy = \"fingerprint\"\nfingerprints = [\"{pin}\"]"
            ),
            TlsPolicy::Fingerprint,
        ),
        ("tls = \"none\"", TlsPolicy::None),
        ("tls = \"none\"\ntls_policy = \"none\"", TlsPolicy::None),
    ] {
        let c = parse(&internal(extra), "r.toml", Path::new("/x"))
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
            .relay;
        let up = &c.routes[0].upstream;
        assert_eq!(up.tls_policy, policy, "{extra}");
        assert_eq!(
            up.tls_config.is_some(),
            policy != TlsPolicy::None,
            "{extra}"
        );
        assert_eq!(up.config_at, "[[routes]] \"lab\" of r.toml");
    }
}

#[test]
fn tls_policy_mismatches_are_refused_with_the_reason() {
    let pin = format!("sha256:{}", "AB".repeat(32));
    for (extra, want) in [
        (
            "tls = \"implicit\"\ntls_policy = \"may\"".to_string(),
            "r.toml: routes[0].tls_policy: may: \"may\" means STARTTLS when offered",
        ),
        (
            "tls = \"none\"\ntls_policy = \"verify\"".into(),
            "r.toml: routes[0].tls_policy: verify: Verify needs TLS",
        ),
        (
            "tls = \"starttls\"\ntls_policy = \"none\"".into(),
            "r.toml: routes[0].tls_policy: none: \"none\" is plaintext: write tls = \"none\"",
        ),
        (
            "tls = \"starttls\"\ntls_policy = \"fingerprint\"".into(),
            "r.toml: routes[0].fingerprints: tls_policy = \"fingerprint\" needs at least one",
        ),
        (
            "tls = \"starttls\"\ntls_policy = \"fingerprint\"\nfingerprints = [\"AB:CD\"]".into(),
            "r.toml: routes[0].fingerprints: \"AB:CD\": expected a SHA-256 fingerprint",
        ),
        (
            format!("tls = \"starttls\"\nfingerprints = [\"{pin}\"]"),
            "r.toml: routes[0].fingerprints: only read with tls_policy = \"fingerprint\"",
        ),
        (
            "tls = \"starttls\"\ntls_policy = \"encrypt\"\nca = \"ca.pem\"".into(),
            "r.toml: routes[0].ca: only read with tls_policy = \"verify\"",
        ),
        (
            "tls = \"starttls\"\ntls_policy = \"secure\"".into(),
            "r.toml: routes[0].tls_policy: \"secure\": expected \"verify\"",
        ),
    ] {
        let e = route_error(&extra);
        assert!(e.starts_with(want), "{extra}:\n{e}\nwanted {want}");
    }
}

#[test]
fn may_is_refused_on_a_route_that_carries_credentials() {
    // The relay's own username on the route.
    let e = route_error(
        "tls = \"starttls\"\ntls_policy = \"may\"\nusername = \"relay@lab.example\"\npassword_env = \"PATH\"",
    );
    assert!(
        e.starts_with("r.toml: routes[0].tls_policy: \"may\" falls back to plaintext"),
        "{e}"
    );
    // The client's own, in passthrough mode.
    let text = format!(
        "{BASE}\n[[routes]]\nname = \"lab\"\ndomains = [\"lab.example\"]\npassthrough = true\nhost = \"mail.lab.example\"\nport = 25\ntls = \"starttls\"\ntls_policy = \"may\"\n"
    );
    let e = parse(&text, "r.toml", Path::new("/x")).unwrap_err();
    assert!(
        e.starts_with("r.toml: routes[0].tls_policy: \"may\""),
        "{e}"
    );
    // The default upstream in passthrough mode carries the client's credentials too.
    let text = BASE.replace(
        "port = 465\ntls = \"implicit\"",
        "port = 587\ntls = \"starttls\"\ntls_policy = \"may\"",
    );
    let e = parse(&text, "r.toml", Path::new("/x")).unwrap_err();
    assert!(e.starts_with("r.toml: upstream.tls_policy: \"may\""), "{e}");
}

#[test]
fn an_ipv6_upstream_is_written_in_brackets() {
    for host in ["::1", "[::1]"] {
        let c = parse(
            &BASE.replace("host = \"smtp.163.com\"", &format!("host = \"{host}\"")),
            "r.toml",
            Path::new("/x"),
        )
        .unwrap()
        .relay;
        assert_eq!(c.upstream.addr, "[::1]:465");
        assert_eq!(c.upstream.name, "[::1]:465");
        assert_eq!(c.upstream.server_name, "::1");
    }
}

#[test]
fn a_self_signed_certificate_in_ca_is_accepted_at_load() {
    let dir = std::env::temp_dir().join(format!("smtp-relay-serve-ca-{}", std::process::id()));
    let files = fake_upstream::tls::TlsFiles::in_dir(&dir);
    fake_upstream::tls::generate_kind(&files, fake_upstream::tls::CertKind::SelfSignedCa).unwrap();
    let c = parse(
        &internal("tls = \"starttls\"\nca = \"cert.pem\""),
        "r.toml",
        &dir,
    )
    .unwrap()
    .relay;
    assert_eq!(c.routes[0].upstream.tls_policy, TlsPolicy::Verify);
    let e = route_error("tls = \"starttls\"\nca = \"missing.pem\"");
    assert!(
        e.starts_with("r.toml: routes[0].ca: /x/missing.pem: "),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn minimal_passthrough() {
    let c = parse(BASE, "r.toml", Path::new("/x")).unwrap().relay;
    assert_eq!(c.auth, AuthMode::Passthrough);
    assert_eq!(c.upstream.server_name, "smtp.163.com");
    assert!(c.upstream.credentials.is_none());
}

#[test]
fn errors_name_the_file_and_key() {
    let e = parse(
        &BASE.replace("\"implicit\"", "\"ssl\""),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert_eq!(
        e,
        "r.toml: upstream.tls: \"ssl\": expected \"implicit\", \"starttls\" or \"none\""
    );
    let e = parse(&format!("{BASE}colour = 1\n"), "r.toml", Path::new(".")).unwrap_err();
    assert!(e.starts_with("r.toml: ") && e.contains("colour"), "{e}");
    let none = BASE.replace(
        "mode = \"passthrough\"",
        "mode = \"none\"\ntrusted_networks = [\"10.0.0.0/8\"]",
    );
    let c = parse(&none, "r.toml", Path::new(".")).unwrap().relay;
    assert!(matches!(c.auth, AuthMode::TrustedNetworks(ref n) if n.len() == 1));
    let e = parse(
        &BASE.replace("\"passthrough\"", "\"trusted\""),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert_eq!(
        e,
        "r.toml: auth.trusted_networks: trusted mode needs at least one network"
    );
    let e = parse(
        &BASE.replace(
            "mode = \"passthrough\"",
            "mode = \"trusted\"\ntrusted_networks = [\"10.0.0.0/99\"]",
        ),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.contains("\"10.0.0.0/99\" is not ADDRESS/PREFIX"), "{e}");
    let e = parse(
        &format!("{BASE}username = \"me@163.com\"\npassword_env = \"SMTP_RELAY_SURELY_UNSET\"\n"),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert_eq!(
        e,
        "r.toml: upstream.password_env: environment variable SMTP_RELAY_SURELY_UNSET is not set"
    );
}

#[test]
fn routes() {
    let text = format!(
        "{BASE}\n[[routes]]\nname = \"qq\"\ndomains = [\"qq.com\", \".qq.com\"]\nhost = \"mx1.qq.com\"\nport = 25\ntls = \"starttls\"\n\n[[routes]]\ndomains = [\"bupt.edu.cn\"]\npassthrough = true\nhost = \"mail.bupt.edu.cn\"\nport = 465\ntls = \"implicit\"\n"
    );
    let c = parse(&text, "r.toml", Path::new(".")).unwrap().relay;
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].label, "qq");
    assert_eq!(c.routes[0].upstream.addr, "mx1.qq.com:25");
    assert_eq!(c.routes[0].upstream.tls, TlsMode::StartTls);
    assert!(!c.routes[0].passthrough);
    assert_eq!(c.routes[1].label, "bupt.edu.cn");
    assert!(c.routes[1].passthrough);
    assert_eq!(crate::route::match_domain(&c.routes, "vip.qq.com"), Some(0));

    let e = parse(
        &text.replace("[\"bupt.edu.cn\"]", "[]"),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        e.starts_with("r.toml: routes[1].domains: a route needs"),
        "{e}"
    );
    let e = parse(
        &text.replace("\"qq.com\", ", "\"qq com\", "),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        e.starts_with("r.toml: routes[0].domains: \"qq com\" is not a domain pattern"),
        "{e}"
    );
    let e = parse(
        &text.replace("tls = \"starttls\"", "tls = \"tls\""),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        e.starts_with("r.toml: routes[0].tls: \"tls\": expected"),
        "{e}"
    );
    let e = parse(
        &BASE.replace(
            "tls = \"implicit\"",
            "tls = \"implicit\"\ndomains = [\"x.org\"]",
        ),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.contains("belong in [[routes]]"), "{e}");
}

#[test]
fn queue_mode() {
    // SAFETY: a variable only this test reads.
    unsafe { std::env::set_var("SMTP_RELAY_TEST_ALICE_CODE", "ALICEAUTHCODE163") };
    let text = BASE
        .replace(
            "mode = \"passthrough\"",
            "mode = \"none\"\ntrusted_networks = [\"127.0.0.0/8\"]",
        )
        .replace("tls = \"implicit\"", "tls = \"implicit\"\nmode = \"queue\"")
        + "[queue]\ndir = \"queue\"\nfirst_retry_secs = 60\nlifetime_hours = 24\n[[secrets]]\naddress = \"Alice@163.com\"\npassword_env = \"SMTP_RELAY_TEST_ALICE_CODE\"\n";
    let c = parse(&text, "r.toml", Path::new("/x")).unwrap().relay;
    assert!(c.default_queue);
    let q = c.queue.unwrap();
    assert_eq!(q.dir, Path::new("/x/queue"));
    assert_eq!(q.retry.first, Duration::from_secs(60));
    assert_eq!(q.retry.lifetime, Duration::from_secs(86_400));
    let alice = (q.secrets)("alice@163.com").unwrap();
    assert_eq!(
        (alice.username.as_str(), alice.secret.as_str()),
        ("Alice@163.com", "ALICEAUTHCODE163")
    );
    assert!((q.secrets)("bob@163.com").is_none());

    let e = parse(
        &text.replace("[queue]\ndir = \"queue\"\n", "[unused]\n"),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(e.contains("unused") || e.contains("queue"), "{e}");
    let no_queue: String = text[..text.find("[queue]").unwrap()].to_string();
    let e = parse(&no_queue, "r.toml", Path::new(".")).unwrap_err();
    assert!(
        e.starts_with("r.toml: queue: a route has mode = \"queue\""),
        "{e}"
    );
    let pass = no_queue.replace(
        "mode = \"none\"\ntrusted_networks = [\"127.0.0.0/8\"]",
        "mode = \"passthrough\"",
    ) + "[queue]\ndir = \"q\"\n";
    let e = parse(&pass, "r.toml", Path::new(".")).unwrap_err();
    assert!(
        e.starts_with("r.toml: auth.mode: a route in queue mode"),
        "{e}"
    );
    let e = parse(
        &text.replace("mode = \"queue\"", "mode = \"later\""),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        e.contains("upstream.mode: \"later\": expected \"live\" or \"queue\""),
        "{e}"
    );
}

#[test]
fn users_mode_needs_a_users_file_and_upstream_credentials() {
    let users = BASE.replace("mode = \"passthrough\"", "mode = \"users\"");
    let e = parse(&users, "r.toml", Path::new(".")).unwrap_err();
    assert_eq!(
        e,
        "r.toml: auth.users_file: users mode needs a users file (address:bcrypt-hash lines)"
    );
    let dir = std::env::temp_dir().join(format!("serve-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("users.htpasswd"),
        format!("c@x.example:{}\n", bcrypt::hash("pw", 4).unwrap()),
    )
    .unwrap();
    let with_file = users.replace(
        "mode = \"users\"",
        "mode = \"users\"\nusers_file = \"users.htpasswd\"",
    );
    let e = parse(&with_file, "r.toml", &dir).unwrap_err();
    assert!(
        e.starts_with("r.toml: upstream.username: in users mode"),
        "{e}"
    );
    std::fs::write(dir.join("code.txt"), "ALICEAUTHCODE163\n").unwrap();
    let full = format!("{with_file}username = \"alice@163.com\"\npassword_file = \"code.txt\"\n");
    let c = parse(&full, "r.toml", &dir).unwrap().relay;
    assert!(matches!(c.auth, AuthMode::Users(_)));
    assert_eq!(c.upstream.credentials.unwrap().secret, "ALICEAUTHCODE163");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn networks() {
    assert_eq!(
        parse_network("127.0.0.0/8"),
        Some(("127.0.0.0".parse().unwrap(), 8))
    );
    assert_eq!(
        parse_network("::1/128"),
        Some(("::1".parse().unwrap(), 128))
    );
    assert_eq!(parse_network("1.2.3.4"), None);
    assert_eq!(parse_network("1.2.3.4/33"), None);
}

#[test]
fn proxy_protocol_names_its_balancers() {
    let c = parse(BASE, "r.toml", Path::new(".")).unwrap().relay;
    assert!(c.proxy_protocol.is_none(), "off unless asked for");
    let with = |table: &str| parse(&format!("{BASE}{table}"), "r.toml", Path::new("."));
    let c = with("[proxy_protocol]\ntrusted = [\"10.0.0.5/32\", \"fd00::/8\"]\n")
        .unwrap()
        .relay;
    let pp = c.proxy_protocol.unwrap();
    assert_eq!(
        pp.trusted,
        [
            ("10.0.0.5".parse().unwrap(), 32),
            ("fd00::".parse().unwrap(), 8)
        ]
    );
    assert_eq!(pp.header_timeout, Duration::from_secs(5));
    let c = with("[proxy_protocol]\ntrusted = [\"10.0.0.5/32\"]\nheader_timeout_secs = 2\n")
        .unwrap()
        .relay;
    assert_eq!(
        c.proxy_protocol.unwrap().header_timeout,
        Duration::from_secs(2)
    );
    assert_eq!(
        with("[proxy_protocol]\ntrusted = []\n").unwrap_err(),
        "r.toml: proxy_protocol.trusted: name the load balancers' addresses (nothing else may connect)"
    );
    let e = with("[proxy_protocol]\ntrusted = [\"haproxy\"]\n").unwrap_err();
    assert!(e.contains("\"haproxy\" is not ADDRESS/PREFIX"), "{e}");
}

#[test]
fn max_sessions() {
    let capped = BASE.replace(
        "tls = \"implicit\"",
        "tls = \"implicit\"\nmax_sessions = 10",
    );
    let c = parse(&capped, "r.toml", Path::new(".")).unwrap().relay;
    assert_eq!(c.upstream_max_sessions, Some(10));
    assert_eq!(c.upstream_session_wait, Duration::from_secs(30));
    let c = parse(BASE, "r.toml", Path::new(".")).unwrap().relay;
    assert_eq!(c.upstream_max_sessions, None, "no cap unless asked");
    let e = parse(
        &capped.replace("max_sessions = 10", "max_sessions = 0"),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert_eq!(
        e,
        "r.toml: upstream.max_sessions: at least 1 (leave it out for no cap)"
    );
    let e = parse(
        &capped.replace("max_sessions = 10", "max_sessions = 10\nmode = \"queue\""),
        "r.toml",
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        e.starts_with("r.toml: upstream.max_sessions: a route in queue mode caps"),
        "{e}"
    );
}
