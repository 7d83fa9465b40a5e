use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    smtp_relay::cli::run(smtp_relay::cli::Cli::parse())
}
