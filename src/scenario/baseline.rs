//! `--baseline FILE`: the findings a relay under test is known to have, so that CI fails only
//! when its results change. One line per scenario expected to fail:
//!
//! ```text
//! # OpenSMTPD 6.8.0p2 (Debian 12)
//! smuggle-lf-dot-lf-separate-writes  line 34  takes LF . LF as the end of DATA
//! proto-headers-not-added                     adds Date: and Message-ID: (acts as submission)
//! ```
//!
//! `line N` pins the failure to the scenario line that fails (a failure elsewhere in the same
//! scenario is a change); the rest is the reason, shown with the verdict. A listed scenario
//! that fails as listed is `known`; one that passes now fails the run (the baseline is stale:
//! take the line out), as does one failing at another line.

use std::path::Path;

use super::run::{Outcome, Verdict};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// The scenario line its failure is at.
    pub line: Option<usize>,
    pub why: String,
    /// Where in the baseline file it is written.
    pub at: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    pub file: String,
    pub entries: Vec<Entry>,
}

impl Baseline {
    pub fn load(path: &Path) -> Result<Baseline, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Baseline::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, file: &str) -> Result<Baseline, String> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let at = i + 1;
            let line = raw.split_once('#').map_or(raw, |(l, _)| l).trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace().peekable();
            let name = words.next().unwrap_or_default().to_string();
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(format!("{file}:{at}: {name:?} is not a scenario name"));
            }
            let mut pinned = None;
            if words.peek() == Some(&"line") {
                words.next();
                let n = words.next().unwrap_or_default();
                pinned = Some(n.parse::<usize>().map_err(|_| {
                    format!("{file}:{at}: expected a line number after `line`, got {n:?}")
                })?);
            }
            if let Some(first) = entries.iter().find(|e| e.name == name) {
                return Err(format!(
                    "{file}:{at}: {name} is already listed at line {}",
                    first.at
                ));
            }
            entries.push(Entry {
                name,
                line: pinned,
                why: words.collect::<Vec<_>>().join(" "),
                at,
            });
        }
        Ok(Baseline {
            file: file.to_string(),
            entries,
        })
    }

    /// Turns the failures it lists into `Known`, and a listed scenario that passes (or fails
    /// elsewhere than pinned) into a failure. Returns the entries that name no scenario of
    /// this run (a typo, or a scenario left out by the selection).
    pub fn apply(&self, outcomes: &mut [Outcome]) -> Vec<&Entry> {
        let mut unmatched = Vec::new();
        for e in &self.entries {
            let Some(o) = outcomes.iter_mut().find(|o| o.name == e.name) else {
                unmatched.push(e);
                continue;
            };
            let why = if e.why.is_empty() {
                String::new()
            } else {
                format!(": {}", e.why)
            };
            o.verdict = match std::mem::replace(&mut o.verdict, Verdict::Pass) {
                Verdict::Fail(r) => match e.line {
                    Some(n) if !r.starts_with(&format!("line {n}:")) => Verdict::Fail(format!(
                        "{r}\n(the baseline {}:{} expects it to fail at line {n}{why})",
                        self.file, e.at
                    )),
                    _ => Verdict::Known(format!("{r} (baseline{why})")),
                },
                Verdict::Pass => Verdict::Fail(format!(
                    "passes, but the baseline {}:{} says it fails{why}: take that line out",
                    self.file, e.at
                )),
                other => other,
            };
        }
        unmatched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn o(name: &str, verdict: Verdict) -> Outcome {
        Outcome {
            name: name.into(),
            path: format!("scenarios/{name}.scn").into(),
            verdict,
            duration: Duration::ZERO,
            transcript: String::new(),
        }
    }

    const TEXT: &str = "# a relay\n\nsmuggle-a  line 34  takes LF.LF # as the end\nheaders adds Date:\nfixed line 3\nskipped\nmissing\n";

    #[test]
    fn parses_names_lines_and_reasons() {
        let b = Baseline::parse(TEXT, "b.expected").unwrap();
        assert_eq!(b.entries.len(), 5);
        assert_eq!(
            b.entries[0],
            Entry {
                name: "smuggle-a".into(),
                line: Some(34),
                why: "takes LF.LF".into(),
                at: 3
            }
        );
        assert_eq!(b.entries[1].line, None);
        assert_eq!(b.entries[1].why, "adds Date:");
        for (bad, says) in [
            ("a line x\n", "expected a line number"),
            ("a\na\n", "already listed at line 1"),
            ("a/b\n", "not a scenario name"),
        ] {
            let e = Baseline::parse(bad, "f").unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn known_failures_stale_entries_and_moved_failures() {
        let b = Baseline::parse(TEXT, "b.expected").unwrap();
        let mut outcomes = vec![
            o(
                "smuggle-a",
                Verdict::Fail("line 34: upstream got MAIL".into()),
            ),
            o("headers", Verdict::Fail("line 21: differs".into())),
            o("fixed", Verdict::Pass),
            o("skipped", Verdict::Skip("requires PIPELINING".into())),
            o("new", Verdict::Fail("line 9: a new finding".into())),
            o("moved", Verdict::Pass),
        ];
        let mut moved = Baseline::parse("moved line 5\n", "m").unwrap();
        moved.entries[0].name = "smuggle-a".into();
        let unmatched = b.apply(&mut outcomes);
        assert_eq!(
            outcomes[0].verdict,
            Verdict::Known("line 34: upstream got MAIL (baseline: takes LF.LF)".into())
        );
        assert!(matches!(&outcomes[1].verdict, Verdict::Known(r) if r.contains("adds Date:")));
        assert!(
            matches!(&outcomes[2].verdict, Verdict::Fail(r) if r.contains("passes, but the baseline b.expected:5 says it fails: take that line out")),
            "{:?}",
            outcomes[2].verdict
        );
        assert!(matches!(outcomes[3].verdict, Verdict::Skip(_)));
        assert_eq!(
            outcomes[4].verdict,
            Verdict::Fail("line 9: a new finding".into())
        );
        assert_eq!(
            unmatched
                .iter()
                .map(|e| (e.at, e.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(7, "missing")]
        );
        // Pinned to line 5, failing at line 34: a change, so a failure.
        let mut again = vec![o("smuggle-a", Verdict::Fail("line 34: x".into()))];
        moved.apply(&mut again);
        assert!(
            matches!(&again[0].verdict, Verdict::Fail(r) if r.contains("expects it to fail at line 5")),
            "{:?}",
            again[0].verdict
        );
    }
}
