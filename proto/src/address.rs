//! Addresses: the RFC 5321 `Mailbox` grammar, reverse and forward paths, and the leniency real
//! clients need (no angle brackets, source routes), with errors that name what is wrong.
//!
//! A [`Mailbox`] keeps its local part in *unquoted* form (`"john smith"` is stored as
//! `john smith`), so that all quoted forms of one mailbox compare equal (RFC 5321 4.1.2), and
//! [`Display`](fmt::Display) writes the minimal quoting back. Non-ASCII (RFC 6531 UTF-8) is
//! accepted by the grammar and reported by [`Mailbox::is_ascii`]; whether it is allowed depends
//! on SMTPUTF8 being in effect, which the session machine decides.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 4.5.3.1.1: maximum length of a local part, in octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2: maximum length of a domain, in octets.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.3: maximum length of a path including the angle brackets, in octets.
pub const MAX_PATH: usize = 256;

/// Why an address was refused. Each variant's message names the problem; the reply code
/// depends on the role (sender 501 5.1.7, recipient 501 5.1.3) and is chosen by the command
/// parser.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AddressError {
    /// Nothing where a mailbox was expected (`<>` for a recipient, or an empty argument).
    Empty,
    /// No `@` at all: `chengli`, `bupt.edu.cn`.
    MissingAt,
    /// Nothing before the `@`: `@163.com`.
    MissingLocalPart,
    /// Nothing after the `@`: `chengli@`.
    MissingDomain,
    /// A second unquoted `@`: `a@b@c`.
    MultipleAt,
    /// A dot at the start or end of an unquoted local part, or two dots in a row.
    LocalPartDots,
    /// A character that may not appear in an unquoted local part.
    LocalPartChar(char),
    /// A character that may not appear even inside a quoted local part.
    QuotedChar(char),
    /// A quoted local part without its closing quote.
    UnterminatedQuote,
    /// An empty label in the domain: `bob@.example.com`, `bob@example..com`.
    DomainEmptyLabel,
    /// A trailing dot: `bob@example.com.`.
    DomainTrailingDot,
    /// A label that starts or ends with a hyphen.
    DomainHyphen,
    /// A character that may not appear in a domain: `bob@exa_mple.com`.
    DomainChar(char),
    /// A malformed address literal: `[999.1.1.1]`, `[IPv6:zz::1]`, `[1.2.3]`.
    AddressLiteral,
    /// White space inside an address (outside quotes): `< >`, `<a b@x>`.
    Whitespace,
    /// An opening `<` without its `>`.
    UnclosedBracket,
    /// Text after the closing `>` that is not a parameter: `<a@x> <b@y>`, `<<a@x>>`.
    TrailingText,
    /// A source route (`@a,@b:`) that does not parse.
    SourceRoute,
    /// The local part is longer than 64 octets.
    LocalPartTooLong(usize),
    /// The domain is longer than 255 octets.
    DomainTooLong(usize),
    /// The path is longer than 256 octets.
    PathTooLong(usize),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty address"),
            Self::MissingAt => f.write_str("no @ in address (expected local-part@domain)"),
            Self::MissingLocalPart => f.write_str("nothing before the @ (missing local part)"),
            Self::MissingDomain => f.write_str("nothing after the @ (missing domain)"),
            Self::MultipleAt => f.write_str("more than one @ outside quotes"),
            Self::LocalPartDots => {
                f.write_str("local part starts or ends with a dot or has two dots in a row")
            }
            Self::LocalPartChar(c) => write!(f, "character {c:?} not allowed in local part"),
            Self::QuotedChar(c) => write!(f, "character {c:?} not allowed in quoted local part"),
            Self::UnterminatedQuote => f.write_str("unterminated quoted local part"),
            Self::DomainEmptyLabel => f.write_str("empty label in domain"),
            Self::DomainTrailingDot => f.write_str("domain ends with a dot"),
            Self::DomainHyphen => f.write_str("domain label starts or ends with a hyphen"),
            Self::DomainChar(c) => write!(f, "character {c:?} not allowed in domain"),
            Self::AddressLiteral => f.write_str("malformed address literal"),
            Self::Whitespace => f.write_str("white space in address"),
            Self::UnclosedBracket => f.write_str("missing closing >"),
            Self::TrailingText => f.write_str("unexpected text after the address"),
            Self::SourceRoute => f.write_str("malformed source route"),
            Self::LocalPartTooLong(n) => {
                write!(f, "local part is {n} octets, more than {MAX_LOCAL_PART}")
            }
            Self::DomainTooLong(n) => write!(f, "domain is {n} octets, more than {MAX_DOMAIN}"),
            Self::PathTooLong(n) => write!(f, "path is {n} octets, more than {MAX_PATH}"),
        }
    }
}

impl std::error::Error for AddressError {}

/// The part after the `@`: a domain name or an address literal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name, kept as the client wrote it (compare with [`Domain::eq_ignore_case`]).
    Name(String),
    /// `[192.0.2.1]`
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`
    Ipv6(Ipv6Addr),
}

impl Domain {
    /// Parses a domain name or an address literal, RFC 5321 4.1.2 / 4.1.3, with U-labels
    /// (non-ASCII) allowed; a caller that does not allow SMTPUTF8 checks [`Domain::is_ascii`].
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        parse_domain(s, DomainSyntax::Strict)
    }

    /// Parses the argument of HELO/EHLO, which is lenient about `_` (a common host-name habit,
    /// smtp-edge-cases 4) and strict about everything else, non-ASCII included (RFC 5321
    /// 4.1.2 wants a 501 for invalid characters in the client's name).
    pub fn parse_helo(s: &str) -> Result<Domain, AddressError> {
        parse_domain(s, DomainSyntax::Helo)
    }

    /// Domain names are case-insensitive; literals compare by value.
    pub fn eq_ignore_case(&self, other: &Domain) -> bool {
        match (self, other) {
            (Domain::Name(a), Domain::Name(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a == b,
        }
    }

    /// Whether the domain is plain ASCII (an IDN U-label needs SMTPUTF8).
    pub fn is_ascii(&self) -> bool {
        match self {
            Domain::Name(n) => n.is_ascii(),
            _ => true,
        }
    }

    fn encoded_len(&self) -> usize {
        match self {
            Domain::Name(n) => n.len(),
            other => other.to_string().len(),
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Ipv4(a) => write!(f, "[{a}]"),
            Domain::Ipv6(a) => write!(f, "[IPv6:{a}]"),
        }
    }
}

/// `local-part@domain`, RFC 5321 4.1.2.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// Unquoted form: the semantic value of the local part, case preserved (RFC 5321 2.4).
    local: String,
    domain: Domain,
}

impl Mailbox {
    /// Builds a mailbox from an unquoted local part and a domain, checking the length limits.
    pub fn new(local: impl Into<String>, domain: Domain) -> Result<Mailbox, AddressError> {
        let local = local.into();
        if local.is_empty() {
            return Err(AddressError::MissingLocalPart);
        }
        if let Some(c) = local.chars().find(|&c| !is_qtext_or_pair(c)) {
            return Err(AddressError::QuotedChar(c));
        }
        let mailbox = Mailbox { local, domain };
        mailbox.check_lengths()?;
        Ok(mailbox)
    }

    /// Parses a bare mailbox (no angle brackets): `alice@example.com`, `"john smith"@x`.
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        let (local, rest) = parse_local_part(s)?;
        let domain = match rest.strip_prefix('@') {
            Some("") => return Err(AddressError::MissingDomain),
            Some(d) => d,
            None => return Err(AddressError::MissingAt),
        };
        if domain.contains('@') && !domain.starts_with('[') {
            return Err(AddressError::MultipleAt);
        }
        let domain = Domain::parse(domain)?;
        let mailbox = Mailbox { local, domain };
        mailbox.check_lengths()?;
        Ok(mailbox)
    }

    /// The local part, unquoted.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// False when the local part or the domain holds UTF-8 beyond ASCII (needs SMTPUTF8).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// The same mailbox for delivery: local parts compared exactly (they may be
    /// case-sensitive), domains case-insensitively. Used to deliver duplicates once.
    pub fn same_mailbox(&self, other: &Mailbox) -> bool {
        self.local == other.local && self.domain.eq_ignore_case(&other.domain)
    }

    /// The local part as it goes on the wire: a dot-string when possible, else quoted.
    pub fn encoded_local_part(&self) -> String {
        if is_dot_string(&self.local) {
            self.local.clone()
        } else {
            let mut q = String::with_capacity(self.local.len() + 2);
            q.push('"');
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    q.push('\\');
                }
                q.push(c);
            }
            q.push('"');
            q
        }
    }

    fn check_lengths(&self) -> Result<(), AddressError> {
        let local_len = self.encoded_local_part().len();
        if local_len > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong(local_len));
        }
        let domain_len = self.domain.encoded_len();
        if domain_len > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong(domain_len));
        }
        let path_len = local_len + 1 + domain_len + 2;
        if path_len > MAX_PATH {
            return Err(AddressError::PathTooLong(path_len));
        }
        Ok(())
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.encoded_local_part(), self.domain)
    }
}

/// The argument of `MAIL FROM:`: a mailbox or the null path `<>` (bounces, RFC 5321 4.5.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    Null,
    Mailbox(Mailbox),
}

impl ReversePath {
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(m) => Some(m),
        }
    }

    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }
}

impl fmt::Display for ReversePath {
    /// The wire form, with angle brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// The argument of `RCPT TO:`: a mailbox, or `<Postmaster>` with no domain (RFC 5321 4.5.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `Postmaster` as the client spelled it (the keyword is case-insensitive).
    Postmaster(String),
    Mailbox(Mailbox),
}

impl ForwardPath {
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ForwardPath::Postmaster(_) => None,
            ForwardPath::Mailbox(m) => Some(m),
        }
    }

    pub fn is_ascii(&self) -> bool {
        self.mailbox().is_none_or(Mailbox::is_ascii)
    }

    /// Same delivery target (see [`Mailbox::same_mailbox`]).
    pub fn same_target(&self, other: &ForwardPath) -> bool {
        match (self, other) {
            (ForwardPath::Postmaster(_), ForwardPath::Postmaster(_)) => true,
            (ForwardPath::Mailbox(a), ForwardPath::Mailbox(b)) => a.same_mailbox(b),
            _ => false,
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster(p) => write!(f, "<{p}>"),
            ForwardPath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// Splits a `MAIL FROM:`/`RCPT TO:` argument into the path content and the parameter text.
/// `<...>` is matched respecting quotes; without brackets the path runs to the first space.
/// Returns `(content, bracketed, rest)`.
fn split_path(arg: &str) -> Result<(&str, &str), AddressError> {
    if let Some(inner) = arg.strip_prefix('<') {
        let end = find_path_end(inner)?;
        let content = &inner[..end];
        let rest = &inner[end + 1..];
        if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
            return Err(AddressError::TrailingText);
        }
        if content.len() + 2 > MAX_PATH {
            return Err(AddressError::PathTooLong(content.len() + 2));
        }
        Ok((content, rest))
    } else {
        // Lenient form without brackets (smtp-edge-cases 13): the path is the first word.
        let end = arg.find([' ', '\t']).unwrap_or(arg.len());
        let (content, rest) = arg.split_at(end);
        if content.contains(['<', '>']) {
            return Err(AddressError::TrailingText);
        }
        if content.len() + 2 > MAX_PATH {
            return Err(AddressError::PathTooLong(content.len() + 2));
        }
        Ok((content, rest))
    }
}

/// Index of the `>` that closes a path, skipping quoted strings.
fn find_path_end(s: &str) -> Result<usize, AddressError> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Ok(i),
            _ => {}
        }
        i += 1;
    }
    if quoted {
        Err(AddressError::UnterminatedQuote)
    } else {
        Err(AddressError::UnclosedBracket)
    }
}

/// Drops an RFC 5321 A-d-l source route (`@a,@b:`), checking that each hop is a domain.
fn strip_source_route(content: &str) -> Result<&str, AddressError> {
    if !content.starts_with('@') {
        return Ok(content);
    }
    let Some(colon) = content.find(':') else {
        // `@bupt.edu.cn`: a domain with no mailbox at all.
        return Err(AddressError::MissingLocalPart);
    };
    for hop in content[..colon].split(',') {
        let hop = hop.strip_prefix('@').ok_or(AddressError::SourceRoute)?;
        Domain::parse(hop).map_err(|_| AddressError::SourceRoute)?;
    }
    Ok(&content[colon + 1..])
}

/// Parses a reverse-path argument (`<>`, `<a@b>`, `a@b`, `<@r:a@b>`) and returns it with the
/// remaining parameter text.
pub fn parse_reverse_path(arg: &str) -> Result<(ReversePath, &str), AddressError> {
    let (content, rest) = split_path(arg)?;
    if content.is_empty() && arg.starts_with('<') {
        return Ok((ReversePath::Null, rest));
    }
    Ok((ReversePath::Mailbox(parse_path_mailbox(content)?), rest))
}

/// Parses a forward-path argument (`<a@b>`, `a@b`, `<Postmaster>`, `<@r:a@b>`) and returns it
/// with the remaining parameter text.
pub fn parse_forward_path(arg: &str) -> Result<(ForwardPath, &str), AddressError> {
    let (content, rest) = split_path(arg)?;
    if content.eq_ignore_ascii_case("postmaster") {
        return Ok((ForwardPath::Postmaster(content.to_string()), rest));
    }
    Ok((ForwardPath::Mailbox(parse_path_mailbox(content)?), rest))
}

/// A whole reverse path, as [`ReversePath`]'s `Display` writes it (`<>`, `<a@b>`): what a
/// record that stored one reads back. Text after the path is an error.
impl std::str::FromStr for ReversePath {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<ReversePath, AddressError> {
        whole(parse_reverse_path(s))
    }
}

/// A whole forward path, as [`ForwardPath`]'s `Display` writes it (`<a@b>`, `<Postmaster>`).
impl std::str::FromStr for ForwardPath {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<ForwardPath, AddressError> {
        whole(parse_forward_path(s))
    }
}

/// A path with nothing after it.
fn whole<T>(parsed: Result<(T, &str), AddressError>) -> Result<T, AddressError> {
    match parsed? {
        (path, "") => Ok(path),
        _ => Err(AddressError::TrailingText),
    }
}

fn parse_path_mailbox(content: &str) -> Result<Mailbox, AddressError> {
    if content.is_empty() {
        return Err(AddressError::Empty);
    }
    if content.trim().is_empty() {
        return Err(AddressError::Whitespace);
    }
    Mailbox::parse(strip_source_route(content)?)
}

/// RFC 5321 atext, plus UTF-8 beyond ASCII (RFC 6531 extends atext with UTF8-non-ascii).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Characters that can stand in a quoted local part, directly or as a quoted pair.
fn is_qtext_or_pair(c: char) -> bool {
    (' '..='~').contains(&c) || (!c.is_ascii() && !c.is_control())
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Parses the local part at the start of `s`, returning it unquoted and the rest (which
/// starts with `@` on success).
fn parse_local_part(s: &str) -> Result<(String, &str), AddressError> {
    if let Some(body) = s.strip_prefix('"') {
        let mut local = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    if local.is_empty() {
                        // `""@x`: RFC 5321 allows an empty quoted string, but a relay cannot
                        // deliver to it and upstreams refuse it.
                        return Err(AddressError::MissingLocalPart);
                    }
                    return Ok((local, &body[i + 1..]));
                }
                '\\' => match chars.next() {
                    Some((_, p)) if (' '..='~').contains(&p) => local.push(p),
                    Some((_, p)) => return Err(AddressError::QuotedChar(p)),
                    None => return Err(AddressError::UnterminatedQuote),
                },
                c if is_qtext_or_pair(c) => local.push(c),
                c => return Err(AddressError::QuotedChar(c)),
            }
        }
        return Err(AddressError::UnterminatedQuote);
    }
    let end = s.find('@').unwrap_or(s.len());
    let local = &s[..end];
    if local.is_empty() {
        return Err(if end == s.len() {
            AddressError::Empty
        } else {
            AddressError::MissingLocalPart
        });
    }
    if let Some(c) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(if c == ' ' || c == '\t' {
            AddressError::Whitespace
        } else {
            AddressError::LocalPartChar(c)
        });
    }
    if !is_dot_string(local) {
        return Err(AddressError::LocalPartDots);
    }
    Ok((local.to_string(), &s[end..]))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DomainSyntax {
    Strict,
    /// HELO/EHLO: `_` tolerated in labels, ASCII only.
    Helo,
}

fn parse_domain(s: &str, syntax: DomainSyntax) -> Result<Domain, AddressError> {
    if s.is_empty() {
        return Err(AddressError::MissingDomain);
    }
    if let Some(lit) = s.strip_prefix('[') {
        let inner = lit.strip_suffix(']').ok_or(AddressError::AddressLiteral)?;
        if let Some(v6) = inner
            .get(..5)
            .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
            .map(|_| &inner[5..])
        {
            return v6
                .parse::<Ipv6Addr>()
                .map(Domain::Ipv6)
                .map_err(|_| AddressError::AddressLiteral);
        }
        return inner
            .parse::<Ipv4Addr>()
            .map(Domain::Ipv4)
            .map_err(|_| AddressError::AddressLiteral);
    }
    if s.len() > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong(s.len()));
    }
    if s.ends_with('.') && s.len() > 1 && !s.ends_with("..") {
        return Err(AddressError::DomainTrailingDot);
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(AddressError::DomainEmptyLabel);
        }
        if let Some(c) = label.chars().find(|&c| {
            !(c.is_ascii_alphanumeric()
                || c == '-'
                || (c == '_' && syntax == DomainSyntax::Helo)
                || (!c.is_ascii() && c.is_alphanumeric() && syntax == DomainSyntax::Strict))
        }) {
            return Err(match c {
                '@' => AddressError::MultipleAt,
                ' ' | '\t' => AddressError::Whitespace,
                c => AddressError::DomainChar(c),
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::DomainHyphen);
        }
    }
    Ok(Domain::Name(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        Mailbox::parse(s).unwrap()
    }

    #[test]
    fn quoted_forms_are_the_same_mailbox_and_encode_minimally() {
        let a = mb("\"bob\"@example.org");
        assert_eq!(a, mb("bob@example.org"));
        assert_eq!(a.to_string(), "bob@example.org");
        assert_eq!(
            mb("\"john smith\"@x.org").to_string(),
            "\"john smith\"@x.org"
        );
        assert_eq!(mb(r#""a\"b\\c"@x.org"#).local_part(), r#"a"b\c"#);
        assert_eq!(mb(r#""a\"b\\c"@x.org"#).to_string(), r#""a\"b\\c"@x.org"#);
    }

    #[test]
    fn domain_is_after_the_last_unquoted_at() {
        let m = mb("\"@\"@example.com");
        assert_eq!(m.local_part(), "@");
        assert_eq!(m.domain(), &Domain::Name("example.com".into()));
    }

    #[test]
    fn literals_round_trip() {
        assert_eq!(mb("bob@[192.0.2.7]").to_string(), "bob@[192.0.2.7]");
        assert_eq!(
            mb("bob@[ipv6:2001:db8::7]").to_string(),
            "bob@[IPv6:2001:db8::7]"
        );
    }

    #[test]
    fn seed_cases_name_the_problem() {
        assert_eq!(Mailbox::parse("chengli"), Err(AddressError::MissingAt));
        assert_eq!(Mailbox::parse("chengli@"), Err(AddressError::MissingDomain));
        assert_eq!(Mailbox::parse("bupt.edu.cn"), Err(AddressError::MissingAt));
        assert_eq!(
            Mailbox::parse("@163.com"),
            Err(AddressError::MissingLocalPart)
        );
        assert_eq!(Mailbox::parse("a@b@c"), Err(AddressError::MultipleAt));
        assert!(AddressError::MissingAt.to_string().contains("no @"));
    }

    #[test]
    fn same_mailbox_ignores_domain_case_only() {
        assert!(mb("Bob@Example.ORG").same_mailbox(&mb("Bob@example.org")));
        assert!(!mb("Bob@example.org").same_mailbox(&mb("bob@example.org")));
    }

    #[test]
    fn helo_syntax_tolerates_underscore_only_there() {
        assert!(Domain::parse_helo("my_host.local").is_ok());
        assert_eq!(
            Domain::parse("my_host.local"),
            Err(AddressError::DomainChar('_'))
        );
    }

    #[test]
    fn paths_read_back_what_display_wrote() {
        for text in [
            "<>",
            "<a@b.example>",
            "<\"a b\"@example.com>",
            "<Bob.Smith@[192.0.2.1]>",
        ] {
            let p: ReversePath = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        for text in ["<Postmaster>", "<\"a\\\"b\"@example.com>", "<x@y.example>"] {
            let p: ForwardPath = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        assert_eq!("<>".parse::<ForwardPath>(), Err(AddressError::Empty));
        assert_eq!(
            "<a@x> SIZE=1".parse::<ReversePath>(),
            Err(AddressError::TrailingText)
        );
        assert_eq!(
            "<a@x> <b@y>".parse::<ForwardPath>(),
            Err(AddressError::TrailingText)
        );
    }
}
