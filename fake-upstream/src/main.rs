use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    fake_upstream::cli::main_with(fake_upstream::cli::Args::parse())
}
