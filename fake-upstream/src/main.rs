use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    fake_upstream::cli::run(fake_upstream::cli::Args::parse()).await
}
