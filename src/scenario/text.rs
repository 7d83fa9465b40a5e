//! A scenario written back as text that [`Scenario::parse`] reads to the same scenario: its
//! upstream's lines, one line per step, one per check.

use super::*;

/// The default upstream's `upstream*:` and `user:` lines.
pub(super) fn upstream_text(up: &Upstream, s: &mut String) {
    s.push_str(&format!("upstream: {}\n", up.persona));
    if let Some(e) = &up.era {
        s.push_str(&format!("upstream-era: {e}\n"));
    }
    if let Some(p) = up.pipelining {
        s.push_str(&format!(
            "upstream-pipelining: {}\n",
            if p { "on" } else { "off" }
        ));
    }
    if !up.without.is_empty() {
        s.push_str(&format!("upstream-without: {}\n", up.without.join(" ")));
    }
    if up.no_limits {
        s.push_str("upstream-no-limits: yes\n");
    }
    if !up.limits.is_empty() {
        let kv: Vec<String> = up.limits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!("upstream-limit: {}\n", kv.join(" ")));
    }
    if let Some(kind) = up.cert {
        s.push_str(&format!("upstream-cert: {}\n", kind.as_str()));
    }
    if let Some(p) = &up.tls_policy {
        s.push_str(&format!("upstream-tls-policy: {p}\n"));
    }
    if up.tls != "implicit" {
        s.push_str(&format!("upstream-tls: {}\n", up.tls));
    }
    for u in up.users.iter().flatten() {
        let off = if u.smtp { "" } else { " smtp-off" };
        s.push_str(&format!("user: {} {}{off}\n", u.address, u.code));
    }
}

/// A step's line (or lines, for a multi-line reply expected).
pub(super) fn step_text(step: &Step, s: &mut String) {
    match step {
        Step::Connect { tls: false } => s.push_str("connect\n"),
        Step::Connect { tls: true } => s.push_str("connect tls\n"),
        Step::Send(bytes) => match bytes.strip_suffix(b"\r\n") {
            Some(line)
                if !line.contains(&b'\r')
                    && !line.contains(&b'\n')
                    && line.iter().all(|b| (0x20..0x7f).contains(b))
                    && !line.starts_with(b" ")
                    && !contains_template(line) =>
            {
                s.push_str(&format!("C: {}\n", String::from_utf8_lossy(line)));
            }
            _ => s.push_str(&format!("raw: {}\n", escape(bytes))),
        },
        Step::Flush => s.push_str("flush\n"),
        Step::Expect(e) if !e.or.is_empty() => {
            let alts: Vec<String> = e
                .lines
                .iter()
                .chain(&e.or)
                .map(|(code, text)| match text {
                    Some(t) => format!("{} {t}", code.0),
                    None => code.0.clone(),
                })
                .collect();
            s.push_str(&format!("S: {}\n", alts.join(" | ")));
        }
        Step::Expect(e) => {
            let last = e.lines.len() - 1;
            for (i, (code, text)) in e.lines.iter().enumerate() {
                let sep = if i == last { ' ' } else { '-' };
                match text {
                    Some(t) => s.push_str(&format!("S: {}{sep}{t}\n", code.0)),
                    None if sep == '-' => s.push_str(&format!("S: {}-*\n", code.0)),
                    None => s.push_str(&format!("S: {}\n", code.0)),
                }
            }
        }
        Step::Close => s.push_str("close\n"),
        Step::Sleep(d) => s.push_str(&format!("sleep {}\n", format_duration(*d))),
        Step::AdvanceClock(d) => s.push_str(&format!("upstream clock +{}\n", format_duration(*d))),
        Step::Within(d) => s.push_str(&format!("within {}\n", format_duration(*d))),
        Step::StartTls => s.push_str("starttls\n"),
        Step::Tls => s.push_str("tls\n"),
        Step::Auth {
            mechanism,
            user,
            secret,
        } => s.push_str(&format!("auth {mechanism} {user} {secret}\n")),
        Step::Message(p) => s.push_str(&format!("message: {}\n", p.display())),
        Step::Quit => s.push_str("quit\n"),
        Step::Shutdown => s.push_str("shutdown\n"),
        Step::Drain => s.push_str("drain\n"),
        Step::GeneratedMessage(n) => s.push_str(&format!("message size {n}\n")),
        Step::Bdat { content, last } => s.push_str(&format!(
            "bdat{}: {}\n",
            if *last { " last" } else { "" },
            escape(content)
        )),
        Step::BdatMessage { message, chunk } => {
            let chunks = chunk.map(|n| format!(" chunks {n}")).unwrap_or_default();
            match message {
                MessageSource::File(p) => {
                    s.push_str(&format!("bdat message: {}{chunks}\n", p.display()))
                }
                MessageSource::Generated(n) => {
                    s.push_str(&format!("bdat message size {n}{chunks}\n"))
                }
            }
        }
    }
}

/// A check's line.
pub(super) fn check_text(check: &Check, s: &mut String) {
    match check {
        Check::Delivered(r) => s.push_str(&format!("expect delivered: {}\n", r.join(" "))),
        Check::Messages(n) => s.push_str(&format!("expect messages: {n}\n")),
        Check::MessagesAtMost(n) => s.push_str(&format!("expect messages: at most {n}\n")),
        Check::NotDelivered(r) => s.push_str(&format!("expect not delivered: {}\n", r.join(" "))),
        Check::UpstreamData7Bit => s.push_str("expect upstream data 7bit\n"),
        Check::NoHeaderAdded => s.push_str("expect no header added\n"),
        Check::UpstreamDataMatches(re) => {
            s.push_str(&format!("expect upstream data matches: {re}\n"))
        }
        Check::BodyIntact => s.push_str("expect body intact\n"),
        Check::UpstreamGot(b) => s.push_str(&format!("expect upstream got: {}\n", escape(b))),
        Check::UpstreamSaw(t) => s.push_str(&format!("expect upstream saw: {t}\n")),
        Check::UpstreamNeverSaw(t) => s.push_str(&format!("expect upstream never saw: {t}\n")),
        Check::NothingUpstream => s.push_str("expect nothing upstream\n"),
        Check::UpstreamDataClean => s.push_str("expect upstream data clean\n"),
        Check::UpstreamSender(a) => s.push_str(&format!("expect upstream sender: {a}\n")),
        Check::UpstreamDataHas(b) => {
            s.push_str(&format!("expect upstream data has: {}\n", escape(b)))
        }
        Check::BounceTo(a) => s.push_str(&format!("expect bounce to: {a}\n")),
        Check::Consistent => s.push_str("expect consistent\n"),
        Check::NoSecrets => s.push_str("expect no secrets\n"),
    }
}
