//! Reading a scenario file: each line a header (the scenario's setup: upstream, faults,
//! routes, relay options), a client step (`C:`, `S:`, connect, auth, message...) or a check
//! (`expect ...`); every error names its line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_upstream::config::User;

use super::*;

/// A scenario being read.
pub(super) struct Parser<'a> {
    path: &'a Path,
    sc: Scenario,
    /// A multi-line reply expectation being read: its first line and its patterns.
    expect_block: Option<(usize, Vec<ReplyLinePattern>)>,
}

/// The message for an expectation whose last line never came.
const UNENDED_BLOCK: &str =
    "a multi-line reply expectation (S: NNN-...) must end with a S: NNN line";

impl<'a> Parser<'a> {
    pub(super) fn new(path: &'a Path) -> Parser<'a> {
        Parser {
            path,
            sc: Scenario {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                path: path.to_path_buf(),
                description: String::new(),
                tags: Vec::new(),
                requires: Vec::new(),
                covers: Vec::new(),
                timeout: Duration::from_secs(30),
                settle: None,
                upstream: Upstream::new("163"),
                routes: Vec::new(),
                relay: Vec::new(),
                steps: Vec::new(),
                checks: Vec::new(),
            },
            expect_block: None,
        }
    }

    fn error(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            path: self.path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(super) fn parse(mut self, text: &str) -> Result<Scenario, ParseError> {
        for (n, raw) in expand_repeats(text, self.path)? {
            self.line(n, &raw)?;
        }
        if let Some((at, _)) = self.expect_block {
            return Err(self.error(at, UNENDED_BLOCK));
        }
        if !matches!(
            self.sc.steps.first().map(|s| &s.item),
            Some(Step::Connect { .. })
        ) && !self.sc.steps.is_empty()
        {
            return Err(self.error(
                self.sc.steps[0].line,
                "the client steps must begin with connect (or connect tls)",
            ));
        }
        Ok(self.sc)
    }

    fn line(&mut self, n: usize, raw: &str) -> Result<(), ParseError> {
        // `C:` and `raw:` keep their text as is (a `#` there is content).
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim_start();
        let is_data = ["C:", "raw:", "bdat:", "bdat last:"]
            .iter()
            .any(|p| trimmed.starts_with(p));
        let line = if is_data {
            trimmed
        } else {
            match trimmed.find(" #") {
                Some(at) => trimmed[..at].trim_end(),
                None if trimmed.starts_with('#') => "",
                None => trimmed.trim_end(),
            }
        };
        // A multi-line reply expectation continues while lines are `S: NNN-...`.
        if let Some(rest) = line.strip_prefix("S:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            return self.reply_line(n, rest).map_err(|m| self.error(n, m));
        }
        if let Some((at, _)) = &self.expect_block {
            return Err(self.error(*at, UNENDED_BLOCK));
        }
        if line.is_empty() {
            return Ok(());
        }
        let step = |item| Line { line: n, item };
        if let Some(rest) = line.strip_prefix("C:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let mut bytes = expand(rest).map_err(|m| self.error(n, m))?;
            bytes.extend_from_slice(b"\r\n");
            self.sc.steps.push(step(Step::Send(bytes)));
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("raw:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let bytes = unescape(rest).map_err(|m| self.error(n, m))?;
            self.sc.steps.push(step(Step::Send(bytes)));
            return Ok(());
        }
        for (prefix, last) in [("bdat:", false), ("bdat last:", true)] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let rest = rest.strip_prefix(' ').unwrap_or(rest);
                let content = unescape(rest).map_err(|m| self.error(n, m))?;
                self.sc.steps.push(step(Step::Bdat { content, last }));
                return Ok(());
            }
        }
        let (key, value) = match line.split_once(':') {
            Some((k, v))
                if !k.contains(' ')
                    || k == "bdat message"
                    || k.starts_with("fault ")
                    || k.starts_with("route ")
                    || k.starts_with("expect ") =>
            {
                (k.trim(), v.trim())
            }
            _ => (line, ""),
        };
        let known = self.header(key, value).and_then(|done| {
            if done {
                return Ok(true);
            }
            if self.step(n, key, value)? {
                return Ok(true);
            }
            self.check(n, key, value)
        });
        match known {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.error(
                n,
                format!(
                    "{key:?}: not a scenario line (see scenarios/README.md: C:, S:, raw:, bdat:, connect, starttls, auth, message, quit, expect ..., upstream, fault, route, relay)"
                ),
            )),
            Err(m) => Err(self.error(n, m)),
        }
    }

    /// A `S:` line: one reply expected (or `A | B`, alternatives), or a line of a multi-line
    /// one.
    fn reply_line(&mut self, n: usize, rest: &str) -> Result<(), String> {
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        if self.expect_block.is_none() && rest.contains(" | ") {
            let mut patterns = Vec::new();
            for alt in rest.split(" | ") {
                let (code, sep, text) =
                    split_reply_pattern(alt.trim()).map_err(|e| e.to_string())?;
                if sep == '-' {
                    return Err(format!(
                        "{alt:?}: an alternative (A | B) is a whole reply, not a line of one"
                    ));
                }
                patterns.push((code, text));
            }
            let first = patterns.remove(0);
            self.sc.steps.push(Line {
                line: n,
                item: Step::Expect(ExpectReply {
                    lines: vec![first],
                    or: patterns,
                }),
            });
            return Ok(());
        }
        let (code, sep, text) = split_reply_pattern(rest).map_err(|e| e.to_string())?;
        let block = self.expect_block.get_or_insert_with(|| (n, Vec::new()));
        block.1.push((code, text));
        if sep != '-' {
            let (at, lines) = self.expect_block.take().expect("just set");
            self.sc.steps.push(Line {
                line: at,
                item: Step::Expect(ExpectReply {
                    lines,
                    or: Vec::new(),
                }),
            });
        }
        Ok(())
    }

    /// The scenario's setup: what it is, its upstreams and faults, its routes, the relay's
    /// options.
    fn header(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "description" => self.sc.description = value.to_string(),
            "tags" => {
                self.sc.tags = value
                    .split([',', ' '])
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "requires" => {
                self.sc.requires = value
                    .split([',', ' '])
                    .filter(|t| !t.is_empty())
                    .map(|t| t.to_ascii_uppercase())
                    .collect()
            }
            "timeout" => self.sc.timeout = parse_duration(value).map_err(|e| e.to_string())?,
            "covers" => {
                for n in value.split([',', ' ']).filter(|n| !n.is_empty()) {
                    self.sc.covers.push(n.parse().map_err(|_| {
                        format!("{n:?}: expected the numbers of smtp-edge-cases.md cases")
                    })?);
                }
            }
            "settle" => self.sc.settle = Some(parse_duration(value).map_err(|e| e.to_string())?),
            "user" => self.user(value)?,
            "fault" => self
                .sc
                .upstream
                .faults
                .push(parse_fault(value).map_err(|e| e.to_string())?),
            "relay" => {
                for kv in value.split_whitespace() {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("{kv:?}: expected key=value"))?;
                    check_relay_option(k, v).map_err(|e| e.to_string())?;
                    self.sc.relay.push((k.to_string(), v.to_string()));
                }
            }
            k if k.starts_with("route ") => {
                let name = k[6..].trim().to_string();
                let (domains, persona) = value.split_once("->").ok_or_else(|| {
                    format!("{value:?}: expected route NAME: DOMAIN... -> PERSONA")
                })?;
                let domains: Vec<String> = domains.split_whitespace().map(str::to_string).collect();
                if domains.is_empty() {
                    return Err("a route needs at least one domain".into());
                }
                for d in &domains {
                    crate::route::check_pattern(d).map_err(|e| e.to_string())?;
                }
                self.sc.routes.push(RouteSetup {
                    name,
                    domains,
                    upstream: Upstream::new(persona.trim()),
                });
            }
            k if k.starts_with("fault ") => {
                let name = k[6..].trim();
                let route = self
                    .sc
                    .routes
                    .iter_mut()
                    .find(|r| r.name == name)
                    .ok_or_else(|| {
                        format!("no route named {name:?} (declare it first with route {name}: ...)")
                    })?;
                route
                    .upstream
                    .faults
                    .push(parse_fault(value).map_err(|e| e.to_string())?);
            }

            k if k.starts_with("upstream") => return self.upstream_setting(k, value),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// An `upstream-*` line: the default upstream's persona, TLS, limits and behaviour.
    fn upstream_setting(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "upstream" => self.sc.upstream.persona = value.to_string(),
            "upstream-era" => self.sc.upstream.era = Some(value.to_string()),
            "upstream-pipelining" => {
                self.sc.upstream.pipelining = Some(parse_bool(value).map_err(|e| e.to_string())?)
            }
            "upstream-without" => {
                self.sc.upstream.without = value.split_whitespace().map(str::to_string).collect()
            }
            "upstream-no-limits" => {
                self.sc.upstream.no_limits = parse_bool(value).map_err(|e| e.to_string())?
            }
            "upstream-limit" => {
                for kv in value.split_whitespace() {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("{kv:?}: expected key=value"))?;
                    fake_upstream::persona::Limits::default()
                        .set(k, v)
                        .map_err(|e| e.to_string())?;
                    self.sc.upstream.limits.push((k.to_string(), v.to_string()));
                }
            }
            "upstream-tls" => self.sc.upstream.tls = parse_tls(value).map_err(|e| e.to_string())?,
            "upstream-cert" => {
                self.sc.upstream.cert = Some(
                    value
                        .parse::<fake_upstream::tls::CertKind>()
                        .map_err(|e| e.to_string())?,
                )
            }
            "upstream-tls-policy" => {
                check_tls_policy(value).map_err(|e| e.to_string())?;
                self.sc.upstream.tls_policy = Some(value.to_string());
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// `user: ADDRESS CODE [smtp-off]`: an account of the default upstream.
    fn user(&mut self, value: &str) -> Result<(), String> {
        let mut w = value.split_whitespace();
        let (Some(address), Some(code)) = (w.next(), w.next()) else {
            return Err(format!("{value:?}: expected user: ADDRESS CODE [smtp-off]"));
        };
        let smtp = match w.next() {
            None => true,
            Some("smtp-off") => false,
            Some(other) => {
                return Err(format!("{other:?}: expected nothing or smtp-off"));
            }
        };
        self.sc
            .upstream
            .users
            .get_or_insert_with(Vec::new)
            .push(User {
                address: address.into(),
                code: code.into(),
                smtp,
            });
        Ok(())
    }

    /// A client step.
    fn step(&mut self, n: usize, key: &str, value: &str) -> Result<bool, String> {
        let step = |item| Line { line: n, item };
        match key {
            "connect" => self.sc.steps.push(step(Step::Connect { tls: false })),
            "connect tls" => self.sc.steps.push(step(Step::Connect { tls: true })),
            "flush" => self.sc.steps.push(step(Step::Flush)),
            "close" => self.sc.steps.push(step(Step::Close)),
            "starttls" => self.sc.steps.push(step(Step::StartTls)),
            "tls" => self.sc.steps.push(step(Step::Tls)),
            "quit" => self.sc.steps.push(step(Step::Quit)),
            "shutdown" => self.sc.steps.push(step(Step::Shutdown)),
            "drain" => self.sc.steps.push(step(Step::Drain)),
            k if k.starts_with("message size ") => {
                let n = k[13..].trim();
                let n = n
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= 512 * 1024 * 1024)
                    .ok_or_else(|| format!("{n:?}: expected a size in octets (at most 512 MiB)"))?;
                self.sc.steps.push(step(Step::GeneratedMessage(n)))
            }
            "message" => self
                .sc
                .steps
                .push(step(Step::Message(PathBuf::from(value)))),
            k if k.starts_with("bdat message size ") => {
                let (n, chunk) = chunked(&k[18..])?;
                let n = n
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= 512 * 1024 * 1024)
                    .ok_or_else(|| format!("{n:?}: expected a size in octets (at most 512 MiB)"))?;
                self.sc.steps.push(step(Step::BdatMessage {
                    message: MessageSource::Generated(n),
                    chunk,
                }))
            }
            "bdat message" => {
                let (file, chunk) = chunked(value)?;
                self.sc.steps.push(step(Step::BdatMessage {
                    message: MessageSource::File(PathBuf::from(file)),
                    chunk,
                }))
            }
            k if k.starts_with("sleep ") => self.sc.steps.push(step(Step::Sleep(
                parse_duration(&k[6..]).map_err(|e| e.to_string())?,
            ))),
            k if k.starts_with("upstream clock ") => {
                let d = k[15..].trim();
                let d = d
                    .strip_prefix('+')
                    .ok_or_else(|| format!("{d:?}: expected upstream clock +DURATION (+15m)"))?;
                self.sc.steps.push(step(Step::AdvanceClock(
                    parse_duration(d).map_err(|e| e.to_string())?,
                )))
            }
            k if k.starts_with("within ") => self.sc.steps.push(step(Step::Within(
                parse_duration(&k[7..]).map_err(|e| e.to_string())?,
            ))),
            k if k.starts_with("auth ") => {
                let w: Vec<&str> = k.split_whitespace().collect();
                match w.as_slice() {
                    ["auth", mech @ ("login" | "plain"), user, secret] => {
                        self.sc.steps.push(step(Step::Auth {
                            mechanism: mech.to_string(),
                            user: user.to_string(),
                            secret: secret.to_string(),
                        }))
                    }
                    _ => {
                        return Err(format!("{k:?}: expected auth login|plain USER SECRET"));
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// A check on what the upstreams got.
    fn check(&mut self, n: usize, key: &str, value: &str) -> Result<bool, String> {
        let check = |item| Line { line: n, item };
        match key {
            "expect consistent" => self.sc.checks.push(check(Check::Consistent)),
            "expect no secrets" => self.sc.checks.push(check(Check::NoSecrets)),
            "expect delivered" => self.sc.checks.push(check(Check::Delivered(
                value
                    .split([',', ' '])
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            ))),
            "expect messages" => {
                let (at_most, n) = match value.strip_prefix("at most ") {
                    Some(n) => (true, n.trim()),
                    None => (false, value),
                };
                let n = n
                    .parse()
                    .map_err(|_| format!("{value:?} is not a count (or at most N)"))?;
                self.sc.checks.push(check(if at_most {
                    Check::MessagesAtMost(n)
                } else {
                    Check::Messages(n)
                }))
            }
            "expect not delivered" => self.sc.checks.push(check(Check::NotDelivered(
                value
                    .split([',', ' '])
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            ))),
            "expect upstream data 7bit" => self.sc.checks.push(check(Check::UpstreamData7Bit)),
            "expect no header added" => self.sc.checks.push(check(Check::NoHeaderAdded)),
            "expect upstream data matches" => {
                regex::bytes::Regex::new(value)
                    .map_err(|e| format!("{value:?} is not a regular expression: {e}"))?;
                self.sc
                    .checks
                    .push(check(Check::UpstreamDataMatches(value.to_string())))
            }
            "expect body intact" => self.sc.checks.push(check(Check::BodyIntact)),
            "expect nothing upstream" => self.sc.checks.push(check(Check::NothingUpstream)),
            "expect upstream sender" => self
                .sc
                .checks
                .push(check(Check::UpstreamSender(value.to_string()))),
            "expect upstream data clean" => self.sc.checks.push(check(Check::UpstreamDataClean)),
            "expect upstream data has" => self.sc.checks.push(check(Check::UpstreamDataHas(
                unescape(value).map_err(|e| e.to_string())?,
            ))),
            "expect upstream got" => self.sc.checks.push(check(Check::UpstreamGot(
                unescape(value).map_err(|e| e.to_string())?,
            ))),
            "expect upstream saw" => self
                .sc
                .checks
                .push(check(Check::UpstreamSaw(value.to_string()))),
            "expect upstream never saw" => self
                .sc
                .checks
                .push(check(Check::UpstreamNeverSaw(value.to_string()))),
            "expect bounce to" => self
                .sc
                .checks
                .push(check(Check::BounceTo(value.to_string()))),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `WHAT` or `WHAT chunks N` (a `bdat message` step): WHAT, and the chunk size.
fn chunked(text: &str) -> Result<(&str, Option<usize>), String> {
    let text = text.trim();
    match text.rsplit_once(" chunks ") {
        Some((what, n)) => {
            let n = n
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=512 * 1024 * 1024).contains(n))
                .ok_or_else(|| format!("{n:?}: expected a chunk size in octets (1 to 512 MiB)"))?;
            Ok((what.trim(), Some(n)))
        }
        None => Ok((text, None)),
    }
}
