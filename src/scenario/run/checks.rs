//! The checks after the steps: what the upstreams got (deliveries, senders, content intact
//! or not, raw DATA bytes), what they never saw, bounces; each failure names the line.

use super::*;

/// A message of exactly `size` octets (at least its headers): a few headers, then lines of
/// 74 letters and CRLF, the last one shorter.
pub fn generated_message(size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: alice@163.com\r\nTo: bob@163.com\r\nSubject: generated\r\n\
         Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <generated-{size}@client.example>\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0u64;
    while m.len() + 2 < size {
        let room = (size - m.len() - 2).min(74);
        m.extend((0..room).map(|k| b'a' + ((i + k as u64) % 26) as u8));
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

/// A message file as DATA content: CRLF line ends, dot-stuffed, then `.CRLF`.
pub(super) fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + content.len() / 40 + 8);
    let mut encoder = smtp_wire::DataEncoder::new();
    encoder.encode(content, &mut out);
    encoder.finish(&mut out);
    out
}

/// The message after the trace headers (`Received:`, `Return-Path:`) put on top of it.
pub fn strip_trace(mut content: &[u8]) -> &[u8] {
    loop {
        let lower: Vec<u8> = content
            .iter()
            .take(12)
            .map(|b| b.to_ascii_lowercase())
            .collect();
        if !(lower.starts_with(b"received:") || lower.starts_with(b"return-path:")) {
            return content;
        }
        // Skip the header line and its continuation lines.
        loop {
            let Some(end) = memchr::memchr(b'\n', content) else {
                return &content[content.len()..];
            };
            content = &content[end + 1..];
            if !content.starts_with(b" ") && !content.starts_with(b"\t") {
                break;
            }
        }
    }
}

/// Whether `got` (the trace headers taken off) is the message `sent`: byte for byte, or with
/// header fields added and nothing else changed (every field of `sent` there, in order, and
/// the same body). A relay that adds a field (`X-Peer:`, a `Date:` to a message without one)
/// fails the one check that looks for that (`expect no header added`), not every check that
/// compares content.
///
/// `got` has had its trace fields taken off ([`strip_trace`]); so have the client's own, if its
/// message came with `Received:` lines (whether the relay kept those is for `expect upstream
/// data has` to say).
pub fn same_message(got: &[u8], sent: &[u8]) -> bool {
    let sent = strip_trace(sent);
    if got == sent {
        return true;
    }
    let split = |m: &[u8]| -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
        let end = memchr::memmem::find(m, b"\r\n\r\n")?;
        let (head, body) = (&m[..end + 2], &m[end + 4..]);
        let mut fields: Vec<Vec<u8>> = Vec::new();
        for line in head.split_inclusive(|&b| b == b'\n') {
            match (line.first(), fields.last_mut()) {
                (Some(b' ' | b'\t'), Some(last)) => last.extend_from_slice(line),
                _ => fields.push(line.to_vec()),
            }
        }
        Some((fields, body.to_vec()))
    };
    let (Some((got_fields, got_body)), Some((sent_fields, sent_body))) = (split(got), split(sent))
    else {
        return false;
    };
    if got_body != sent_body || got_fields.len() <= sent_fields.len() {
        return false;
    }
    let mut rest = got_fields.iter();
    sent_fields.iter().all(|f| rest.any(|g| g == f))
}

/// Where `got` parts from the message of `sent` it shares the longest beginning with: the
/// octet, and the bytes around it on both sides (escaped once, CR and LF visible).
pub(super) fn difference(got: &[u8], sent: &[Vec<u8>]) -> String {
    let common = |m: &[u8]| m.iter().zip(got).take_while(|(a, b)| a == b).count();
    let Some(m) = sent.iter().max_by_key(|m| common(m)) else {
        return format!(
            "it begins \"{}\"",
            crate::scenario::escape(&got[..got.len().min(120)])
        );
    };
    let i = common(m);
    let from = i.saturating_sub(24);
    let around = |b: &[u8]| crate::scenario::escape(&b[from.min(b.len())..(i + 48).min(b.len())]);
    format!(
        "from octet {i} on, the upstream got \"{}\" where the client sent \"{}\" ({} and {} octets in all)",
        around(got),
        around(m),
        got.len(),
        m.len()
    )
}

/// A delivery status notification: `multipart/report; report-type=delivery-status` (quoted
/// or not), or from the null reverse path (RFC 5321 4.5.5) with a bounce's subject, as
/// OpenSMTPD's `multipart/mixed` "Delivery status notification" and Postfix's "Undelivered
/// Mail Returned to Sender" are.
pub(super) fn is_bounce(r: &fake_upstream::Received) -> bool {
    let head: Vec<u8> = r
        .content
        .iter()
        .take(64 * 1024)
        .map(u8::to_ascii_lowercase)
        .collect();
    let has = |needle: &[u8]| memchr::memmem::find(&head, needle).is_some();
    has(b"report-type=delivery-status")
        || has(b"report-type=\"delivery-status\"")
        || (r.mail_from == "<>"
            && (has(b"\nsubject: delivery status notification")
                || has(b"\nsubject: undelivered mail")))
}

/// Runs the scenario's checks, in order; the first that fails says why, with its line.
pub(super) fn check_all(sc: &Scenario, env: &Env, client: &Client) -> Result<(), String> {
    let seen = Seen::new(sc, env, client);
    for check in &sc.checks {
        seen.check(&check.item)
            .map_err(|e| format!("line {}: {e}", check.line))?;
    }
    Ok(())
}

/// What the checks look at, gathered once after the steps.
struct Seen<'a> {
    sc: &'a Scenario,
    env: &'a Env,
    client: &'a Client,
    /// Every message the upstreams accepted, with the upstream's label.
    received: Vec<(String, fake_upstream::Received)>,
    /// The fakes' live record: sessions still open are read as they stand.
    transcripts: Vec<(String, fake_upstream::Transcript)>,
    /// Every line the upstreams received, over every session.
    upstream_lines: Vec<String>,
    /// How many messages the client was told 2xx for.
    accepted: usize,
}

/// Whether `hay` contains `needle`, ASCII case aside.
fn has(hay: &str, needle: &str) -> bool {
    hay.to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

impl<'a> Seen<'a> {
    fn new(sc: &'a Scenario, env: &'a Env, client: &'a Client) -> Seen<'a> {
        let transcripts = env.upstream_transcripts();
        let upstream_lines = transcripts
            .iter()
            .flat_map(|(_, t)| t.lines.iter())
            .filter_map(|l| l.strip_prefix("C: ").map(str::to_string))
            .collect();
        let accepted = client
            .finals
            .iter()
            .filter(|r| r.as_ref().is_some_and(Reply::is_positive))
            .count();
        Seen {
            sc,
            env,
            client,
            received: env.received(),
            transcripts,
            upstream_lines,
            accepted,
        }
    }

    /// The messages the upstreams got, bounces aside.
    fn delivered_messages(&self) -> Vec<&fake_upstream::Received> {
        self.received
            .iter()
            .map(|(_, r)| r)
            .filter(|r| !is_bounce(r))
            .collect()
    }

    /// Every DATA phase an upstream received: its upstream, its session, the phase.
    fn data_phases(
        &self,
    ) -> impl Iterator<Item = (&str, &fake_upstream::Transcript, &fake_upstream::DataPhase)> {
        self.transcripts
            .iter()
            .flat_map(|(label, t)| t.data.iter().map(move |d| (label.as_str(), t, d)))
    }

    /// Against another relay, a missing message may only be late: what the client was told.
    fn late(&self, got: usize) -> String {
        if self.env.external && self.accepted > got {
            format!(
                "; the relay answered 2xx to {} message(s) and may still deliver: a store-and-forward relay needs its deliveries within the settle window (--settle, settle:)",
                self.accepted
            )
        } else {
            String::new()
        }
    }

    fn check(&self, item: &Check) -> Result<(), String> {
        match item {
            Check::Delivered(want) => self.delivered(want),
            Check::NotDelivered(addresses) => self.not_delivered(addresses),
            Check::NoHeaderAdded => self.no_header_added(),
            Check::MessagesAtMost(n) => self.messages_at_most(n),
            Check::UpstreamData7Bit => self.upstream_data7_bit(),
            Check::UpstreamDataMatches(pattern) => self.upstream_data_matches(pattern),
            Check::Messages(n) => self.messages(n),
            Check::BodyIntact => self.body_intact(),
            Check::UpstreamGot(want) => self.upstream_got(want),
            Check::UpstreamSaw(text) => self.upstream_saw(text),
            Check::UpstreamNeverSaw(text) => self.upstream_never_saw(text),
            Check::UpstreamSender(want) => self.upstream_sender(want),
            Check::UpstreamDataClean => self.upstream_data_clean(),
            Check::UpstreamDataHas(bytes) => self.upstream_data_has(bytes),
            Check::NothingUpstream => self.nothing_upstream(),
            Check::Consistent => self.consistent(),
            Check::NoSecrets => self.no_secrets(),
            Check::BounceTo(addr) => self.bounce_to(addr),
        }
    }

    fn delivered(&self, want: &[String]) -> Result<(), String> {
        let mut got: Vec<String> = self
            .received
            .iter()
            .flat_map(|(_, r)| r.rcpt_to.iter().map(|a| a.to_ascii_lowercase()))
            .collect();
        let mut want: Vec<String> = want.iter().map(|a| a.to_ascii_lowercase()).collect();
        got.sort();
        want.sort();
        if got != want {
            return Err(format!(
                "expected deliveries to [{}], the upstreams got [{}]{}",
                want.join(" "),
                got.join(" "),
                self.late(self.received.len())
            ));
        }
        Ok(())
    }

    fn not_delivered(&self, addresses: &[String]) -> Result<(), String> {
        for a in addresses {
            if let Some((label, r)) = self
                .received
                .iter()
                .find(|(_, r)| r.rcpt_to.iter().any(|t| t.eq_ignore_ascii_case(a)))
            {
                return Err(format!(
                    "upstream {label} got a copy for {a} (MAIL FROM:{} RCPT TO:{})",
                    r.mail_from,
                    r.rcpt_to.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn no_header_added(&self) -> Result<(), String> {
        for (label, r) in self.received.iter().filter(|(_, r)| !is_bounce(r)) {
            let body = strip_trace(&r.content);
            if !self.client.sent.iter().any(|m| strip_trace(m) == body) {
                return Err(format!(
                    "upstream {label} got a message that is not byte for byte one the client sent; {}",
                    difference(body, &self.client.sent)
                ));
            }
        }
        Ok(())
    }

    fn messages_at_most(&self, n: &usize) -> Result<(), String> {
        if self.received.len() > *n {
            return Err(format!(
                "expected at most {n} message(s) upstream, the upstreams got {}",
                self.received.len()
            ));
        }
        Ok(())
    }

    fn upstream_data7_bit(&self) -> Result<(), String> {
        if let Some((label, t, d)) = self.data_phases().find(|(_, _, d)| d.eight_bit > 0) {
            let i = d.raw.iter().position(|b| *b > 127).unwrap_or(0);
            let from = i.saturating_sub(20);
            return Err(format!(
                "upstream {label} self.received DATA with {} octet(s) above 127 (session {}): ...{}...",
                d.eight_bit,
                t.id,
                crate::scenario::escape(&d.raw[from..(i + 20).min(d.raw.len())])
            ));
        }
        Ok(())
    }

    fn upstream_data_matches(&self, pattern: &str) -> Result<(), String> {
        let re = regex::bytes::Regex::new(pattern).map_err(|e| format!("{pattern:?}: {e}"))?;
        if !self.data_phases().any(|(_, _, d)| re.is_match(&d.raw)) {
            return Err(format!(
                "no DATA phase an upstream self.received matches {pattern:?} ({} phase(s) seen)",
                self.data_phases().count()
            ));
        }
        Ok(())
    }

    fn messages(&self, n: &usize) -> Result<(), String> {
        if self.received.len() != *n {
            return Err(format!(
                "expected {n} message(s) upstream, the upstreams got {}{}",
                self.received.len(),
                self.late(self.received.len())
            ));
        }
        Ok(())
    }

    fn body_intact(&self) -> Result<(), String> {
        let mut compared = 0;
        for (label, r) in self.received.iter().filter(|(_, r)| !is_bounce(r)) {
            let body = strip_trace(&r.content);
            if !self.client.sent.iter().any(|m| same_message(body, m)) {
                return Err(format!(
                    "upstream {label} got a message ({} octets after the trace headers) that is not byte for byte one the client sent ({} sent); {}",
                    body.len(),
                    self.client.sent.len(),
                    difference(body, &self.client.sent)
                ));
            }
            compared += 1;
        }
        if compared == 0 {
            return Err("no message reached an upstream to compare".into());
        }
        Ok(())
    }

    fn upstream_got(&self, want: &[u8]) -> Result<(), String> {
        let got = self.delivered_messages();
        match got.as_slice() {
            [one] => {
                let body = strip_trace(&one.content);
                if !same_message(body, want) {
                    return Err(format!(
                        "the upstream did not get the expected message; {}",
                        difference(body, &[want.to_vec()])
                    ));
                }
            }
            other => {
                return Err(format!(
                    "expected exactly one message upstream, got {}",
                    other.len()
                ));
            }
        }
        Ok(())
    }

    fn upstream_saw(&self, text: &str) -> Result<(), String> {
        if !self.upstream_lines.iter().any(|l| has(l, text)) {
            return Err(format!(
                "no upstream self.received a line with {text:?} (in {} session(s), {} still open)",
                self.transcripts.len(),
                self.transcripts.iter().filter(|(_, t)| t.open).count()
            ));
        }
        Ok(())
    }

    fn upstream_never_saw(&self, text: &str) -> Result<(), String> {
        if let Some((label, t)) = self
            .transcripts
            .iter()
            .find(|(_, t)| t.lines.iter().any(|l| l.starts_with("C: ") && has(l, text)))
        {
            let l = t
                .lines
                .iter()
                .find(|l| l.starts_with("C: ") && has(l, text))
                .map(String::as_str)
                .unwrap_or_default();
            return Err(format!(
                "upstream {label} self.received {:?} (session {}{})",
                l.trim_start_matches("C: "),
                t.id,
                if t.open { ", still open" } else { "" }
            ));
        }
        if let Some((label, r)) = self
            .received
            .iter()
            .find(|(_, r)| has(&r.mail_from, text) || r.rcpt_to.iter().any(|a| has(a, text)))
        {
            return Err(format!(
                "upstream {label} self.received a message with {text:?} in its envelope: MAIL FROM:{} RCPT TO:{}",
                r.mail_from,
                r.rcpt_to.join(", ")
            ));
        }
        Ok(())
    }

    fn upstream_sender(&self, want: &str) -> Result<(), String> {
        let got = self.delivered_messages();
        if got.is_empty() {
            return Err("no message reached an upstream".into());
        }
        if let Some(r) = got.iter().find(|r| r.mail_from != *want) {
            return Err(format!(
                "an upstream got MAIL FROM:{}, expected {want} exactly",
                r.mail_from
            ));
        }
        Ok(())
    }

    fn upstream_data_clean(&self) -> Result<(), String> {
        if let Some((label, t, d)) = self.data_phases().find(|(_, _, d)| !d.clean()) {
            let at_byte = d
                .raw
                .windows(2)
                .position(|w| w[0] == 0 || (w[0] == b'\r') != (w[1] == b'\n') || w[1] == 0)
                .unwrap_or(0);
            let from = at_byte.saturating_sub(20);
            return Err(format!(
                "upstream {label} self.received DATA with {} bare CR, {} bare LF, {} NUL (session {}, {} octets): ...{}...",
                d.bare_cr,
                d.bare_lf,
                d.nul,
                t.id,
                d.octets,
                crate::scenario::escape(&d.raw[from..(at_byte + 20).min(d.raw.len())])
            ));
        }
        Ok(())
    }

    fn upstream_data_has(&self, bytes: &[u8]) -> Result<(), String> {
        if !self.data_phases().any(|(_, _, d)| d.contains(bytes)) {
            return Err(format!(
                "no DATA phase an upstream self.received has \"{}\" ({} phase(s) seen)",
                crate::scenario::escape(bytes),
                self.data_phases().count()
            ));
        }
        Ok(())
    }

    fn nothing_upstream(&self) -> Result<(), String> {
        let envelope = self.upstream_lines.iter().find(|l| {
            let u = l.to_ascii_uppercase();
            u.starts_with("MAIL") || u.starts_with("RCPT") || u.starts_with("DATA")
        });
        if let Some(l) = envelope {
            return Err(format!("expected nothing upstream, it self.received {l:?}"));
        }
        if !self.received.is_empty() {
            return Err(format!(
                "expected nothing upstream, it got {} message(s)",
                self.received.len()
            ));
        }
        Ok(())
    }

    fn consistent(&self) -> Result<(), String> {
        let positive = |i: usize| {
            self.client
                .finals
                .get(i)
                .is_some_and(|r| r.as_ref().is_some_and(Reply::is_positive))
        };
        let exact = |i: usize| {
            self.received
                .iter()
                .any(|(_, r)| same_message(strip_trace(&r.content), &self.client.sent[i]))
        };
        // Messages sent with bare CR or LF, accepted, and arrived in a repaired form.
        let mut repaired: Vec<usize> = Vec::new();
        for (label, r) in self.received.iter().filter(|(_, r)| !is_bounce(r)) {
            let body = strip_trace(&r.content);
            let Some(i) = self.client.sent.iter().position(|m| same_message(body, m)) else {
                let stand_in = (0..self.client.sent.len()).find(|&i| {
                    self.client.bare.get(i) == Some(&true)
                        && positive(i)
                        && !exact(i)
                        && !repaired.contains(&i)
                });
                if let Some(i) = stand_in {
                    repaired.push(i);
                    continue;
                }
                return Err(format!(
                    "upstream {label} got a message that the client never sent; {}",
                    difference(body, &self.client.sent)
                ));
            };
            if let Some(Some(reply)) = self.client.finals.get(i)
                && !reply.is_positive()
            {
                return Err(format!(
                    "upstream {label} got message {} although the client was told {reply}",
                    i + 1
                ));
            }
        }
        let bounced = self.received.iter().any(|(_, r)| is_bounce(r));
        for (i, (m, reply)) in self.client.sent.iter().zip(&self.client.finals).enumerate() {
            let Some(reply) = reply else { continue };
            let arrived = repaired.contains(&i)
                || self
                    .received
                    .iter()
                    .any(|(_, r)| same_message(strip_trace(&r.content), m));
            if reply.severity() == smtp_wire::Severity::Completion && !arrived && !bounced {
                return Err(format!(
                    "the client was told {reply} for message {}, but no upstream got it and no bounce went out",
                    i + 1
                ));
            }
        }
        Ok(())
    }

    fn no_secrets(&self) -> Result<(), String> {
        let mut haystack = self.env.transcript(self.sc, self.client);
        for (_, t) in self.env.upstream_transcripts() {
            haystack.push_str(&t.text());
        }
        if let Some(spool) = &self.env.spool_dir
            && let Ok(files) = crate::spool::files(spool)
        {
            for f in files {
                if f.extension().is_some_and(|e| e == "json") {
                    haystack.push_str(&std::fs::read_to_string(&f).unwrap_or_default());
                }
            }
        }
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for secret in self.sc.secrets() {
            if haystack.contains(&secret) || haystack.contains(&b64(&secret)) {
                return Err(format!(
                    "the secret {secret:?} appears in a transcript or record"
                ));
            }
        }
        Ok(())
    }

    fn bounce_to(&self, addr: &str) -> Result<(), String> {
        let found = self
            .received
            .iter()
            .any(|(_, r)| is_bounce(r) && r.rcpt_to.iter().any(|a| a.eq_ignore_ascii_case(addr)));
        if !found {
            return Err(format!("no delivery status notification reached {addr}"));
        }
        Ok(())
    }
}
