//! Faults as one line of text, the scenario syntax (`RCPT bob@163.com: 451 4.7.1 busy,
//! twice`): read into a [`Fault`], and written back. Scenario files, the web page and the
//! HTTP API all speak it.

use std::time::Duration;

use super::{DropWhen, Fault, Quota, Stage};

/// Parses a fault in the fake upstream's terms:
/// `STAGE [ADDRESS]: ACTION[, SELECTOR]` or `drop before|after STAGE`.
///
/// ACTION: a reply (`451 4.7.1 busy`), `drop before`, `drop after`, `stall`,
/// `delay 300ms` (optionally `delay 300ms then 451 busy`), `tls failure`.
/// SELECTOR: `once`, `twice`, `N times` (the first N), `Nth time` / `time N`, `every N`,
/// `probability P`, `always` (the default).
pub fn parse_fault(text: &str) -> Result<Fault, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    for when in ["before", "after"] {
        if let Some(stage) = lower.strip_prefix(&format!("drop {when} ")) {
            let mut f = Fault::on(parse_stage(stage)?);
            f.drop = Some(if when == "before" {
                DropWhen::Before
            } else {
                DropWhen::After
            });
            return Ok(f);
        }
    }
    let (target, rest) = text
        .split_once(": ")
        .or_else(|| text.strip_suffix(':').map(|t| (t, "")))
        .ok_or_else(|| {
            format!(
                "{text:?}: expected STAGE [ADDRESS]: ACTION[, SELECTOR] or drop before|after STAGE"
            )
        })?;
    let mut words = target.split_whitespace().collect::<Vec<_>>();
    let address = match words.last() {
        Some(w) if w.contains('@') => {
            let a = w.trim_matches(|c| c == '<' || c == '>').to_string();
            words.pop();
            Some(a)
        }
        _ => None,
    };
    let mut fault = Fault::on(parse_stage(&words.join(" "))?);
    fault.address = address;
    // The selector, if the last comma-separated part is one.
    let (action, selector) = match rest.rsplit_once(", ") {
        Some((a, s)) if parse_selector(s, &mut fault.clone()).is_ok() => (a, Some(s)),
        _ => (rest, None),
    };
    if let Some(s) = selector {
        parse_selector(s, &mut fault)?;
    }
    let action = action.trim();
    let a = action.to_ascii_lowercase();
    if a == "drop before" {
        fault.drop = Some(DropWhen::Before);
    } else if a == "drop after" {
        fault.drop = Some(DropWhen::After);
    } else if a == "stall" {
        fault.stall = true;
    } else if a == "tls failure" {
        fault.tls_fail = true;
    } else if let Some(d) = a.strip_prefix("delay ") {
        let (d, then) = match d.split_once(" then ") {
            Some((d, _)) => (
                d,
                Some(&action[action.to_ascii_lowercase().find(" then ").unwrap() + 6..]),
            ),
            None => (d, None),
        };
        fault.delay_ms = Some(parse_duration(d)?.as_millis() as u64);
        if let Some(reply) = then {
            check_reply(reply)?;
            fault.reply = Some(reply.to_string());
        }
    } else {
        check_reply(action)?;
        fault.reply = Some(action.to_string());
    }
    Ok(fault)
}

pub fn check_reply(r: &str) -> Result<(), String> {
    let code = r.get(..3).filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
    match (code, r.as_bytes().get(3)) {
        (Some(_), None | Some(b' ') | Some(b'-')) => Ok(()),
        _ => Err(format!(
            "{r:?}: expected a reply (451 4.7.1 busy), drop before, drop after, stall, delay 300ms [then REPLY] or tls failure"
        )),
    }
}

pub fn parse_stage(s: &str) -> Result<Stage, String> {
    Ok(
        match s
            .trim()
            .to_ascii_lowercase()
            .replace(['-', '_'], " ")
            .as_str()
        {
            "connect" => Stage::Connect,
            "greeting" => Stage::Greeting,
            "ehlo" => Stage::Ehlo,
            "helo" => Stage::Helo,
            "starttls" => Stage::Starttls,
            "auth" => Stage::Auth,
            "mail" => Stage::Mail,
            "rcpt" => Stage::Rcpt,
            "data" => Stage::Data,
            "end of data" => Stage::EndOfData,
            "quit" => Stage::Quit,
            other => {
                return Err(format!(
                    "{other:?} is not a stage (connect, greeting, EHLO, HELO, STARTTLS, AUTH, MAIL, RCPT, DATA, end of data, QUIT)"
                ));
            }
        },
    )
}

pub fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Connect => "connect",
        Stage::Greeting => "greeting",
        Stage::Ehlo => "EHLO",
        Stage::Helo => "HELO",
        Stage::Starttls => "STARTTLS",
        Stage::Auth => "AUTH",
        Stage::Mail => "MAIL",
        Stage::Rcpt => "RCPT",
        Stage::Data => "DATA",
        Stage::EndOfData => "end of data",
        Stage::Quit => "QUIT",
    }
}

pub fn parse_selector(s: &str, f: &mut Fault) -> Result<(), String> {
    let s = s.trim().to_ascii_lowercase();
    let words: Vec<&str> = s.split_whitespace().collect();
    let num = |w: &str| {
        w.trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
    };
    match words.as_slice() {
        ["always"] => {}
        ["once"] => f.first = Some(1),
        ["twice"] => f.first = Some(2),
        [n, "times"] if num(n).is_some() => f.first = num(n),
        [n, "time"] if num(n).is_some() => f.nth = num(n),
        ["time", n] if num(n).is_some() => f.nth = num(n),
        ["every", n] if num(n).is_some() => f.every = num(n),
        ["for", d] => {
            let d = parse_duration(d)?;
            f.for_ms = Some(d.as_millis().max(1) as u64);
        }
        ["beyond", n, "per", d] if num(n).is_some() => {
            let d = parse_duration(d)?;
            f.quota = Some(Quota {
                count: num(n).unwrap_or(1),
                per_ms: d.as_millis().max(1) as u64,
            });
        }
        ["probability", p] => {
            let p: f64 = p
                .parse()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("{p:?} is not a probability in 0..1"))?;
            f.probability = Some(p);
        }
        _ => {
            return Err(format!(
                "{s:?} is not a selector (once, twice, N times, Nth time, every N, probability P, for DURATION, beyond N per DURATION, always)"
            ));
        }
    }
    Ok(())
}

/// `500ms`, `2s`, `1.5s`, `15m`, `24h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration (e.g. 500ms, 2s, 15m, 24h)");
    for (suffix, unit) in [("m", 60), ("h", 3600)] {
        if let Some(n) = s.strip_suffix(suffix).filter(|n| !n.ends_with('m')) {
            return n
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n < 1_000_000)
                .map(|n| Duration::from_secs(n * unit))
                .ok_or_else(bad);
        }
    }
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| bad());
    }
    if let Some(secs) = s.strip_suffix('s') {
        return secs
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e6)
            .map(Duration::from_secs_f64)
            .ok_or_else(bad);
    }
    Err(bad())
}

/// Writes a fault back in the form [`parse_fault`] reads.
pub fn fault_text(f: &Fault) -> String {
    let mut s = stage_name(f.stage).to_string();
    if let Some(a) = &f.address {
        s.push(' ');
        s.push_str(a);
    }
    s.push_str(": ");
    let action = if let Some(when) = f.drop {
        match when {
            DropWhen::Before => "drop before".to_string(),
            DropWhen::After => "drop after".to_string(),
        }
    } else if f.stall {
        "stall".into()
    } else if f.tls_fail {
        "tls failure".into()
    } else if let Some(ms) = f.delay_ms {
        match &f.reply {
            Some(r) => format!("delay {ms}ms then {r}"),
            None => format!("delay {ms}ms"),
        }
    } else {
        f.reply.clone().unwrap_or_else(|| "stall".into())
    };
    s.push_str(&action);
    if let Some(n) = f.first {
        match n {
            1 => s.push_str(", once"),
            2 => s.push_str(", twice"),
            n => s.push_str(&format!(", {n} times")),
        }
    } else if let Some(n) = f.nth {
        s.push_str(&format!(", time {n}"));
    } else if let Some(n) = f.every {
        s.push_str(&format!(", every {n}"));
    } else if let Some(p) = f.probability {
        s.push_str(&format!(", probability {p}"));
    } else if let Some(ms) = f.for_ms {
        s.push_str(&format!(", for {ms}ms"));
    } else if let Some(q) = f.quota {
        s.push_str(&format!(", beyond {} per {}ms", q.count, q.per_ms));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_in_the_fake_upstreams_terms() {
        let f = parse_fault("RCPT <bob@163.com>: 451 twice").unwrap();
        assert_eq!(
            (f.stage, f.address.as_deref(), f.reply.as_deref(), f.first),
            (Stage::Rcpt, Some("bob@163.com"), Some("451 twice"), None)
        );
        let f = parse_fault("RCPT bob@163.com: 451 busy, twice").unwrap();
        assert_eq!((f.reply.as_deref(), f.first), (Some("451 busy"), Some(2)));
        let f = parse_fault("drop after DATA").unwrap();
        assert_eq!((f.stage, f.drop), (Stage::Data, Some(DropWhen::After)));
        let f = parse_fault("end of data: delay 300ms then 451 later, every 2").unwrap();
        assert_eq!(
            (f.stage, f.delay_ms, f.reply.as_deref(), f.every),
            (Stage::EndOfData, Some(300), Some("451 later"), Some(2))
        );
        let f = parse_fault("connect: tls failure, once").unwrap();
        assert!(f.tls_fail && f.first == Some(1));
        let f = parse_fault("MAIL: stall, probability 0.5").unwrap();
        assert!(f.stall && f.probability == Some(0.5));
        let f = parse_fault("greeting: 421 HL:ICC, 3rd time").unwrap();
        assert_eq!(f.nth, Some(3));
        for bad in ["RCPT", "RCPX: 451 x", "RCPT: hello", "MAIL: delay soon"] {
            assert!(parse_fault(bad).is_err(), "{bad}");
        }
        for text in [
            "RCPT bob@163.com: 451 busy, twice",
            "RCPT bob@163.com: 451 busy, once",
            "MAIL: 451 busy, 3 times",
            "end of data: drop before",
            "DATA: delay 300ms then 451 later, time 2",
            "connect: tls failure, every 3",
        ] {
            assert_eq!(fault_text(&parse_fault(text).unwrap()), text);
        }
    }
}
