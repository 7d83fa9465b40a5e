//! The `smtp-relay` binary as users run it.

use std::io::Write;
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
}

#[test]
fn check_reads_arguments_and_exits_1_on_a_refused_line() {
    let out = bin()
        .args(["check", "MAIL FROM: <a@b.example>", "RCPT TO:<bupt.edu.cn>"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("ok    MAIL FROM:<a@b.example>\n"),
        "{stdout}"
    );
    assert!(stdout.contains("reply 501 5.1.3"), "{stdout}");
}

#[test]
fn check_reads_standard_input_with_crlf() {
    let mut child = bin()
        .arg("check")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"EHLO [192.0.2.1]\r\nrcpt to:<Postmaster>\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ok    EHLO [192.0.2.1]\nok    RCPT TO:<Postmaster>\n"
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = bin().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
