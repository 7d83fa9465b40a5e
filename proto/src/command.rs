//! Commands: the typed [`Command`], parsed from one line (CRLF removed) and encoded to the
//! exact wire form, and [`CommandError`], whose every variant says which reply it produces.
//!
//! Leniency (smtp-edge-cases B and E): verbs and keywords are case-insensitive, white space
//! around the colon of `MAIL FROM:` / `RCPT TO:` and between verb and argument is accepted,
//! angle brackets may be missing, trailing junk after an EHLO domain is ignored. Everything
//! accepted leniently is encoded canonically (`MAIL FROM:<a@b>`).

use std::fmt;

use crate::address::{
    AddressError, Domain, ForwardPath, ReversePath, parse_forward_path, parse_reverse_path,
};
use crate::auth::{Mechanism, SaslData};
use crate::params::{MailParams, ParamError, RcptParams};
use crate::reply::Reply;

/// The command verbs this crate knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Helo,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Bdat => "BDAT",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Quit => "QUIT",
            Verb::Vrfy => "VRFY",
            Verb::Expn => "EXPN",
            Verb::Help => "HELP",
            Verb::StartTls => "STARTTLS",
            Verb::Auth => "AUTH",
        }
    }

    /// Case-insensitive lookup.
    pub fn parse(word: &[u8]) -> Option<Verb> {
        const ALL: [Verb; 14] = [
            Verb::Helo,
            Verb::Ehlo,
            Verb::Mail,
            Verb::Rcpt,
            Verb::Data,
            Verb::Bdat,
            Verb::Rset,
            Verb::Noop,
            Verb::Quit,
            Verb::Vrfy,
            Verb::Expn,
            Verb::Help,
            Verb::StartTls,
            Verb::Auth,
        ];
        ALL.into_iter()
            .find(|v| v.as_str().as_bytes().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One SMTP command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// HELO domain: the argument as the client sent it (a domain or an address literal).
    Helo {
        domain: String,
    },
    Ehlo {
        domain: String,
    },
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    Data,
    /// BDAT size [LAST], RFC 3030.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    /// NOOP with its ignored argument, kept for transcripts.
    Noop {
        text: Option<String>,
    },
    Quit,
    Vrfy {
        arg: String,
    },
    Expn {
        arg: String,
    },
    Help {
        topic: Option<String>,
    },
    StartTls,
    /// AUTH mechanism [initial-response]; `=` on the wire is `Some(empty)`.
    Auth {
        mechanism: Mechanism,
        initial: Option<SaslData>,
    },
}

/// Why a command line was refused. [`CommandError::reply`] gives the reply it produces.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// An empty line: `500 5.5.2`.
    Empty,
    /// Not a verb this server knows, 8-bit verbs included: `500 5.5.2`.
    UnknownVerb,
    /// A NUL or other control byte in the line: `501 5.5.2`, never truncated at it.
    ControlByte(u8),
    /// Bytes that are not UTF-8 in the arguments: `501 5.5.2`.
    InvalidUtf8,
    /// An argument to a command that takes none (DATA, RSET, QUIT, STARTTLS): `501 5.5.4`.
    UnexpectedArgument(Verb),
    /// A required argument is missing: `501 5.5.4`.
    MissingArgument(Verb),
    /// `MAIL` not followed by `FROM:`, `RCPT` not by `TO:`, a bad BDAT size: `501 5.5.4`.
    Syntax(Verb, &'static str),
    /// A HELO/EHLO domain that is not a domain or an address literal: `501 5.5.2`.
    BadHelloDomain(AddressError),
    /// A bad reverse-path: `501 5.1.7`.
    Sender(AddressError),
    /// A bad forward-path: `501 5.1.3`.
    Recipient(AddressError),
    /// A malformed ESMTP parameter: `501 5.5.4`.
    Param(ParamError),
    /// An AUTH initial response that is not base64: `501 5.5.2`.
    BadBase64,
}

impl CommandError {
    /// The reply this error produces.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Empty => Reply::new(500, (5, 5, 2), "Error: empty command"),
            CommandError::UnknownVerb => {
                Reply::new(500, (5, 5, 2), "Error: command not recognized")
            }
            CommandError::ControlByte(b) => Reply::new(
                501,
                (5, 5, 2),
                format!("Error: control character 0x{b:02x} in command"),
            ),
            CommandError::InvalidUtf8 => {
                Reply::new(501, (5, 5, 2), "Error: invalid UTF-8 in command")
            }
            CommandError::UnexpectedArgument(v) => {
                Reply::new(501, (5, 5, 4), format!("Error: {v} takes no argument"))
            }
            CommandError::MissingArgument(v) => {
                Reply::new(501, (5, 5, 4), format!("Error: {v} needs an argument"))
            }
            CommandError::Syntax(v, what) => {
                Reply::new(501, (5, 5, 4), format!("Error: {v} syntax: {what}"))
            }
            CommandError::BadHelloDomain(e) => {
                Reply::new(501, (5, 5, 2), format!("Error: bad HELO/EHLO domain: {e}"))
            }
            CommandError::Sender(e) => {
                Reply::new(501, (5, 1, 7), format!("Bad sender address syntax: {e}"))
            }
            CommandError::Recipient(e) => {
                Reply::new(501, (5, 1, 3), format!("Bad recipient address syntax: {e}"))
            }
            CommandError::Param(e) => Reply::new(501, (5, 5, 4), format!("Error: {e}")),
            CommandError::BadBase64 => {
                Reply::new(501, (5, 5, 2), "Error: cannot decode base64 response")
            }
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reply().text())
    }
}

impl std::error::Error for CommandError {}

fn is_space(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `MAIL FROM:` / `RCPT TO:` keyword handling: `FROM`, optional white space, `:`, optional
/// white space (smtp-edge-cases 11, 12, 34). Returns the path argument.
fn after_keyword<'a>(
    verb: Verb,
    arg: &'a str,
    keyword: &'static str,
) -> Result<&'a str, CommandError> {
    let what = match verb {
        Verb::Mail => "expected FROM:<address>",
        _ => "expected TO:<address>",
    };
    let head = arg
        .get(..keyword.len())
        .ok_or(CommandError::Syntax(verb, what))?;
    if !head.eq_ignore_ascii_case(keyword) {
        return Err(CommandError::Syntax(verb, what));
    }
    let rest = arg[keyword.len()..].trim_start_matches([' ', '\t']);
    let rest = rest
        .strip_prefix(':')
        .ok_or(CommandError::Syntax(verb, what))?;
    let rest = rest.trim_start_matches([' ', '\t']);
    if rest.is_empty() {
        return Err(CommandError::MissingArgument(verb));
    }
    Ok(rest)
}

impl Command {
    /// Parses one command line, CRLF removed. Never panics, whatever the bytes.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        if line.is_empty() {
            return Err(CommandError::Empty);
        }
        let verb_end = line.iter().position(|&b| is_space(b)).unwrap_or(line.len());
        let verb = Verb::parse(&line[..verb_end]).ok_or(CommandError::UnknownVerb)?;
        if let Some(&b) = line
            .iter()
            .find(|&&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(CommandError::ControlByte(b));
        }
        let rest = std::str::from_utf8(&line[verb_end..]).map_err(|_| CommandError::InvalidUtf8)?;
        // `None`: no separator at all; `Some("")`: a separator with nothing after it, which
        // counts as an argument for commands that take none (smtp-edge-cases 53).
        let arg = (!rest.is_empty()).then(|| rest.trim_start_matches([' ', '\t']));
        let no_arg = |cmd: Command| match arg {
            None => Ok(cmd),
            Some(_) => Err(CommandError::UnexpectedArgument(verb)),
        };
        let need_arg = || match arg {
            Some(a) if !a.trim_end().is_empty() => Ok(a.trim_end_matches([' ', '\t'])),
            _ => Err(CommandError::MissingArgument(verb)),
        };
        match verb {
            Verb::Helo | Verb::Ehlo => {
                let a = need_arg()?;
                // Trailing junk after the domain is tolerated (smtp-edge-cases 5).
                let domain = a.split([' ', '\t']).next().unwrap_or_default();
                Domain::parse_helo(domain).map_err(CommandError::BadHelloDomain)?;
                let domain = domain.to_string();
                Ok(if verb == Verb::Helo {
                    Command::Helo { domain }
                } else {
                    Command::Ehlo { domain }
                })
            }
            Verb::Mail => {
                let a = after_keyword(verb, need_arg()?, "FROM")?;
                let (from, params) = parse_reverse_path(a).map_err(CommandError::Sender)?;
                let params = MailParams::parse(params).map_err(CommandError::Param)?;
                Ok(Command::Mail { from, params })
            }
            Verb::Rcpt => {
                let a = after_keyword(verb, need_arg()?, "TO")?;
                let (to, params) = parse_forward_path(a).map_err(CommandError::Recipient)?;
                let params = RcptParams::parse(params).map_err(CommandError::Param)?;
                Ok(Command::Rcpt { to, params })
            }
            Verb::Data => no_arg(Command::Data),
            Verb::Rset => no_arg(Command::Rset),
            Verb::Quit => no_arg(Command::Quit),
            Verb::StartTls => no_arg(Command::StartTls),
            Verb::Bdat => {
                let a = need_arg()?;
                let mut words = a.split([' ', '\t']).filter(|w| !w.is_empty());
                let size = words
                    .next()
                    .filter(|w| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|w| w.parse().ok())
                    .ok_or(CommandError::Syntax(verb, "expected BDAT <size> [LAST]"))?;
                let last = match words.next() {
                    None => false,
                    Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                    Some(_) => {
                        return Err(CommandError::Syntax(verb, "expected BDAT <size> [LAST]"));
                    }
                };
                if words.next().is_some() {
                    return Err(CommandError::Syntax(verb, "expected BDAT <size> [LAST]"));
                }
                Ok(Command::Bdat { size, last })
            }
            Verb::Noop => Ok(Command::Noop {
                text: arg.filter(|a| !a.is_empty()).map(str::to_string),
            }),
            Verb::Vrfy => Ok(Command::Vrfy {
                arg: need_arg()?.to_string(),
            }),
            Verb::Expn => Ok(Command::Expn {
                arg: need_arg()?.to_string(),
            }),
            Verb::Help => Ok(Command::Help {
                topic: arg
                    .map(|a| a.trim_end_matches([' ', '\t']))
                    .filter(|a| !a.is_empty())
                    .map(str::to_string),
            }),
            Verb::Auth => {
                let a = need_arg()?;
                let mut words = a.split([' ', '\t']).filter(|w| !w.is_empty());
                let mechanism = Mechanism::parse(words.next().unwrap_or_default());
                let initial = match words.next() {
                    None => None,
                    Some(ir) => Some(SaslData::decode_base64(ir).ok_or(CommandError::BadBase64)?),
                };
                if words.next().is_some() {
                    return Err(CommandError::Syntax(
                        verb,
                        "expected AUTH <mechanism> [initial-response]",
                    ));
                }
                Ok(Command::Auth { mechanism, initial })
            }
        }
    }

    pub fn verb(&self) -> Verb {
        match self {
            Command::Helo { .. } => Verb::Helo,
            Command::Ehlo { .. } => Verb::Ehlo,
            Command::Mail { .. } => Verb::Mail,
            Command::Rcpt { .. } => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Bdat { .. } => Verb::Bdat,
            Command::Rset => Verb::Rset,
            Command::Noop { .. } => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::Vrfy { .. } => Verb::Vrfy,
            Command::Expn { .. } => Verb::Expn,
            Command::Help { .. } => Verb::Help,
            Command::StartTls => Verb::StartTls,
            Command::Auth { .. } => Verb::Auth,
        }
    }

    /// Appends the wire form with its CRLF to `out`. A CR or LF inside a field (a command
    /// built from configuration rather than parsed) is written as a space, so one command can
    /// never become two on the wire.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let start = out.len();
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{self}");
        for b in &mut out[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        out.extend_from_slice(b"\r\n");
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }
}

impl fmt::Display for Command {
    /// The canonical wire form without CRLF. AUTH shows its initial response in base64, as
    /// it goes on the wire: transcripts must redact it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Helo { domain } => write!(f, "HELO {domain}"),
            Command::Ehlo { domain } => write!(f, "EHLO {domain}"),
            Command::Mail { from, params } => write!(f, "MAIL FROM:{from}{params}"),
            Command::Rcpt { to, params } => write!(f, "RCPT TO:{to}{params}"),
            Command::Data => f.write_str("DATA"),
            Command::Bdat { size, last: true } => write!(f, "BDAT {size} LAST"),
            Command::Bdat { size, last: false } => write!(f, "BDAT {size}"),
            Command::Rset => f.write_str("RSET"),
            Command::Noop { text: Some(t) } => write!(f, "NOOP {t}"),
            Command::Noop { text: None } => f.write_str("NOOP"),
            Command::Quit => f.write_str("QUIT"),
            Command::Vrfy { arg } => write!(f, "VRFY {arg}"),
            Command::Expn { arg } => write!(f, "EXPN {arg}"),
            Command::Help { topic: Some(t) } => write!(f, "HELP {t}"),
            Command::Help { topic: None } => f.write_str("HELP"),
            Command::StartTls => f.write_str("STARTTLS"),
            Command::Auth {
                mechanism,
                initial: Some(ir),
            } => write!(f, "AUTH {mechanism} {}", ir.encode_base64()),
            Command::Auth {
                mechanism,
                initial: None,
            } => write!(f, "AUTH {mechanism}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_forms_encode_canonically() {
        for input in [
            "MAIL FROM: <alice@example.com>",
            "mail from:<alice@example.com>",
            "MAIL FROM :<alice@example.com>",
            "MAIL FROM:alice@example.com",
            "MAIL  FROM:<alice@example.com>",
            "MAIL\tFROM:<alice@example.com>",
            "MAIL FROM:<@relay.example:alice@example.com>",
        ] {
            let cmd = Command::parse(input.as_bytes()).unwrap();
            assert_eq!(cmd.to_string(), "MAIL FROM:<alice@example.com>", "{input}");
        }
    }

    #[test]
    fn auth_initial_response_equals_sign_is_empty() {
        assert_eq!(
            Command::parse(b"AUTH PLAIN ="),
            Ok(Command::Auth {
                mechanism: Mechanism::Plain,
                initial: Some(SaslData::default())
            })
        );
        assert_eq!(
            Command::parse(b"AUTH PLAIN ####"),
            Err(CommandError::BadBase64)
        );
    }

    #[test]
    fn line_breaks_in_fields_cannot_inject_a_command() {
        let cmd = Command::Ehlo {
            domain: "x\r\nRCPT TO:<evil@x>".into(),
        };
        assert_eq!(cmd.to_bytes(), b"EHLO x  RCPT TO:<evil@x>\r\n");
    }

    #[test]
    fn bdat() {
        assert_eq!(
            Command::parse(b"BDAT 100 last"),
            Ok(Command::Bdat {
                size: 100,
                last: true
            })
        );
        assert!(Command::parse(b"BDAT x").is_err());
        assert!(Command::parse(b"BDAT 1 LAST more").is_err());
    }
}
