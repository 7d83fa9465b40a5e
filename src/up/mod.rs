//! `smtp-relay up`: the offline developer setup in one command. The fake 163 (or QQ) upstream
//! and the relay in front of it, in one process, TLS on both hops from one generated CA; with
//! the 163 persona also a fake qq.com MX, and the route that sends qq.com recipients there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fake_upstream::tls::TlsFiles;
use fake_upstream::{Config as FakeConfig, FakeUpstream, Persona, User};

use crate::relay::{self, AuthMode, RelayConfig};

mod web;
use crate::upstream::{Timeouts, TlsMode, UpstreamConfig};
pub use web::{RelayPage, relay_id};

/// The flags of `up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Everything goes here: ca.pem, the relay's spool/, the upstream's mailboxes/.
    #[arg(long, default_value = "./smtp-relay-data")]
    pub data_dir: PathBuf,
    /// The relay's plain listener (STARTTLS offered).
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub listen: SocketAddr,
    /// The relay's implicit-TLS listener.
    #[arg(long, default_value = "127.0.0.1:2465")]
    pub listen_tls: SocketAddr,
    /// The fake upstream's plain listener.
    #[arg(long, default_value = "127.0.0.1:1025")]
    pub upstream_listen: SocketAddr,
    /// The fake upstream's implicit-TLS listener (the relay delivers there).
    #[arg(long, default_value = "127.0.0.1:1465")]
    pub upstream_listen_tls: SocketAddr,
    /// The upstream persona.
    #[arg(long, default_value = "163", value_parser = ["163", "qq"])]
    pub persona: String,
    /// The fake qq.com MX's listener (plain + STARTTLS), the route for qq.com recipients
    /// (with the 163 persona).
    #[arg(long, default_value = "127.0.0.1:1026")]
    pub qq_listen: SocketAddr,
    /// No fake qq.com MX and no qq.com route: every recipient goes to the one upstream.
    #[arg(long)]
    pub no_qq: bool,
    /// A user of the upstream, ADDRESS:CODE; repeatable; replaces the demo accounts.
    #[arg(long = "user", value_name = "ADDRESS:CODE")]
    pub users: Vec<String>,
    /// Switch the upstream's quotas and rate limits off.
    #[arg(long)]
    pub no_limits: bool,
    /// Store and forward: clients authenticate against the relay (the demo or --user
    /// accounts), every message is queued durably before its 250, and delivered (with the
    /// same accounts' codes) from `<data-dir>/queue`, retried when the upstream fails.
    #[arg(long)]
    pub queue: bool,
    /// Serve the relay's counters in the Prometheus text format here (`GET /metrics`).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Write the relay's log (`<data-dir>/log/relay.log`) as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// The web page and HTTP API: every message the fakes accepted, decoded, with its
    /// transcript and the relay's record; faults and quotas at run time. When the default
    /// address is taken, `up` starts without the page and says so.
    #[arg(long, value_name = "ADDR", default_value = fake_upstream::web::DEFAULT_LISTEN)]
    pub web: SocketAddr,
    /// No web page and no HTTP API.
    #[arg(long, conflicts_with = "web_token")]
    pub no_web: bool,
    /// Want this token on every request to the page (one is made up when --web is not a
    /// loopback address).
    #[arg(long, value_name = "TOKEN")]
    pub web_token: Option<String>,
}

/// What `up` started, for the banner and for tests.
pub struct Up {
    pub fake: fake_upstream::Handle,
    /// The fake qq.com MX that the `qq.com` route delivers to.
    pub qq: Option<fake_upstream::Handle>,
    pub relay: relay::RelayHandle,
    /// The file mail clients trust: the relay's own CA.
    pub ca: PathBuf,
    pub ca_until: chrono::DateTime<chrono::Utc>,
    /// Made anew at this start (first start, or near expiry).
    pub ca_renewed: bool,
    /// The fake upstreams' CA: the relay's own business, not for mail clients.
    pub upstream_ca: PathBuf,
    pub spool: PathBuf,
    pub log: PathBuf,
    pub transcripts: PathBuf,
    pub mailboxes: PathBuf,
    /// The queue, in store-and-forward mode.
    pub queue: Option<PathBuf>,
    /// The web page, unless `--no-web` (or its default address was taken: `web_note`).
    pub web: Option<fake_upstream::web::Web>,
    /// Why there is no web page, when `up` could not start it on its default address.
    pub web_note: Option<String>,
}

/// Starts the fake upstream and the relay.
pub async fn start(args: &UpArgs) -> Result<Up, String> {
    let data = &args.data_dir;
    smtp_net::files::private_dir(data).map_err(|e| format!("{}: {e}", data.display()))?;
    // Two CAs: the fake upstreams' (its leaf names smtp.163.com and smtp.qq.com; only the
    // relay trusts it) and the relay's own for mail clients (local names only, short-lived).
    let files = TlsFiles::in_dir(&data.join("upstream"));
    smtp_net::files::private_dir(&data.join("upstream"))
        .map_err(|e| format!("{}: {e}", data.display()))?;
    let tls = fake_upstream::tls::load_or_generate(files.clone()).map_err(|e| e.to_string())?;
    let client_tls = crate::local_ca::load_or_renew(data, "localhost", chrono::Utc::now())?;

    let persona = Persona::load(&args.persona).map_err(|e| e.to_string())?;
    let mut fake = FakeConfig::new(persona, data.join("upstream"));
    fake.listen = args.upstream_listen;
    fake.listen_tls = Some(args.upstream_listen_tls);
    fake.tls_files = Some(files.clone());
    fake.tally_load = true;
    if !args.users.is_empty() {
        fake.users = args
            .users
            .iter()
            .map(|u| User::parse_flag(u))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
    }
    if args.no_limits {
        fake = fake.no_limits();
    }
    // The relay stays under the fake's limit on connections from one address (163's
    // `421 HL:ICC`), as it should under the real one's.
    let upstream_max_sessions = fake.persona.limits.connections_per_ip.map(|n| n as usize);
    let fake = FakeUpstream::start(fake).await.map_err(|e| e.to_string())?;
    let upstream_tls = fake.tls_addr().expect("configured above");
    let server_name = if args.persona == "qq" {
        "smtp.qq.com"
    } else {
        "smtp.163.com"
    };

    let spool = data.join("spool");
    let upstream = UpstreamConfig {
        name: format!("{server_name} (fake, {upstream_tls})"),
        addr: upstream_tls.to_string(),
        server_name: server_name.into(),
        tls: TlsMode::Implicit,
        tls_policy: crate::upstream_tls::TlsPolicy::Verify,
        tls_config: Some(crate::upstream_tls::verify_ca_pem(
            &tls.files.ca.display().to_string(),
            &tls.ca_pem,
        )?),
        config_at: "smtp-relay up".into(),
        helo_name: "localhost".into(),
        credentials: None,
        timeouts: Timeouts {
            command: Duration::from_secs(60),
            ..Timeouts::default()
        },
        transcript: true,
        bdat: Some(crate::upstream::BDAT_CHUNK),
    };
    let (qq, routes) = qq_mx(args, data, &files, &upstream).await?;
    let mut config = RelayConfig {
        routes,
        listen_tls: Some(args.listen_tls),
        tls: Some(client_tls.server_config.clone()),
        client_trust_file: Some(client_tls.ca.clone()),
        auth: AuthMode::Passthrough,
        transcripts: Some(data.join("transcripts")),
        ..RelayConfig::new("localhost", args.listen, spool.clone(), upstream)
    };
    config.metrics = args.metrics;
    config.upstream_max_sessions = upstream_max_sessions;
    let queue_dir = args.queue.then(|| data.join("queue"));
    if let Some(dir) = &queue_dir {
        queue_mode(&mut config, &fake, dir);
    }
    let relay = relay::start(config)
        .await
        .map_err(|e| format!("relay: {e}"))?;
    let (web, web_note) = start_web(args, &fake, qq.as_ref(), &relay, data).await?;
    Ok(Up {
        web,
        web_note,
        queue: queue_dir,
        ca: client_tls.ca.clone(),
        ca_until: client_tls.not_after,
        ca_renewed: client_tls.renewed,
        upstream_ca: tls.files.ca.clone(),
        mailboxes: fake.data_dir().join("mailboxes"),
        log: data.join("log").join("relay.log"),
        transcripts: data.join("transcripts"),
        fake,
        qq,
        relay,
        spool,
    })
}

/// The web page over the fakes, with the relay's view beside it.
async fn start_web(
    args: &UpArgs,
    fake: &fake_upstream::Handle,
    qq: Option<&fake_upstream::Handle>,
    relay: &relay::RelayHandle,
    data: &std::path::Path,
) -> Result<(Option<fake_upstream::web::Web>, Option<String>), String> {
    use fake_upstream::web::{Server, Web, WebConfig};
    if args.no_web {
        return Ok((None, None));
    }
    let mut servers = vec![Server {
        name: args.persona.clone(),
        handle: fake.clone(),
    }];
    if let Some(mx) = qq {
        servers.push(Server {
            name: "qq-mx".into(),
            handle: mx.clone(),
        });
    }
    let mut config = WebConfig::new(args.web, servers);
    config.token = args.web_token.clone();
    config.relay = Some(std::sync::Arc::new(RelayPage {
        relay: relay.clone(),
        log: data.join("log").join("relay.log"),
    }));
    match Web::start(config).await {
        Ok(w) => Ok((Some(w), None)),
        Err(e) if args.web.to_string() == fake_upstream::web::DEFAULT_LISTEN => Ok((
            None,
            Some(format!(
                "not started: {e} (--web ADDR for another address, --no-web for none)"
            )),
        )),
        Err(e) => Err(format!("web page: {e}")),
    }
}

/// The fake qq.com MX beside the fake 163 (unless `--no-qq` or another persona), and the
/// route that sends qq.com recipients to it: STARTTLS, no AUTH, as an MTA delivers.
async fn qq_mx(
    args: &UpArgs,
    data: &std::path::Path,
    files: &TlsFiles,
    upstream: &UpstreamConfig,
) -> Result<(Option<fake_upstream::Handle>, Vec<crate::route::Route>), String> {
    // Several domains out of the box: qq.com recipients go to a fake qq.com MX (STARTTLS, no
    // AUTH: the relay delivers as an MTA does), the rest to the fake 163.
    let qq = if args.persona == "163" && !args.no_qq {
        let persona = Persona::load("qq-mx").map_err(|e| e.to_string())?;
        let mut mx = FakeConfig::new(persona, data.join("upstream-qq"));
        mx.listen = args.qq_listen;
        mx.listen_tls = None;
        mx.tls_files = Some(files.clone());
        if args.no_limits {
            mx = mx.no_limits();
        }
        Some(
            FakeUpstream::start(mx)
                .await
                .map_err(|e| format!("fake qq.com MX: {e}"))?,
        )
    } else {
        None
    };
    let routes = match &qq {
        Some(mx) => vec![crate::route::Route {
            label: "qq".into(),
            domains: vec!["qq.com".into()],
            upstream: UpstreamConfig {
                name: format!("mx1.qq.com (fake, {})", mx.addr()),
                addr: mx.addr().to_string(),
                server_name: "localhost".into(),
                tls: TlsMode::StartTls,
                credentials: None,
                ..upstream.clone()
            },
            passthrough: false,
            queue: false,
            max_sessions: None,
        }],
        None => Vec::new(),
    };
    Ok((qq, routes))
}

/// `--queue`: store and forward, the relay checking the fake's accounts itself and keeping
/// their codes to deliver with (the accounts are the fake's own, so both agree).
fn queue_mode(config: &mut RelayConfig, fake: &fake_upstream::Handle, dir: &std::path::Path) {
    // The relay checks the accounts itself and keeps their codes to deliver with: the
    // accounts are the fake's own, so both agree.
    let accounts = fake.smtp_accounts();
    config.auth = AuthMode::Users(std::sync::Arc::new(crate::users::Users::from_passwords(
        accounts.iter().map(|(a, c)| (a.as_str(), c.as_str())),
    )));
    config.default_queue = true;
    config.queue = Some(relay::QueueSettings {
        dir: dir.to_path_buf(),
        retry: crate::queue::deliver::Retry {
            first: Duration::from_secs(30),
            max: Duration::from_secs(600),
            ..crate::queue::deliver::Retry::default()
        },
        concurrency: 4,
        tick: Duration::from_secs(1),
        secrets: crate::queue::deliver::secrets_of(&accounts),
        route_limits: Default::default(),
    });
}

/// The banner: addresses, CA, accounts, and commands to paste. The message carries a From
/// header equal to the sender: 163 refuses anything else (`554 DT:SUM`).
pub fn banner(up: &Up) -> String {
    let relay = up.relay.addr();
    let relay_tls = up
        .relay
        .tls_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let ca = up.ca.display();
    let mut s = format!(
        "smtp-relay up: the relay in front of a fake {persona} upstream, offline\n\
         \x20 relay       {relay} (plain + STARTTLS), {relay_tls} (implicit TLS)\n\
         \x20 upstream    {persona} persona on {up_plain} (plain + STARTTLS), {up_tls} (implicit TLS; the relay uses it)\n\
         \x20 CA          {ca}  (trust this one in mail clients: it vouches for localhost, 127.0.0.1 and ::1 only; valid until {until}{renewed})\n\
         \x20 upstream CA {upstream_ca}  (the relay verifies the fake upstreams with it; not for mail clients)\n\
         \x20 spool       {spool}\n\
         \x20 log         {log}\n\
         \x20 transcripts {transcripts}\n\
         \x20 mailboxes   {mailboxes}\n",
        persona = up.fake.persona_name(),
        until = up.ca_until.format("%Y-%m-%d"),
        renewed = if up.ca_renewed {
            "; new: mail clients must trust this file again"
        } else {
            ""
        },
        upstream_ca = up.upstream_ca.display(),
        up_plain = up.fake.addr(),
        up_tls = up
            .fake
            .tls_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        spool = up.spool.display(),
        log = up.log.display(),
        transcripts = up.transcripts.display(),
        mailboxes = up.mailboxes.display(),
    );
    if let Some(mx) = &up.qq {
        s.push_str(&format!(
            "  route       qq.com -> fake qq.com MX on {} (plain + STARTTLS; mailboxes {})\n",
            mx.addr(),
            mx.data_dir().join("mailboxes").display()
        ));
    }
    match (&up.web, &up.web_note) {
        (Some(w), _) => s.push_str(&format!(
            "  web page    {}  (every message the fakes accepted, decoded, with its transcript; faults at run time; API under /api/v1)\n",
            w.url()
        )),
        (None, Some(note)) => s.push_str(&format!("  web page    {note}\n")),
        (None, None) => {}
    }
    if let Some(q) = &up.queue {
        s.push_str(&format!(
            "  queue       {}  (store and forward: 250 once queued, delivered and retried from here)\n",
            q.display()
        ));
    }
    for u in up.fake.users() {
        let note = if u.smtp { "" } else { "  (SMTP disabled)" };
        s.push_str(&format!(
            "  account     {}  code {}{note}\n",
            u.address, u.code
        ));
    }
    if let Some(u) = up.fake.users().iter().find(|u| u.smtp) {
        let to = up
            .fake
            .users()
            .iter()
            .find(|o| o.address != u.address)
            .map(|o| o.address.clone())
            .unwrap_or_else(|| u.address.clone());
        s.push_str(&format!(
            "Send a message through the relay:\n\
             \x20 swaks --server {relay} --tls --tls-verify --tls-ca-path {ca} --auth LOGIN \\\n\
             \x20       --auth-user {user} --auth-password {code} --from {user} --to {to} --header 'Subject: hello'\n\
             \x20 printf 'From: {user}\\r\\nTo: {to}\\r\\nSubject: hello\\r\\n\\r\\nHi.\\r\\n' | curl --url smtp://localhost:{port} --ssl-reqd \\\n\
             \x20       --cacert {ca} --user {user}:{code} --mail-from {user} --mail-rcpt {to} --upload-file -\n",
            user = u.address,
            code = u.code,
            port = relay.port(),
        ));
    }
    if let Some(mx) = &up.qq
        && let Some(friend) = mx.users().iter().filter(|u| u.smtp).nth(1)
    {
        s.push_str(&format!(
            "Several domains: add --to {} (swaks) or --mail-rcpt {} (curl); the relay routes it to the fake qq.com MX.\n",
            friend.address, friend.address
        ));
    }
    s.push_str("Ctrl-C (or SIGTERM) stops them all.\n");
    s
}

/// Runs `up` until Ctrl-C.
pub async fn run(args: UpArgs) -> std::process::ExitCode {
    let _log = match crate::log::init(&args.data_dir.join("log"), args.log_json) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("smtp-relay up: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let up = match start(&args).await {
        Ok(up) => up,
        Err(e) => {
            eprintln!("smtp-relay up: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    smtp_net::say(&banner(&up));
    smtp_net::shutdown_signal().await;
    smtp_net::say("smtp-relay up: shutting down\n");
    up.relay.shutdown().await;
    up.fake.shutdown().await;
    if let Some(mx) = &up.qq {
        mx.shutdown().await;
    }
    std::process::ExitCode::SUCCESS
}
