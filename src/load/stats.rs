//! What a load run measures: a latency histogram per phase (HdrHistogram, microseconds),
//! reply codes, counts; recorded per worker without contention, collected once a second
//! into interval histograms (the HdrHistogram interval log) and the run's totals.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The phases a message goes through, each with its own histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Connect,
    Tls,
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    /// MAIL and the RCPTs pipelined as one group.
    Envelope,
    /// DATA to its 354.
    Data,
    /// The end of data to the final reply.
    EndOfData,
    /// The whole message, from its start (intended start in the open-loop model) to the
    /// final reply, connection set-up included when it needed one.
    Message,
    /// From the message's start to the moment the upstream had it (`--self`).
    EndToEnd,
}

impl Phase {
    pub const ALL: [Phase; 13] = [
        Phase::Connect,
        Phase::Tls,
        Phase::Greeting,
        Phase::Ehlo,
        Phase::StartTls,
        Phase::Auth,
        Phase::Mail,
        Phase::Rcpt,
        Phase::Envelope,
        Phase::Data,
        Phase::EndOfData,
        Phase::Message,
        Phase::EndToEnd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Greeting => "greeting",
            Phase::Ehlo => "ehlo",
            Phase::StartTls => "starttls",
            Phase::Auth => "auth",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Envelope => "mail+rcpt",
            Phase::Data => "data-354",
            Phase::EndOfData => "end-of-data",
            Phase::Message => "message",
            Phase::EndToEnd => "end-to-end",
        }
    }

    fn index(self) -> usize {
        Phase::ALL.iter().position(|p| *p == self).expect("listed")
    }

    /// The load phase for one of the relay client's handshake phases.
    pub fn from_upstream(p: crate::upstream::Phase) -> Option<Phase> {
        use crate::upstream::Phase as U;
        Some(match p {
            U::Connect => Phase::Connect,
            U::Tls => Phase::Tls,
            U::Greeting => Phase::Greeting,
            U::Ehlo => Phase::Ehlo,
            U::StartTls => Phase::StartTls,
            U::Auth => Phase::Auth,
            _ => return None,
        })
    }
}

/// Latencies are recorded in microseconds, from 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// What one worker recorded since the last collection: the samples themselves, turned into
/// histograms once a tick ([`Recorder::absorb`]). A histogram per phase per worker would be
/// 13 x 188 KB, allocated again and merged every tick: with 400 connections, 1 GB a tick and
/// a stalled generator (measured: the first interval 380 ms late, a dip every 2 s).
#[derive(Debug, Default)]
pub struct Samples {
    times: Vec<(Phase, u64)>,
    pub codes: BTreeMap<String, u64>,
    pub delivered: u64,
    pub failed: u64,
    pub bytes: u64,
    /// The same again for the messages meant to start before the run's cut (a sweep step's
    /// fault held until then), wherever they finish.
    pub before_cut: Option<Box<Samples>>,
}

impl Samples {
    pub fn record(&mut self, phase: Phase, d: Duration) {
        self.times
            .push((phase, (d.as_micros() as u64).clamp(1, 3_600_000_000)));
    }

    pub fn count(&mut self, code: &str) {
        if let Some(n) = self.codes.get_mut(code) {
            *n += 1;
        } else {
            self.codes.insert(code.to_string(), 1);
        }
    }
}

/// What one interval, or the whole run, recorded.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub phases: Vec<Histogram<u64>>,
    /// Outcomes by reply code (`250`, `451`) or error kind (`timeout`, `closed`, ...).
    pub codes: BTreeMap<String, u64>,
    /// Messages that got a 2xx final reply.
    pub delivered: u64,
    /// Messages that did not.
    pub failed: u64,
    /// Message octets of the delivered messages.
    pub bytes: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            phases: Phase::ALL.iter().map(|_| histogram()).collect(),
            codes: BTreeMap::new(),
            delivered: 0,
            failed: 0,
            bytes: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, phase: Phase, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        // Within the bounds by the clamp; saturating in any case.
        self.phases[phase.index()].saturating_record(us);
    }

    pub fn phase(&self, phase: Phase) -> &Histogram<u64> {
        &self.phases[phase.index()]
    }

    pub fn count(&mut self, code: &str) {
        *self.codes.entry(code.to_string()).or_insert(0) += 1;
    }

    /// Adds a worker's samples.
    pub fn absorb(&mut self, s: Samples) {
        for (phase, us) in s.times {
            self.phases[phase.index()].saturating_record(us);
        }
        for (code, n) in s.codes {
            *self.codes.entry(code).or_insert(0) += n;
        }
        self.delivered += s.delivered;
        self.failed += s.failed;
        self.bytes += s.bytes;
    }

    /// Adds another recorder's counts (histograms added bucket by bucket).
    pub fn merge(&mut self, other: &Recorder) {
        for (a, b) in self.phases.iter_mut().zip(&other.phases) {
            // Same bounds on both sides: cannot fail.
            let _ = a.add(b);
        }
        for (code, n) in &other.codes {
            *self.codes.entry(code.clone()).or_insert(0) += n;
        }
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.bytes += other.bytes;
    }

    pub fn is_empty(&self) -> bool {
        self.delivered == 0 && self.failed == 0
    }
}

/// One interval of the run (one second, normally).
#[derive(Clone, Debug)]
pub struct Interval {
    /// From the run's start.
    pub start: Duration,
    pub length: Duration,
    pub data: Recorder,
}

/// Writes intervals in the HdrHistogram interval-log format (V2 compressed histograms, one
/// line per phase and interval, tagged with the phase name), which HdrHistogram's own tools
/// (HistogramLogProcessor, the plotters) read and merge across machines.
pub fn interval_log(
    intervals: &[Interval],
    started: std::time::SystemTime,
    comment: &str,
) -> Result<Vec<u8>, String> {
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    let mut out = Vec::new();
    let mut serializer = hdrhistogram::serialization::V2DeflateSerializer::new();
    {
        let mut writer = IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .add_comment("values in microseconds; one histogram per phase per interval, tagged with the phase")
            .with_start_time(started)
            .with_base_time(started)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| format!("interval log: {e}"))?;
        for iv in intervals {
            for phase in Phase::ALL {
                let h = iv.data.phase(phase);
                if h.is_empty() {
                    continue;
                }
                let tag = Tag::new(phase.name()).ok_or("a tag with a bad character")?;
                writer
                    .write_histogram(h, iv.start, iv.length, Some(tag))
                    .map_err(|e| format!("interval log: {e:?}"))?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_histograms() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for ms in 1..=100 {
            a.record(Phase::Message, Duration::from_millis(ms));
        }
        b.record(Phase::Message, Duration::from_secs(5));
        a.count("250");
        b.count("250");
        b.count("451");
        a.delivered = 100;
        b.delivered = 1;
        b.failed = 1;
        a.merge(&b);
        let h = a.phase(Phase::Message);
        assert_eq!(h.len(), 101);
        assert!(h.max() >= 4_990_000, "{}", h.max());
        let p50 = h.value_at_quantile(0.5);
        assert!((50_000..=51_100).contains(&p50), "{p50}");
        assert_eq!(a.codes["250"], 2);
        assert_eq!(a.codes["451"], 1);
        assert_eq!((a.delivered, a.failed), (101, 1));
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut r = Recorder::default();
        r.record(Phase::Connect, Duration::ZERO);
        r.record(Phase::Connect, Duration::from_secs(10_000));
        assert_eq!(r.phase(Phase::Connect).len(), 2);
    }

    #[test]
    fn the_interval_log_reads_back() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        let mut iv = Interval {
            start: Duration::from_secs(1),
            length: Duration::from_secs(1),
            data: Recorder::default(),
        };
        for us in [100u64, 200, 300, 4000] {
            iv.data.record(Phase::Message, Duration::from_micros(us));
            iv.data.record(Phase::Rcpt, Duration::from_micros(us / 2));
        }
        let log = interval_log(&[iv], std::time::SystemTime::UNIX_EPOCH, "test run").unwrap();
        let text = String::from_utf8(log.clone()).unwrap();
        assert!(text.starts_with("#test run\n"), "{text}");
        assert!(text.contains("#[StartTime: 0.000"), "{text}");
        let mut tags = Vec::new();
        let mut deserializer = hdrhistogram::serialization::Deserializer::new();
        for entry in IntervalLogIterator::new(&log) {
            if let Ok(LogEntry::Interval(h)) = entry {
                tags.push(h.tag().map(|t| t.as_str().to_string()));
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    h.encoded_histogram(),
                )
                .unwrap();
                let hist: Histogram<u64> = deserializer.deserialize(&mut bytes.as_slice()).unwrap();
                assert_eq!(hist.len(), 4);
                assert_eq!(h.start_timestamp(), Duration::from_secs(1));
            }
        }
        assert_eq!(
            tags,
            [Some("rcpt".to_string()), Some("message".to_string())]
        );
    }
}
