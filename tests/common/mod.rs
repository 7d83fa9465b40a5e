//! What the relay's integration tests share: a fake 163 and a relay in front of it, on port 0.
#![allow(dead_code)]

use std::time::Duration;

use fake_upstream::testing::{Client, b64};
use fake_upstream::{Fault, Handle};
use smtp_relay::relay::{self, RelayConfig, RelayHandle};
use smtp_relay::upstream::{Timeouts, TlsMode, UpstreamConfig};

/// How the relay reaches a fake upstream: implicit TLS verified against its CA as
/// `server_name`, short command timeouts.
pub fn upstream_config(fake: &Handle, name: &str, server_name: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: name.into(),
        addr: fake.tls_addr().unwrap().to_string(),
        server_name: server_name.into(),
        tls: TlsMode::Implicit,
        tls_policy: smtp_relay::upstream_tls::TlsPolicy::Verify,
        tls_config: Some(
            smtp_relay::upstream_tls::verify_ca_pem("the fake's CA", fake.ca_pem()).unwrap(),
        ),
        config_at: "the test".into(),
        helo_name: "relay.test".into(),
        credentials: None,
        timeouts: Timeouts {
            command: Duration::from_secs(2),
            data_end: Duration::from_secs(2),
            ..Timeouts::default()
        },
        transcript: true,
        bdat: None,
    }
}

pub struct Setup {
    pub fake: Handle,
    pub relay: RelayHandle,
    pub spool: std::path::PathBuf,
}

pub async fn setup(name: &str, faults: Vec<Fault>) -> Setup {
    setup_with(name, faults, |_| {}).await
}

pub async fn setup_with(
    name: &str,
    faults: Vec<Fault>,
    tweak: impl FnOnce(&mut RelayConfig),
) -> Setup {
    setup_full(name, |f| f.faults = faults, tweak).await
}

/// A fake 163 that refuses unknown @163.com mailboxes at RCPT with `550 Invalid User` on its
/// implicit-TLS listener too (as its port-25 listener does; 465 itself takes every recipient,
/// persona-163 10.6): to show an upstream refusal passed back verbatim.
pub async fn setup_refusing_unknown(name: &str) -> Setup {
    setup_full(
        name,
        |f| f.persona.rules.unknown_recipient_implicit_tls = None,
        |_| {},
    )
    .await
}

/// A fake 163 as `fake_tweak` makes it, and the relay as `tweak` makes it.
pub async fn setup_full(
    name: &str,
    fake_tweak: impl FnOnce(&mut fake_upstream::Config),
    tweak: impl FnOnce(&mut RelayConfig),
) -> Setup {
    let mut config = fake_upstream::testing::config("163", &format!("relay-{name}"));
    fake_tweak(&mut config);
    let fake = fake_upstream::testing::start(config).await;
    let tls =
        fake_upstream::tls::load(fake_upstream::tls::TlsFiles::in_dir(fake.data_dir())).unwrap();
    let spool = fake.data_dir().join("relay-spool");
    let upstream = upstream_config(&fake, "smtp.163.com (fake)", "smtp.163.com");
    let mut config = RelayConfig {
        listen_tls: Some("127.0.0.1:0".parse().unwrap()),
        tls: Some(tls.server_config.clone()),
        max_message_size: 10 * 1024 * 1024,
        max_sessions: 50,
        auth_failure_delay: Duration::ZERO,
        transcripts: Some(spool.with_file_name("relay-transcripts")),
        ..RelayConfig::new(
            "relay.test",
            "127.0.0.1:0".parse().unwrap(),
            spool.clone(),
            upstream,
        )
    };
    tweak(&mut config);
    let relay = relay::start(config).await.unwrap();
    Setup { fake, relay, spool }
}

impl Setup {
    pub async fn client(&self) -> Client {
        let mut c = Client::connect(self.relay.addr()).await;
        assert!(c.reply().await.to_string().starts_with("220 relay.test"));
        c
    }

    pub async fn login(&self, code: &str) -> (Client, String) {
        let mut c = self.client().await;
        c.cmd("EHLO foxmail.example").await;
        assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
        c.cmd(&b64("alice@163.com")).await;
        let r = c.cmd(&b64(code)).await;
        (c, r)
    }

    pub async fn stop(self) {
        self.relay.shutdown().await;
        self.fake.shutdown().await;
    }
}

/// The relay's metrics page, fetched as a scraper would (python3's urllib over real HTTP).
pub async fn scrape_metrics(relay: &RelayHandle) -> String {
    fake_upstream::testing::python(
        "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
        vec![format!(
            "http://{}/metrics",
            relay.metrics_addr().expect("metrics configured")
        )],
    )
    .await
}

/// Snapshots a two-hop transcript (normalised) under the top-level `snapshots/`.
pub fn snapshot(name: &str, transcript: &str) {
    let text = fake_upstream::testing::normalize(transcript);
    insta::with_settings!({
        snapshot_path => "../../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, text);
    });
}
