//! The integrity stamp `smtp-relay load` puts on each message
//! (`X-Smtp-Relay-Load: <run> <n> <start µs> <body hash>`), read where the message arrives: the
//! load generator's own sink (`--self`) and this fake, which tallies every stamped message it
//! accepts per run, so that several generators of one run (on several machines) are checked
//! together (`GET /api/v1/load/<run>`).

use std::collections::{HashMap, HashSet};

/// The header's name.
pub const HEADER: &str = "X-Smtp-Relay-Load";

/// FNV-1a, 64 bits: the body hash in the stamp.
pub fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A message's stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub run: u64,
    /// The message's number in its run.
    pub n: u64,
    /// When it was started, in µs from its generator's start.
    pub started_us: u64,
    /// The body's hash as sent.
    pub hash: u64,
    /// The body that arrived has that hash.
    pub intact: bool,
}

/// The stamp of `message` (its header block searched, its body hashed), if it has one.
pub fn read(message: &[u8]) -> Option<Stamp> {
    let head_end = memchr::memmem::find(message, b"\r\n\r\n").unwrap_or(message.len());
    let head = &message[..head_end];
    let needle = format!("{HEADER}: ");
    let at = memchr::memmem::find(head, needle.as_bytes())?;
    let line = &head[at + needle.len()..];
    let line = &line[..memchr::memchr(b'\r', line).unwrap_or(line.len())];
    let text = std::str::from_utf8(line).ok()?;
    let mut fields = text.split(' ');
    let run = u64::from_str_radix(fields.next()?, 16).ok()?;
    let n = fields.next()?.parse().ok()?;
    let started_us = fields.next()?.parse().ok()?;
    let hash = u64::from_str_radix(fields.next()?, 16).ok()?;
    if fields.next().is_some() {
        return None;
    }
    let body = message.get(head_end + 4..).unwrap_or(&[]);
    Some(Stamp {
        run,
        n,
        started_us,
        hash,
        intact: fnv64(body) == hash,
    })
}

/// The most message numbers remembered per run (to count duplicates): 8 bytes each.
pub const SEEN_MAX: usize = 10_000_000;
/// The most runs tallied at once (the oldest is dropped).
pub const RUNS_MAX: usize = 64;

/// One run's arrivals.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub intact: u64,
    pub corrupted: u64,
    pub duplicates: u64,
    /// Distinct message numbers seen.
    pub unique: u64,
    /// More than [`SEEN_MAX`] numbers: duplicates are no longer counted.
    pub seen_overflow: bool,
    #[serde(skip)]
    seen: HashSet<u64>,
    #[serde(skip)]
    order: u64,
}

/// Arrivals per run.
#[derive(Debug, Default)]
pub struct Tallies {
    runs: HashMap<u64, Tally>,
    next: u64,
}

impl Tallies {
    /// Counts a stamped message.
    pub fn record(&mut self, s: &Stamp) {
        if !self.runs.contains_key(&s.run) && self.runs.len() >= RUNS_MAX {
            let oldest = self
                .runs
                .iter()
                .min_by_key(|(_, t)| t.order)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.runs.remove(&k);
            }
        }
        self.next += 1;
        let order = self.next;
        let t = self.runs.entry(s.run).or_insert_with(|| Tally {
            order,
            ..Tally::default()
        });
        if s.intact {
            t.intact += 1;
        } else {
            t.corrupted += 1;
        }
        if t.seen.len() < SEEN_MAX {
            if t.seen.insert(s.n) {
                t.unique += 1;
            } else {
                t.duplicates += 1;
            }
        } else {
            t.seen_overflow = true;
            if !t.seen.contains(&s.n) {
                t.unique += 1;
            }
        }
    }

    pub fn get(&self, run: u64) -> Option<Tally> {
        self.runs.get(&run).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_and_tallied() {
        let body = b"hello\r\n";
        let msg = format!(
            "{HEADER}: 00000000000000ab 7 1500 {:016x}\r\nSubject: x\r\n\r\nhello\r\n",
            fnv64(body)
        );
        let s = read(msg.as_bytes()).unwrap();
        assert_eq!((s.run, s.n, s.started_us, s.intact), (0xab, 7, 1500, true));
        let bad = msg.replace("hello\r\n", "hellO\r\n");
        assert!(!read(bad.as_bytes()).unwrap().intact);
        assert!(read(b"Subject: x\r\n\r\nno stamp\r\n").is_none());
        assert!(read(format!("{HEADER}: zz 1 2 3\r\n\r\n").as_bytes()).is_none());
        let mut t = Tallies::default();
        t.record(&s);
        t.record(&s);
        t.record(&read(bad.as_bytes()).unwrap());
        let got = t.get(0xab).unwrap();
        assert_eq!(
            (got.intact, got.corrupted, got.duplicates, got.unique),
            (2, 1, 2, 1)
        );
        assert!(t.get(1).is_none());
    }
}
