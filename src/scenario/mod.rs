//! Scenarios: scripted SMTP sessions replayed against a relay and fake upstreams, with
//! checks on both sides. The format is documented in `scenarios/README.md`; this module holds
//! its types, `parse` reads it ([`Scenario::parse`]), `text` writes it back
//! ([`Scenario::to_text`], used to save a shrunk property-test case), `faults` reads and
//! writes fault lines, and [`run`] replays it.

pub mod baseline;
pub mod cli;
pub mod coverage;
pub mod mutant;
mod parse;
pub mod report;
pub mod run;
mod text;

pub use fake_upstream::faults::{fault_text, parse_duration, parse_fault};
use text::*;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_upstream::{Fault, User};

pub use run::{Options, Outcome, Target, run_all, run_one};

/// One scenario file.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// The file stem (`seed-foxmail-gb2312`).
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    /// `portable`: depends on no policy of smtp-relay's own, so it also runs against other
    /// relays (`--relay`).
    pub tags: Vec<String>,
    /// EHLO keywords the relay must advertise (`requires: PIPELINING`); without them the
    /// scenario is skipped, saying which is missing.
    pub requires: Vec<String>,
    /// The numbered cases of `smtp-edge-cases.md` it tests (`covers: 70 71`), for
    /// `--coverage`.
    pub covers: Vec<u32>,
    /// The whole scenario must finish within this (default 30 s).
    pub timeout: Duration,
    /// Against another relay: how long the upstream must stay quiet before the checks run
    /// (`settle: 5s`; default the run's `--settle`).
    pub settle: Option<Duration>,
    /// The default route's fake upstream.
    pub upstream: Upstream,
    /// Other routes, each with its own fake upstream.
    pub routes: Vec<RouteSetup>,
    /// Relay settings (`relay: key=value ...`), applied in order.
    pub relay: Vec<(String, String)>,
    pub steps: Vec<Line<Step>>,
    pub checks: Vec<Line<Check>>,
}

/// A parsed item and the line it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Line<T> {
    pub line: usize,
    pub item: T,
}

/// A fake upstream: its persona and how it is set up.
#[derive(Clone, Debug, PartialEq)]
pub struct Upstream {
    /// `163`, `qq`, `qq-mx`, `sink`, or a persona file (relative to the scenario).
    pub persona: String,
    pub era: Option<String>,
    pub pipelining: Option<bool>,
    /// EHLO keywords the fake does not offer (`upstream-without: 8BITMIME`).
    pub without: Vec<String>,
    pub no_limits: bool,
    /// `None`: the persona's demo users.
    pub users: Option<Vec<User>>,
    pub faults: Vec<Fault>,
    /// How the relay reaches it: `implicit` (default), `starttls` or `none`.
    pub tls: String,
    /// The fake's certificate (`upstream-cert:`); `None`: the harness's private CA.
    pub cert: Option<fake_upstream::tls::CertKind>,
    /// How the relay checks it (`upstream-tls-policy:`), e.g. `fingerprint key`.
    pub tls_policy: Option<String>,
    /// The persona's limits changed for this scenario (`upstream-limit: max_recipients=3`).
    pub limits: Vec<(String, String)>,
}

impl Upstream {
    fn new(persona: &str) -> Upstream {
        Upstream {
            persona: persona.to_string(),
            era: None,
            pipelining: None,
            without: Vec::new(),
            no_limits: false,
            users: None,
            faults: Vec::new(),
            tls: "implicit".into(),
            cert: None,
            tls_policy: None,
            limits: Vec::new(),
        }
    }
}

/// `route NAME: DOMAIN... -> PERSONA`
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSetup {
    pub name: String,
    pub domains: Vec<String>,
    pub upstream: Upstream,
}

/// A client step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Connect to the relay's plain listener, or with `tls` to its implicit-TLS listener.
    Connect {
        tls: bool,
    },
    /// Bytes to send (a `C:` line with its CRLF, or `raw:` bytes). Consecutive sends go out
    /// in one write: a pipelined group.
    Send(Vec<u8>),
    /// Send what is buffered now (separates two writes).
    Flush,
    /// Expect one reply.
    Expect(ExpectReply),
    /// Expect the server to close the connection (after any replies already expected).
    Close,
    Sleep(Duration),
    /// `C: STARTTLS`, expect 220, then the TLS handshake.
    StartTls,
    /// The TLS handshake, now.
    Tls,
    /// The AUTH exchange; the final reply is the next `S:`.
    Auth {
        mechanism: String,
        user: String,
        secret: String,
    },
    /// A message file from `scenarios/messages/`, sent as DATA content: CRLF line ends,
    /// dot-stuffed, then `.CRLF`.
    Message(PathBuf),
    /// A generated message of this many octets (headers, then 76-character lines of text),
    /// sent as DATA content like `message:`.
    GeneratedMessage(usize),
    /// One BDAT chunk (RFC 3030): `BDAT <size>` (with ` LAST` when `last`) and the octets,
    /// the size counted by the runner. Against another relay the scenario's token goes first
    /// in a message's first chunk (and is counted in its size).
    Bdat {
        content: Vec<u8>,
        last: bool,
    },
    /// A whole message in BDAT chunks of at most `chunk` octets (one chunk when `None`), the
    /// last with LAST: a file from `messages/` (CRLF line ends, not dot-stuffed) or generated.
    BdatMessage {
        message: MessageSource,
        chunk: Option<usize>,
    },
    /// `C: QUIT`, expect 221, expect the close.
    Quit,
    /// Tell the relay to shut down (smtp-relay only), without waiting for it.
    Shutdown,
    /// Read every reply until the relay is quiet for 150 ms or closes, checking only that
    /// each is well-formed; after a close seen here, later sends are skipped. For generated
    /// sessions, whose replies are not known in advance.
    Drain,
    /// The next step must be done within this (`within 2s`): a reply, a close, a QUIT.
    Within(Duration),
    /// `upstream clock +15m`: the fake upstreams' policy clock moves ahead (quotas refill,
    /// bans and `for` faults end) without the scenario waiting for it.
    AdvanceClock(Duration),
}

/// The content of a `bdat message` step.
#[derive(Clone, Debug, PartialEq)]
pub enum MessageSource {
    /// A file, as `message:` reads it.
    File(PathBuf),
    /// A generated message of this many octets, as `message size N` makes it.
    Generated(usize),
}

/// What a reply must look like.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectReply {
    /// One per reply line; a single pattern matches a reply of any number of lines.
    pub lines: Vec<ReplyLinePattern>,
    /// Other replies that do as well, each a single pattern (`S: 250 * | 550 *`: where the
    /// RFCs leave the choice to the relay).
    pub or: Vec<ReplyLinePattern>,
}

/// A reply line's code and, optionally, a glob for its text.
pub type ReplyLinePattern = (CodePattern, Option<String>);

/// `250`, `2xx`, `5x1`: digits or `x`.
#[derive(Clone, Debug, PartialEq)]
pub struct CodePattern(pub String);

impl CodePattern {
    pub fn matches(&self, code: u16) -> bool {
        let digits = format!("{code:03}");
        self.0.len() == 3
            && self
                .0
                .chars()
                .zip(digits.chars())
                .all(|(p, d)| p == 'x' || p == d)
    }
}

/// A check made after the client's steps, when the relay has finished.
#[derive(Clone, Debug, PartialEq)]
pub enum Check {
    /// Exactly these recipients got a copy (over all upstreams, any order).
    Delivered(Vec<String>),
    /// This many messages reached the upstreams.
    Messages(usize),
    /// Every message an upstream got is what the client sent, byte for byte, after the trace
    /// headers (Received, Return-Path) the relay put on top.
    BodyIntact,
    /// The one message the upstreams got is exactly this, after the trace headers.
    UpstreamGot(Vec<u8>),
    /// An upstream received a command line containing this (ASCII case ignored: `mail
    /// FROM:` is as legal as `MAIL FROM:`), in a session closed or still open.
    UpstreamSaw(String),
    /// No upstream received a command line containing this (case ignored), in any session,
    /// closed or still open, and no envelope it received has it in its sender or recipients.
    UpstreamNeverSaw(String),
    /// No DATA phase any upstream received had a bare CR, a bare LF or a NUL in its raw bytes
    /// (as they came off the wire, before the fake repaired anything).
    UpstreamDataClean,
    /// Every message an upstream got (bounces aside) has exactly this reverse path, case
    /// included (`<Alice.Smith@example.com>`: a local part is case-sensitive).
    UpstreamSender(String),
    /// Some DATA phase an upstream received has these raw bytes (before dot-unstuffing).
    UpstreamDataHas(Vec<u8>),
    /// No MAIL, RCPT or DATA reached any upstream, and no message.
    NothingUpstream,
    /// A delivery status notification (`multipart/report`) reached this recipient.
    BounceTo(String),
    /// What reached the upstreams agrees with what the client was told: every message an
    /// upstream got is byte for byte one the client sent (trace headers aside); every
    /// message the client got a 2xx for reached an upstream (or a bounce went out); no
    /// message the client got a 4xx or 5xx for reached one.
    Consistent,
    /// No AUTH secret of the scenario (its `user:` codes and `auth` steps) appears in the
    /// transcripts, the upstream's records or the relay's spool records.
    NoSecrets,
    /// None of these recipients got a copy (case ignored).
    NotDelivered(Vec<String>),
    /// Every message an upstream got (bounces aside) is byte for byte one the client sent,
    /// after the trace headers: no header field added (the other content checks allow one).
    NoHeaderAdded,
    /// At most this many messages reached the upstreams (bounces included).
    MessagesAtMost(usize),
    /// No DATA phase any upstream received had an octet above 127.
    UpstreamData7Bit,
    /// Some DATA phase an upstream received matches this regular expression (over its raw
    /// bytes; `(?i)` and the rest of the `regex` crate's syntax).
    UpstreamDataMatches(String),
}

/// A parse error: the file, the line, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Decodes `\r`, `\n`, `\t`, `\0`, `\\` and `\xNN` escapes.
pub fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let Some(&next) = bytes.get(i + 1) else {
            return Err("a lone \\ at the end (write \\\\ for a backslash)".into());
        };
        match next {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = s
                    .get(i + 2..i + 4)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("\\x needs two hex digits at {:?}", &s[i..]))?;
                out.push(hex);
                i += 2;
            }
            other => {
                return Err(format!(
                    "unknown escape \\{} (known: \\r \\n \\t \\0 \\\\ \\xNN)",
                    other as char
                ));
            }
        }
        i += 2;
    }
    Ok(out)
}

/// The inverse of [`unescape`]: printable ASCII stays, the rest is escaped.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0 => s.push_str("\\0"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

pub(crate) fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() == 0 && secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if d.subsec_millis() == 0 && secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

impl Scenario {
    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ParseError> {
        let text = std::fs::read_to_string(path).map_err(|e| ParseError {
            path: path.to_path_buf(),
            line: 0,
            message: e.to_string(),
        })?;
        Scenario::parse(&text, path)
    }

    /// Parses scenario text; `path` names it in errors and gives its name.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ParseError> {
        parse::Parser::new(path).parse(text)
    }

    /// The scenario as text that [`Scenario::parse`] reads back to the same scenario.
    /// The AUTH secrets the scenario knows: upstream user codes and `auth` step secrets.
    pub fn secrets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .upstream
            .users
            .iter()
            .flatten()
            .map(|u| u.code.clone())
            .collect();
        for s in &self.steps {
            if let Step::Auth { secret, .. } = &s.item {
                out.push(secret.clone());
            }
        }
        if self.upstream.users.is_none() && self.upstream.persona == "163" {
            out.extend(
                ["ALICEAUTHCODE163", "BOBAUTHCODE16300", "CAROLAUTHCODE163"].map(String::from),
            );
        }
        out.retain(|s| s.len() >= 4);
        out.sort();
        out.dedup();
        out
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if !self.description.is_empty() {
            s.push_str(&format!("description: {}\n", self.description));
        }
        if !self.tags.is_empty() {
            s.push_str(&format!("tags: {}\n", self.tags.join(", ")));
        }
        if !self.requires.is_empty() {
            s.push_str(&format!("requires: {}\n", self.requires.join(" ")));
        }
        if !self.covers.is_empty() {
            let n: Vec<String> = self.covers.iter().map(u32::to_string).collect();
            s.push_str(&format!("covers: {}\n", n.join(" ")));
        }
        s.push_str(&format!("timeout: {}\n", format_duration(self.timeout)));
        if let Some(d) = self.settle {
            s.push_str(&format!("settle: {}\n", format_duration(d)));
        }
        upstream_text(&self.upstream, &mut s);
        for f in &self.upstream.faults {
            s.push_str(&format!("fault: {}\n", fault_text(f)));
        }
        for r in &self.routes {
            s.push_str(&format!(
                "route {}: {} -> {}\n",
                r.name,
                r.domains.join(" "),
                r.upstream.persona
            ));
            for f in &r.upstream.faults {
                s.push_str(&format!("fault {}: {}\n", r.name, fault_text(f)));
            }
        }
        if !self.relay.is_empty() {
            let kv: Vec<String> = self.relay.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("relay: {}\n", kv.join(" ")));
        }
        s.push('\n');
        for step in &self.steps {
            step_text(&step.item, &mut s);
        }
        if !self.checks.is_empty() {
            s.push('\n');
        }
        for c in &self.checks {
            check_text(&c.item, &mut s);
        }
        s
    }
}

fn contains_template(line: &[u8]) -> bool {
    memchr::memmem::find(line, b"{b64:").is_some()
}

/// `C:` text: `{b64:TEXT}` becomes the base64 of TEXT (with escapes, e.g.
/// `{b64:\0alice@163.com\0CODE}` for AUTH PLAIN).
fn expand(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("{b64:") {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let inner = &rest[at + 5..];
        let end = inner
            .find('}')
            .ok_or_else(|| format!("{{b64: without its closing }} in {text:?}"))?;
        let raw = unescape(&inner[..end])?;
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(raw)
                .as_bytes(),
        );
        rest = &inner[end + 1..];
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out)
}

/// The scenario's lines with their numbers, `repeat N: LINE` written out N times with `{i}`
/// counting from 1 (`repeat 100: C: RCPT TO:<u{i}@163.com>`); at most 10,000 times.
fn expand_repeats(text: &str, path: &Path) -> Result<Vec<(usize, String)>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let Some(rest) = raw.trim_start().strip_prefix("repeat ") else {
            out.push((n, raw.to_string()));
            continue;
        };
        let err = |message: String| ParseError {
            path: path.to_path_buf(),
            line: n,
            message,
        };
        let (count, line) = rest
            .split_once(':')
            .ok_or_else(|| err("expected repeat N: LINE".into()))?;
        let count: usize = count
            .trim()
            .parse()
            .ok()
            .filter(|c| (1..=10_000).contains(c))
            .ok_or_else(|| err(format!("{count:?}: expected a count from 1 to 10000")))?;
        let line = line.strip_prefix(' ').unwrap_or(line);
        if line.trim_start().starts_with("repeat ") {
            return Err(err("repeat cannot be nested".into()));
        }
        for k in 1..=count {
            out.push((n, line.replace("{i}", &k.to_string())));
        }
    }
    Ok(out)
}

/// `250`, `250 text`, `250-text`, `2xx`, `250 2.1.0 *`.
fn split_reply_pattern(rest: &str) -> Result<(CodePattern, char, Option<String>), String> {
    let code = rest.get(..3).unwrap_or("");
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_digit() || c == 'x') {
        return Err(format!(
            "{rest:?}: expected a reply code (250, 2xx) and optionally its text"
        ));
    }
    let after = &rest[3..];
    let (sep, text) = match after.chars().next() {
        None => (' ', None),
        Some(c @ (' ' | '-')) => (c, Some(after[1..].to_string()).filter(|t| !t.is_empty())),
        Some(_) => {
            return Err(format!(
                "{rest:?}: the code must be followed by a space or -"
            ));
        }
    };
    Ok((CodePattern(code.to_string()), sep, text))
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        other => Err(format!("{other:?}: expected on or off")),
    }
}

/// `upstream-tls-policy: verify [roots] | fingerprint [key|other] | encrypt | may | none`.
pub fn check_tls_policy(v: &str) -> Result<(), String> {
    let w: Vec<&str> = v.split_whitespace().collect();
    match w.as_slice() {
        ["verify"] | ["verify", "roots"] => Ok(()),
        ["fingerprint"] | ["fingerprint", "key" | "other"] => Ok(()),
        ["encrypt"] | ["may"] | ["none"] => Ok(()),
        _ => Err(format!(
            "{v:?}: expected verify [roots], fingerprint [key|other], encrypt, may or none"
        )),
    }
}

fn parse_tls(v: &str) -> Result<String, String> {
    match v {
        "implicit" | "starttls" | "none" => Ok(v.to_string()),
        other => Err(format!("{other:?}: expected implicit, starttls or none")),
    }
}

/// The relay options a scenario may set.
pub const RELAY_OPTIONS: &[&str] = &[
    "auth",
    "max_recipients",
    "max_rcpt_commands",
    "max_message_size",
    "line_timeout",
    "min_data_rate",
    "auth_failures_per_client",
    "auth_failures_per_upstream",
    "max_sessions",
    "max_sessions_per_ip",
    "command_timeout",
    "data_timeout",
    "session_deadline",
    "auth_failure_delay",
    "bare_line_endings",
    "upstream_timeout",
    "queue",
    "first_retry",
];

fn check_relay_option(k: &str, v: &str) -> Result<(), String> {
    match k {
        "auth" => match v {
            "passthrough" | "none" | "users" => Ok(()),
            other => Err(format!("auth={other}: expected passthrough, users or none")),
        },
        "queue" => match v {
            "on" | "off" => Ok(()),
            other => Err(format!("queue={other}: expected on or off")),
        },
        "first_retry" => parse_duration(v).map(|_| ()),
        "max_recipients"
        | "max_rcpt_commands"
        | "max_message_size"
        | "max_sessions"
        | "max_sessions_per_ip"
        | "min_data_rate"
        | "auth_failures_per_client"
        | "auth_failures_per_upstream" => v
            .parse::<u64>()
            .map(|_| ())
            .map_err(|_| format!("{k}={v}: expected a number")),
        "command_timeout" | "data_timeout" | "line_timeout" | "session_deadline"
        | "auth_failure_delay" | "upstream_timeout" => parse_duration(v).map(|_| ()),
        "bare_line_endings" => match v {
            "reject" | "normalize" => Ok(()),
            other => Err(format!(
                "bare_line_endings={other}: expected reject or normalize"
            )),
        },
        other => Err(format!(
            "{other:?} is not a relay option (known: {})",
            RELAY_OPTIONS.join(", ")
        )),
    }
}

/// Every `.scn` file under the given paths (files as given, directories searched, sorted).
pub fn find(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|e| e == "scn"))
                .collect();
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    // A file named twice (`scenarios/a.scn scenarios/*.scn`, or a folder and a file in it)
    // runs once, where it was first named.
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    Ok(out)
}

#[cfg(test)]
mod tests;
