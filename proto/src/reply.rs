//! Replies: the [`Reply`] value and its wire form, a bounded streaming parser for multi-line
//! replies, and EHLO capabilities parsed into a typed set.
//!
//! Parsing is tolerant of what real servers send (a code with no text, `334 ` with an empty
//! challenge, `AUTH=LOGIN PLAIN` legacy lines, unknown keywords) and strict about what would
//! desynchronise a client (a line that does not start with a code, a continuation that changes
//! the code, an unbounded number of lines).

use std::fmt;

use crate::auth::Mechanism;

/// An enhanced status code, RFC 3463: `(class, subject, detail)`.
pub type Enhanced = (u8, u16, u16);

/// An SMTP reply: a code, an optional enhanced status code, and one or more text lines.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reply {
    pub code: u16,
    /// Written at the start of every line when present (RFC 2034 says each line carries it).
    pub enhanced: Option<Enhanced>,
    /// The text of each line, without code, separator or enhanced code. Never empty.
    pub lines: Vec<String>,
}

/// The first digit of a reply code, RFC 5321 4.2.1: what a client must decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Severity {
    /// 2yz
    Completion,
    /// 3yz: send more (354 after DATA, 334 during AUTH).
    Intermediate,
    /// 4yz: try again later.
    Transient,
    /// 5yz: do not repeat as is.
    Permanent,
}

impl Reply {
    /// A one-line reply with an enhanced status code: `Reply::new(250, (2, 0, 0), "OK")`.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A one-line reply without an enhanced status code (greetings, 334 challenges, 354).
    pub fn plain(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    /// The severity from the first digit; codes outside 2yz-5yz count as permanent, as RFC
    /// 5321 4.2.1 tells a client to treat what it does not understand.
    pub fn severity(&self) -> Severity {
        match self.code / 100 {
            2 => Severity::Completion,
            3 => Severity::Intermediate,
            4 => Severity::Transient,
            _ => Severity::Permanent,
        }
    }

    /// 2yz or 3yz.
    pub fn is_positive(&self) -> bool {
        matches!(
            self.severity(),
            Severity::Completion | Severity::Intermediate
        )
    }

    /// The text of all lines joined with a space, for logs and error messages.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// Appends the wire form (every line CRLF-terminated) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let last = self.lines.len().saturating_sub(1);
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // A CR or LF in a text (from a config file, say) must not end the reply early
            // and let the rest pass for another reply: it is written as a space.
            let cleaned;
            let line = if line.contains(['\r', '\n']) {
                cleaned = line.replace(['\r', '\n'], " ");
                &cleaned
            } else {
                line
            };
            // Writing to a Vec cannot fail.
            let _ = match self.enhanced {
                Some((c, s, d)) if line.is_empty() => write!(out, "{}{sep}{c}.{s}.{d}", self.code),
                Some((c, s, d)) => write!(out, "{}{sep}{c}.{s}.{d} {line}", self.code),
                None => write!(out, "{}{sep}{line}", self.code),
            };
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }

    /// Parses one complete reply (all its lines, CRLF-terminated) from `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Reply, ReplyError> {
        let mut parser = ReplyParser::default();
        let mut rest = bytes;
        loop {
            let Some(end) = memchr::memmem::find(rest, b"\r\n") else {
                return Err(ReplyError::Incomplete);
            };
            let (line, tail) = (&rest[..end], &rest[end + 2..]);
            if let Some(reply) = parser.push_line(line)? {
                return if tail.is_empty() {
                    Ok(reply)
                } else {
                    Err(ReplyError::TrailingData)
                };
            }
            rest = tail;
        }
    }
}

impl fmt::Display for Reply {
    /// The wire form without the final CRLF (lines separated by CRLF).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        f.write_str(text.strip_suffix("\r\n").unwrap_or(&text))
    }
}

/// Why reply bytes could not be parsed. A client that gets one of these cannot trust the
/// session any more and should close it (`451 4.4.0`-class failure for a relay).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// The line does not start with a three-digit code from 200 to 599 (or 1yz).
    BadCode(String),
    /// The code is followed by something other than `-`, a space or the end of the line.
    BadSeparator(String),
    /// A continuation line with a different code than the first line.
    CodeChanged { first: u16, line: String },
    /// More lines than [`ReplyParser::max_lines`].
    TooManyLines(usize),
    /// [`Reply::parse`] was given bytes that end before the last line.
    Incomplete,
    /// [`Reply::parse`] was given bytes after the last line.
    TrailingData,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::BadCode(l) => write!(f, "reply line without a valid code: {l:?}"),
            ReplyError::BadSeparator(l) => {
                write!(f, "reply code not followed by '-' or ' ': {l:?}")
            }
            ReplyError::CodeChanged { first, line } => {
                write!(f, "multi-line reply {first} continued with {line:?}")
            }
            ReplyError::TooManyLines(n) => write!(f, "reply longer than {n} lines"),
            ReplyError::Incomplete => f.write_str("reply ends before its last line"),
            ReplyError::TrailingData => f.write_str("data after the last line of the reply"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Assembles a multi-line reply from lines (CRLF removed), as the line decoder yields them.
#[derive(Clone, Debug)]
pub struct ReplyParser {
    /// Bound on the number of lines in one reply; an EHLO reply rarely has more than 20.
    pub max_lines: usize,
    code: Option<u16>,
    enhanced: Option<Enhanced>,
    lines: Vec<String>,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser {
            max_lines: 128,
            code: None,
            enhanced: None,
            lines: Vec::new(),
        }
    }
}

impl ReplyParser {
    /// Takes one line. Returns the reply when this was its last line. After an error the
    /// parser is reset; the caller should treat the connection as broken.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let result = self.push_inner(line);
        if !matches!(result, Ok(None)) {
            self.code = None;
            self.enhanced = None;
        }
        result
    }

    fn push_inner(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let lossy = || String::from_utf8_lossy(line).into_owned();
        let code = match line.get(..3) {
            Some(d) if d.iter().all(u8::is_ascii_digit) && (b'1'..=b'5').contains(&d[0]) => {
                u16::from(d[0] - b'0') * 100 + u16::from(d[1] - b'0') * 10 + u16::from(d[2] - b'0')
            }
            _ => {
                self.lines.clear();
                return Err(ReplyError::BadCode(lossy()));
            }
        };
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => {
                self.lines.clear();
                return Err(ReplyError::BadSeparator(lossy()));
            }
        };
        if let Some(first) = self.code.filter(|&c| c != code) {
            self.lines.clear();
            return Err(ReplyError::CodeChanged {
                first,
                line: lossy(),
            });
        }
        if self.lines.len() >= self.max_lines {
            self.lines.clear();
            return Err(ReplyError::TooManyLines(self.max_lines));
        }
        let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default());
        let text = if self.code.is_none() {
            self.code = Some(code);
            match split_enhanced(code, &text) {
                Some((e, rest)) => {
                    self.enhanced = Some(e);
                    rest.to_string()
                }
                None => text.into_owned(),
            }
        } else {
            match (self.enhanced, split_enhanced(code, &text)) {
                (Some(_), Some((_, rest))) => rest.to_string(),
                _ => text.into_owned(),
            }
        };
        self.lines.push(text);
        if !last {
            return Ok(None);
        }
        Ok(Some(Reply {
            code,
            enhanced: self.enhanced,
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

/// Splits a leading `x.y.z` enhanced code whose class matches the reply's first digit.
fn split_enhanced(code: u16, text: &str) -> Option<(Enhanced, &str)> {
    let (token, rest) = match text.split_once(' ') {
        Some((t, r)) => (t, r),
        None => (text, ""),
    };
    let mut parts = token.split('.');
    let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let num = |p: &str, max: usize| -> Option<u16> {
        (!p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let class = num(c, 1)?;
    if !matches!(class, 2 | 4 | 5) || class != code / 100 {
        return None;
    }
    Some(((class as u8, num(s, 3)?, num(d, 3)?), rest))
}

/// One EHLO keyword, typed where this crate acts on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Extension {
    Pipelining,
    /// SIZE with its optional fixed maximum (RFC 1870; `SIZE` alone or `SIZE 0` means none).
    Size(Option<u64>),
    EightBitMime,
    SmtpUtf8,
    EnhancedStatusCodes,
    StartTls,
    Chunking,
    BinaryMime,
    Dsn,
    /// AUTH with the mechanisms listed (from `AUTH ...` or the legacy `AUTH=...` line).
    Auth(Vec<Mechanism>),
    /// Any other keyword, with its parameters, as the server wrote it.
    Other {
        keyword: String,
        params: Vec<String>,
    },
}

impl Extension {
    /// Parses one EHLO line (after the code). Never fails: unknown lines become `Other`.
    pub fn parse(line: &str) -> Extension {
        let mut words = line.split_whitespace();
        let keyword = words.next().unwrap_or_default();
        let params: Vec<&str> = words.collect();
        let mechanisms = |first: Option<&str>| -> Vec<Mechanism> {
            first
                .into_iter()
                .chain(params.iter().copied())
                .filter(|m| !m.is_empty())
                .map(Mechanism::parse)
                .collect()
        };
        match keyword.to_ascii_uppercase().as_str() {
            "PIPELINING" => Extension::Pipelining,
            "SIZE" => Extension::Size(
                params
                    .first()
                    .and_then(|p| p.parse().ok())
                    .filter(|&n| n > 0),
            ),
            "8BITMIME" => Extension::EightBitMime,
            "SMTPUTF8" => Extension::SmtpUtf8,
            "ENHANCEDSTATUSCODES" => Extension::EnhancedStatusCodes,
            "STARTTLS" => Extension::StartTls,
            "CHUNKING" => Extension::Chunking,
            "BINARYMIME" => Extension::BinaryMime,
            "DSN" => Extension::Dsn,
            "AUTH" => Extension::Auth(mechanisms(None)),
            k if k.starts_with("AUTH=") => Extension::Auth(mechanisms(Some(&keyword[5..]))),
            _ => Extension::Other {
                keyword: keyword.to_string(),
                params: params.iter().map(|p| p.to_string()).collect(),
            },
        }
    }
}

impl fmt::Display for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Extension::Pipelining => f.write_str("PIPELINING"),
            Extension::Size(Some(n)) => write!(f, "SIZE {n}"),
            Extension::Size(None) => f.write_str("SIZE"),
            Extension::EightBitMime => f.write_str("8BITMIME"),
            Extension::SmtpUtf8 => f.write_str("SMTPUTF8"),
            Extension::EnhancedStatusCodes => f.write_str("ENHANCEDSTATUSCODES"),
            Extension::StartTls => f.write_str("STARTTLS"),
            Extension::Chunking => f.write_str("CHUNKING"),
            Extension::BinaryMime => f.write_str("BINARYMIME"),
            Extension::Dsn => f.write_str("DSN"),
            Extension::Auth(m) => {
                f.write_str("AUTH")?;
                m.iter().try_for_each(|m| write!(f, " {m}"))
            }
            Extension::Other { keyword, params } => {
                f.write_str(keyword)?;
                params.iter().try_for_each(|p| write!(f, " {p}"))
            }
        }
    }
}

/// What a server offered in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server's name from the first line.
    pub domain: String,
    pub extensions: Vec<Extension>,
}

impl Capabilities {
    /// Reads an EHLO reply: the first line names the server, each further line is a keyword.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let domain = reply
            .lines
            .first()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        Capabilities {
            domain,
            extensions: reply
                .lines
                .iter()
                .skip(1)
                .map(|l| Extension::parse(l))
                .collect(),
        }
    }

    /// The EHLO reply advertising these extensions, first line `domain greeting`.
    pub fn to_reply(&self, greeting: &str) -> Reply {
        let first = if greeting.is_empty() {
            self.domain.clone()
        } else {
            format!("{} {}", self.domain, greeting)
        };
        Reply {
            code: 250,
            enhanced: None,
            lines: std::iter::once(first)
                .chain(self.extensions.iter().map(Extension::to_string))
                .collect(),
        }
    }

    fn any(&self, f: impl Fn(&Extension) -> bool) -> bool {
        self.extensions.iter().any(f)
    }

    pub fn pipelining(&self) -> bool {
        self.any(|e| *e == Extension::Pipelining)
    }

    pub fn starttls(&self) -> bool {
        self.any(|e| *e == Extension::StartTls)
    }

    pub fn smtputf8(&self) -> bool {
        self.any(|e| *e == Extension::SmtpUtf8)
    }

    pub fn eightbitmime(&self) -> bool {
        self.any(|e| *e == Extension::EightBitMime)
    }

    pub fn chunking(&self) -> bool {
        self.any(|e| *e == Extension::Chunking)
    }

    /// RFC 3030 3: content that need not be lines, sent in BDAT only.
    pub fn binarymime(&self) -> bool {
        self.any(|e| *e == Extension::BinaryMime)
    }

    pub fn enhanced_status_codes(&self) -> bool {
        self.any(|e| *e == Extension::EnhancedStatusCodes)
    }

    pub fn dsn(&self) -> bool {
        self.any(|e| *e == Extension::Dsn)
    }

    /// Whether SIZE was advertised at all.
    pub fn size(&self) -> bool {
        self.any(|e| matches!(e, Extension::Size(_)))
    }

    /// The fixed maximum message size, when SIZE was advertised with one.
    pub fn size_limit(&self) -> Option<u64> {
        self.extensions.iter().find_map(|e| match e {
            Extension::Size(n) => *n,
            _ => None,
        })
    }

    /// Every mechanism from every AUTH line, once each, in the order first seen.
    pub fn auth_mechanisms(&self) -> Vec<Mechanism> {
        let mut out: Vec<Mechanism> = Vec::new();
        for e in &self.extensions {
            if let Extension::Auth(ms) = e {
                for m in ms {
                    if !out.contains(m) {
                        out.push(m.clone());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_enhanced_code_on_every_line() {
        let r = Reply {
            code: 250,
            enhanced: Some((2, 0, 0)),
            lines: vec!["a".into(), "b".into()],
        };
        assert_eq!(r.to_bytes(), b"250-2.0.0 a\r\n250 2.0.0 b\r\n");
        assert_eq!(Reply::parse(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn line_breaks_in_text_cannot_inject_a_reply() {
        let r = Reply::plain(250, "ok\r\n550 fake");
        assert_eq!(r.to_bytes(), b"250 ok  550 fake\r\n");
    }

    #[test]
    fn empty_challenge_is_code_and_one_space() {
        assert_eq!(Reply::plain(334, "").to_bytes(), b"334 \r\n");
        assert_eq!(Reply::parse(b"334 \r\n"), Ok(Reply::plain(334, "")));
        assert_eq!(Reply::parse(b"334\r\n"), Ok(Reply::plain(334, "")));
    }

    #[test]
    fn enhanced_code_of_another_class_is_text() {
        let r = Reply::parse(b"250 5.0.0 odd\r\n").unwrap();
        assert_eq!(r.enhanced, None);
        assert_eq!(r.lines, ["5.0.0 odd"]);
    }

    #[test]
    fn parser_rejects_code_change_and_garbage() {
        let mut p = ReplyParser::default();
        assert_eq!(p.push_line(b"250-a"), Ok(None));
        assert!(matches!(
            p.push_line(b"251 b"),
            Err(ReplyError::CodeChanged { .. })
        ));
        assert!(matches!(p.push_line(b"hello"), Err(ReplyError::BadCode(_))));
        assert!(matches!(
            p.push_line(b"250x"),
            Err(ReplyError::BadSeparator(_))
        ));
        assert!(matches!(p.push_line(b"650 x"), Err(ReplyError::BadCode(_))));
    }

    #[test]
    fn parser_bounds_lines() {
        let mut p = ReplyParser {
            max_lines: 3,
            ..ReplyParser::default()
        };
        for _ in 0..3 {
            assert_eq!(p.push_line(b"250-x"), Ok(None));
        }
        assert_eq!(p.push_line(b"250 x"), Err(ReplyError::TooManyLines(3)));
    }
}
