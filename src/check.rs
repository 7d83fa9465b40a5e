//! `smtp-relay check`: what the relay's parser makes of a command line, for people debugging
//! a mail client ("why does the relay refuse what Foxmail sends?").

use std::io::{self, Write};

use smtp_wire::Command;

/// Checks each line; writes `ok    <canonical form>` or `reply <code> <enhanced> <text>`.
/// Returns how many lines were refused.
pub fn check_lines(lines: impl Iterator<Item = String>, out: &mut impl Write) -> io::Result<usize> {
    let mut refused = 0;
    for line in lines {
        let line = line.strip_suffix('\r').unwrap_or(&line);
        match Command::parse(line.as_bytes()) {
            Ok(cmd) => writeln!(out, "ok    {}", redact(&cmd))?,
            Err(e) => {
                refused += 1;
                writeln!(out, "reply {}", e.reply())?;
            }
        }
    }
    Ok(refused)
}

/// The canonical form, with an AUTH initial response hidden: people paste real credentials.
fn redact(cmd: &Command) -> String {
    match cmd {
        Command::Auth {
            mechanism,
            initial: Some(_),
        } => format!("AUTH {mechanism} <initial response redacted>"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(lines: &[&str]) -> (String, usize) {
        let mut out = Vec::new();
        let n = check_lines(lines.iter().map(|s| s.to_string()), &mut out).unwrap();
        (String::from_utf8(out).unwrap(), n)
    }

    #[test]
    fn canonical_forms_and_replies() {
        let (out, refused) = check(&[
            "mail from: <Alice@Example.com> size=10",
            "RCPT TO:<chengli>",
        ]);
        assert_eq!(refused, 1);
        assert_eq!(
            out,
            "ok    MAIL FROM:<Alice@Example.com> SIZE=10\nreply 501 5.1.3 Bad recipient address syntax: no @ in address (expected local-part@domain)\n"
        );
    }

    #[test]
    fn auth_secrets_are_not_echoed() {
        let (out, _) = check(&["AUTH PLAIN AG1lQDE2My5jb20AcmlnaHQ="]);
        assert!(!out.contains("AG1l"), "{out}");
    }
}
