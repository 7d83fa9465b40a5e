//! The `smtp-relay` command line.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "smtp-relay",
    version,
    about = "An SMTP relay with its own conformance and load harness"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse SMTP command lines and print the canonical form the relay would send upstream,
    /// or the exact reply it would give for a bad line. Lines come from the arguments, or
    /// from standard input (one per line) when there are none.
    Check {
        /// Command lines, e.g. 'MAIL FROM: <alice@example.com> SIZE=100'.
        lines: Vec<String>,
    },
    /// Start the relay in front of a fake smtp.163.com, offline, ready for a mail client.
    Up(crate::up::UpArgs),
    /// Run the relay for real use, from a config file (see relay.example.toml).
    Serve {
        /// The relay's config file.
        #[arg(long)]
        config: std::path::PathBuf,
        /// Write the log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        /// Serve the counters in the Prometheus text format on this address (`GET
        /// /metrics`); overrides the config's `metrics`.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Replay scenario files (scripted client sessions, checks on what the upstream got)
    /// against smtp-relay and fake upstreams, or against another relay with --relay.
    Scenarios(crate::scenario::cli::ScenariosArgs),
    /// Load an SMTP server or relay and measure throughput and latency per phase
    /// (HdrHistogram; open loop corrects coordinated omission). --self measures our relay
    /// against a direct-to-sink run.
    Load(Box<crate::load::cli::LoadArgs>),
    /// Look at and act on the store-and-forward queue (works while the relay runs).
    Queue(crate::queue::admin::QueueArgs),
    /// Connect to an SMTP server as the relay would (every address, STARTTLS or implicit
    /// TLS) and print what it offers, the certificates it presents with their SHA-256
    /// fingerprints, each TLS policy's verdict, and the config lines to deliver there.
    /// Exit 0 verified, 1 answered but not verified, 2 unreachable.
    CheckTls(crate::check_tls::CheckTlsArgs),
}

/// Runs a parsed command line; the binary's `main` only parses arguments and calls this.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Up(args) => block_on(crate::up::run(args)),
        Command::Scenarios(args) => block_on(crate::scenario::cli::run(args)),
        Command::Queue(args) => block_on(crate::queue::admin::run(args)),
        Command::CheckTls(args) => block_on(crate::check_tls::run(args)),
        Command::Load(args) => {
            let threads = args.threads.unwrap_or(if args.self_test {
                std::thread::available_parallelism().map_or(2, |n| n.get())
            } else {
                1
            });
            match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(crate::load::cli::run(*args)),
                Err(e) => {
                    eprintln!("smtp-relay load: cannot start the runtime: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Serve {
            config,
            log_json,
            metrics,
        } => block_on(async move { crate::serve::run(&config, log_json, metrics).await }),
        Command::Check { lines } => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let result = if lines.is_empty() {
                let stdin = std::io::stdin();
                crate::check::check_lines(stdin.lock().lines().map_while(Result::ok), &mut out)
            } else {
                crate::check::check_lines(lines.into_iter(), &mut out)
            };
            let _ = out.flush();
            match result {
                Ok(0) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("smtp-relay check: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("smtp-relay: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}
