use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Mail, logs and transcripts are private to the user running the relay.
    smtp_net::files::private_umask();
    smtp_relay::cli::run(smtp_relay::cli::Cli::parse())
}
