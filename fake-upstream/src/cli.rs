//! The `fake-upstream` command line: parses flags into a [`Config`] and runs until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{Config, User};
use crate::error::Error;
use crate::persona::Persona;
use crate::server::FakeUpstream;

#[derive(Debug, Parser)]
#[command(
    name = "fake-upstream",
    version,
    about = "An offline smtp.163.com / smtp.qq.com / sink SMTP server with real TLS"
)]
pub struct Args {
    /// Persona: 163, qq, qq-mx, sink, or a path to a persona TOML file.
    #[arg(long)]
    pub persona: Option<String>,
    /// Plain listener with STARTTLS (like port 25).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Implicit-TLS listener (like port 465).
    #[arg(long)]
    pub listen_tls: Option<SocketAddr>,
    /// Where mailboxes, transcripts and the TLS files go.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A TOML config file (flags given here win over it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A user and authorization code, ADDRESS:CODE; repeatable; replaces the demo users.
    #[arg(long = "user", value_name = "ADDRESS:CODE")]
    pub users: Vec<String>,
    /// Switch every quota and rate limit off (soak and load runs).
    #[arg(long)]
    pub no_limits: bool,
    /// The persona's EHLO era (163: A, B or C).
    #[arg(long)]
    pub era: Option<String>,
    /// Advertise PIPELINING (163 era C does not).
    #[arg(long)]
    pub pipelining: bool,
    /// Worker threads. One by default: on a small machine the load generator needs the other
    /// cores, and a single-threaded event loop (as Postfix's smtp-sink) is fastest there.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Keep accepted messages and session transcripts on disk even for the sink persona.
    #[arg(long)]
    pub keep: bool,
    /// Present a certificate of this kind, made afresh in DATA_DIR/tls-KIND: private-ca
    /// (the default, from the fake's own CA), self-signed-ca (as `openssl req -x509` makes
    /// it), self-signed, wrong-name (for mail.internal.example) or expired (2019-2020).
    /// Try the relay's TLS policies on it, or `smtp-relay check-tls`.
    #[arg(long, value_name = "KIND")]
    pub cert: Option<crate::tls::CertKind>,
    /// Serve the web page and the HTTP API here (messages, transcripts, faults at run time).
    /// When the default address is taken, the server starts without it and says so.
    #[arg(long, value_name = "ADDR", default_value = crate::web::DEFAULT_LISTEN)]
    pub web: SocketAddr,
    /// Tally the messages of `smtp-relay load` runs (their integrity stamps) per run, for
    /// `GET /api/v1/load/<run>`: several generators of one run checked together.
    #[arg(long)]
    pub tally_load: bool,
    /// No web page and no HTTP API.
    #[arg(long, conflicts_with = "web_token")]
    pub no_web: bool,
    /// Want this token on every request to the page and the API (one is made up when the
    /// page listens on an address that is not loopback).
    #[arg(long, value_name = "TOKEN")]
    pub web_token: Option<String>,
}

impl Args {
    /// The configuration these flags describe.
    pub fn into_config(self) -> Result<Config, Error> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => {
                let persona = Persona::load(self.persona.as_deref().unwrap_or("163"))?;
                let mut c = Config::new(persona, "./fake-upstream-data");
                c.listen = SocketAddr::from(([127, 0, 0, 1], 1025));
                c.listen_tls = Some(SocketAddr::from(([127, 0, 0, 1], 1465)));
                c
            }
        };
        if let (Some(_), Some(p)) = (&self.config, &self.persona) {
            let users_were_demo = config.users == crate::config::demo_users(&config.persona);
            config.persona = Persona::load(p)?;
            if users_were_demo {
                config.users = crate::config::demo_users(&config.persona);
            }
        }
        if let Some(a) = self.listen {
            config.listen = a;
        }
        if let Some(a) = self.listen_tls {
            config.listen_tls = Some(a);
        }
        if let Some(d) = self.data_dir {
            config.data_dir = d;
        }
        if !self.users.is_empty() {
            config.users = self
                .users
                .iter()
                .map(|u| User::parse_flag(u))
                .collect::<Result<_, _>>()?;
        }
        if let Some(era) = self.era {
            if !config.persona.ehlo.contains_key(&era) {
                let eras: Vec<_> = config.persona.ehlo.keys().cloned().collect();
                return Err(Error::config(
                    format!("--era {era}"),
                    format!(
                        "persona {} has no such era; expected one of {}",
                        config.persona.name,
                        eras.join(", ")
                    ),
                ));
            }
            config.persona.era = era;
        }
        if self.pipelining {
            config.persona.pipelining = Some(true);
        }
        if self.keep {
            config.persona.rules.keep_messages = true;
            config.transcripts = true;
            config.write_transcripts = true;
        }
        if self.no_limits {
            config = config.no_limits();
        }
        config.tally_load |= self.tally_load;
        if let Some(kind) = self.cert {
            let files = crate::tls::TlsFiles::in_dir(
                &config.data_dir.join(format!("tls-{}", kind.as_str())),
            );
            crate::tls::generate_kind(&files, kind)?;
            config.tls_files = Some(files);
        }
        Ok(config)
    }
}

/// Builds the runtime the flags ask for and runs the server on it until Ctrl-C; what
/// `main` calls.
pub fn main_with(args: Args) -> ExitCode {
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("fake-upstream: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the server until Ctrl-C.
pub async fn run(args: Args) -> ExitCode {
    let web = (!args.no_web).then(|| {
        let explicit = args.web.to_string() != crate::web::DEFAULT_LISTEN;
        (args.web, args.web_token.clone(), explicit)
    });
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fake-upstream: {e}");
            return ExitCode::from(2);
        }
    };
    let handle = match FakeUpstream::start(config).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("fake-upstream: {e}");
            return ExitCode::from(1);
        }
    };
    let mut banner = format!("fake-upstream: persona {}\n", handle.persona_name());
    banner.push_str(&format!("  plain + STARTTLS  {}\n", handle.addr()));
    if let Some(a) = handle.tls_addr() {
        banner.push_str(&format!("  implicit TLS      {a}\n"));
    }
    banner.push_str(&format!(
        "  CA certificate    {}\n",
        handle.ca_path().display()
    ));
    banner.push_str(&format!(
        "  data directory    {}\n",
        handle.data_dir().display()
    ));
    for u in handle.users() {
        let note = if u.smtp { "" } else { "  (SMTP disabled)" };
        banner.push_str(&format!("  user {}  code {}{note}\n", u.address, u.code));
    }
    let mut page = None;
    if let Some((listen, token, explicit)) = web {
        let name = handle.persona_name().to_string();
        let mut config = crate::web::WebConfig::new(
            listen,
            vec![crate::web::Server {
                name,
                handle: handle.clone(),
            }],
        );
        config.token = token;
        match crate::web::Web::start(config).await {
            Ok(w) => {
                banner.push_str(&format!("  web page and API  {}\n", w.url()));
                page = Some(w);
            }
            Err(e) if !explicit => {
                banner.push_str(&format!(
                    "  web page          not started: {e} (--web ADDR for another address, --no-web for none)\n"
                ));
            }
            Err(e) => {
                eprintln!("fake-upstream: web page: {e}");
                handle.shutdown().await;
                return ExitCode::from(1);
            }
        }
    }
    banner.push_str("Ctrl-C (or SIGTERM) stops it.\n");
    smtp_net::say(&banner);
    smtp_net::shutdown_signal().await;
    drop(page);
    smtp_net::say("fake-upstream: shutting down\n");
    handle.shutdown().await;
    ExitCode::SUCCESS
}
