use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Mailboxes, raw copies and transcripts are private to the user running the fake.
    smtp_net::files::private_umask();
    fake_upstream::cli::main_with(fake_upstream::cli::Args::parse())
}
