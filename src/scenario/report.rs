//! What a run prints: a line per scenario as it ends, a table at the end, and JUnit XML
//! for CI systems.

use std::fmt::Write as _;

use super::run::{Outcome, Verdict};

/// `PASS  name  0.12s`, and for a failure the reason on the next line.
pub fn line(o: &Outcome) -> String {
    let (word, reason) = match &o.verdict {
        Verdict::Pass => ("pass", None),
        Verdict::Fail(r) => ("FAIL", Some(r)),
        Verdict::Known(r) => ("known", Some(r)),
        Verdict::Skip(r) => ("skip", Some(r)),
    };
    let mut s = format!(
        "{word:<5}  {:<48} {:>7.2}s",
        o.name,
        o.duration.as_secs_f64()
    );
    if let Some(r) = reason {
        s.push_str(&format!("\n      {r}"));
    }
    s
}

/// The final table: every scenario with its result and time, failures with their reason,
/// and the totals.
pub fn table(outcomes: &[Outcome]) -> String {
    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut s = format!("{:<width$}  {:<6}  {:>8}\n", "scenario", "result", "time");
    s.push_str(&format!("{}\n", "-".repeat(width + 18)));
    for o in outcomes {
        let (word, reason) = match &o.verdict {
            Verdict::Pass => ("pass", None),
            Verdict::Fail(r) => ("FAIL", Some(r)),
            Verdict::Known(r) => ("known", Some(r)),
            Verdict::Skip(r) => ("skip", Some(r)),
        };
        let _ = writeln!(
            s,
            "{:<width$}  {word:<6}  {:>7.2}s",
            o.name,
            o.duration.as_secs_f64()
        );
        if let (Some(r), Verdict::Fail(_) | Verdict::Known(_)) = (reason, &o.verdict) {
            let _ = writeln!(s, "{:<width$}    {r}", "");
        }
    }
    let _ = writeln!(s, "\n{}", summary(outcomes));
    s
}

/// `N scenarios: P passed, F failed, S skipped` (and K known when a baseline expected some).
pub fn summary(outcomes: &[Outcome]) -> String {
    let (pass, fail, skip) = counts(outcomes);
    let known = known(outcomes);
    format!(
        "{} scenarios: {pass} passed, {fail} failed, {}{skip} skipped",
        outcomes.len(),
        if known > 0 {
            format!("{known} known (failing as the baseline says), ")
        } else {
            String::new()
        }
    )
}

/// (passed, failed, skipped): known failures are none of these.
pub fn counts(outcomes: &[Outcome]) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for o in outcomes {
        match o.verdict {
            Verdict::Pass => c.0 += 1,
            Verdict::Fail(_) => c.1 += 1,
            Verdict::Skip(_) => c.2 += 1,
            Verdict::Known(_) => {}
        }
    }
    c
}

/// Failures the baseline expected.
pub fn known(outcomes: &[Outcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Known(_)))
        .count()
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML (the Ant/Surefire dialect that Jenkins, GitLab and GitHub reporters read):
/// one `testcase` per scenario, a `failure` with the reason, `skipped`, and the transcript
/// of a failed scenario as its `system-out`.
pub fn junit(outcomes: &[Outcome]) -> String {
    let (_, fail, skip) = counts(outcomes);
    // JUnit has no expected failure: a known one is reported skipped, saying so.
    let skip = skip + known(outcomes);
    let total: f64 = outcomes.iter().map(|o| o.duration.as_secs_f64()).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"smtp-relay scenarios\" tests=\"{}\" failures=\"{fail}\" skipped=\"{skip}\" time=\"{total:.3}\">",
        outcomes.len()
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"scenarios\" tests=\"{}\" failures=\"{fail}\" errors=\"0\" skipped=\"{skip}\" time=\"{total:.3}\">",
        outcomes.len()
    );
    for o in outcomes {
        let _ = write!(
            s,
            "    <testcase name=\"{}\" classname=\"scenarios\" file=\"{}\" time=\"{:.3}\"",
            xml_escape(&o.name),
            xml_escape(&o.path.display().to_string()),
            o.duration.as_secs_f64()
        );
        match &o.verdict {
            Verdict::Pass => s.push_str("/>\n"),
            Verdict::Skip(r) => {
                let _ = writeln!(
                    s,
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                    xml_escape(r)
                );
            }
            Verdict::Known(r) => {
                let _ = writeln!(
                    s,
                    ">\n      <skipped message=\"known failure (baseline): {}\"/>\n    </testcase>",
                    xml_escape(r)
                );
            }
            Verdict::Fail(r) => {
                let _ = writeln!(
                    s,
                    ">\n      <failure message=\"{}\" type=\"scenario\">{}</failure>\n      <system-out>{}</system-out>\n    </testcase>",
                    xml_escape(r),
                    xml_escape(r),
                    xml_escape(&o.transcript)
                );
            }
        }
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn outcome(name: &str, verdict: Verdict) -> Outcome {
        Outcome {
            name: name.into(),
            path: PathBuf::from(format!("scenarios/{name}.scn")),
            verdict,
            duration: Duration::from_millis(120),
            transcript: "C: EHLO <x>\n".into(),
        }
    }

    #[test]
    fn junit_is_escaped_and_counts() {
        let x = junit(&[
            outcome("ok", Verdict::Pass),
            outcome(
                "bad",
                Verdict::Fail("line 3: expected 250, got 550 <no> & \"x\"\u{1}".into()),
            ),
            outcome("other", Verdict::Skip("not portable".into())),
        ]);
        assert!(
            x.contains("tests=\"3\" failures=\"1\" skipped=\"1\""),
            "{x}"
        );
        assert!(x.contains("<testcase name=\"ok\" classname=\"scenarios\" file=\"scenarios/ok.scn\" time=\"0.120\"/>"), "{x}");
        assert!(
            x.contains(
                "message=\"line 3: expected 250, got 550 &lt;no&gt; &amp; &quot;x&quot;\\x01\""
            ),
            "{x}"
        );
        assert!(
            x.contains("<system-out>C: EHLO &lt;x&gt;\n</system-out>"),
            "{x}"
        );
        assert!(x.contains("<skipped message=\"not portable\"/>"), "{x}");
        // Well-formed: every opened element is closed.
        assert_eq!(x.matches("<testcase").count(), 3);
        assert_eq!(
            x.matches("</testcase>").count() + x.matches("\"/>\n").count() - 1,
            3
        );
    }

    #[test]
    fn table_shows_reasons_and_totals() {
        let t = table(&[
            outcome("ok", Verdict::Pass),
            outcome(
                "bad",
                Verdict::Fail("line 3: expected 250, got 550 no".into()),
            ),
        ]);
        assert!(t.contains("ok        pass"), "{t}");
        assert!(t.contains("bad       FAIL"), "{t}");
        assert!(t.contains("line 3: expected 250, got 550 no"), "{t}");
        assert!(
            t.contains("2 scenarios: 1 passed, 1 failed, 0 skipped"),
            "{t}"
        );
    }
}

/// The outcomes as JSON: one object per scenario (name, file, verdict, reason, seconds) and
/// the counts.
pub fn json(outcomes: &[Outcome]) -> String {
    let (pass, fail, skip) = counts(outcomes);
    let known = known(outcomes);
    let items: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let (verdict, reason) = match &o.verdict {
                Verdict::Pass => ("pass", None),
                Verdict::Fail(r) => ("fail", Some(r.as_str())),
                Verdict::Known(r) => ("known", Some(r.as_str())),
                Verdict::Skip(r) => ("skip", Some(r.as_str())),
            };
            serde_json::json!({
                "name": o.name,
                "file": o.path.display().to_string(),
                "verdict": verdict,
                "reason": reason,
                "seconds": o.duration.as_secs_f64(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "passed": pass,
        "failed": fail,
        "known": known,
        "skipped": skip,
        "scenarios": items,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
}

/// The outcomes in the Test Anything Protocol (version 13).
pub fn tap(outcomes: &[Outcome]) -> String {
    let mut s = format!("TAP version 13\n1..{}\n", outcomes.len());
    for (i, o) in outcomes.iter().enumerate() {
        let n = i + 1;
        match &o.verdict {
            Verdict::Pass => {
                let _ = writeln!(s, "ok {n} - {}", o.name);
            }
            Verdict::Skip(r) => {
                let _ = writeln!(s, "ok {n} - {} # SKIP {}", o.name, one_line(r));
            }
            Verdict::Fail(r) => {
                let _ = writeln!(s, "not ok {n} - {}", o.name);
                let _ = writeln!(s, "  ---\n  message: {:?}\n  ...", one_line(r));
            }
            // TAP's TODO: a failure that is expected, not counted against the run.
            Verdict::Known(r) => {
                let _ = writeln!(s, "not ok {n} - {} # TODO {}", o.name, one_line(r));
            }
        }
    }
    s
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Only the failures, and the rest counted in one line (for runs against another relay,
/// where most of the library is skipped).
pub fn failures_only(outcomes: &[Outcome]) -> String {
    let failed: Vec<Outcome> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
        .cloned()
        .collect();
    let mut s = String::new();
    if !failed.is_empty() {
        s.push_str(&table(&failed));
        s.push('\n');
    }
    let _ = writeln!(s, "{}", summary(outcomes));
    s
}

/// What reached the shared upstream outside the scenario that sent it (runs against another
/// relay).
pub fn strays(strays: &[super::run::Stray]) -> String {
    let mut s = format!(
        "\n{} message(s) arrived outside the scenario that sent them:\n",
        strays.len()
    );
    for st in strays {
        let _ = writeln!(
            s,
            "  {} {}",
            if st.unattributed { "!" } else { "-" },
            st.what
        );
    }
    s
}

#[cfg(test)]
mod output_tests {
    use super::*;
    use std::time::Duration;

    fn o(name: &str, verdict: Verdict) -> Outcome {
        Outcome {
            name: name.into(),
            path: format!("scenarios/{name}.scn").into(),
            verdict,
            duration: Duration::from_millis(120),
            transcript: String::new(),
        }
    }

    #[test]
    fn json_tap_and_failures_only() {
        let all = [
            o("a", Verdict::Pass),
            o("b", Verdict::Fail("line 3: expected 250\ngot 451".into())),
            o("c", Verdict::Skip("requires PIPELINING".into())),
        ];
        let j: serde_json::Value = serde_json::from_str(&json(&all)).unwrap();
        assert_eq!(j["failed"], 1);
        assert_eq!(j["scenarios"][1]["verdict"], "fail");
        assert_eq!(j["scenarios"][2]["reason"], "requires PIPELINING");
        let t = tap(&all);
        assert!(
            t.starts_with("TAP version 13\n1..3\nok 1 - a\nnot ok 2 - b\n"),
            "{t}"
        );
        assert!(t.contains("ok 3 - c # SKIP requires PIPELINING"), "{t}");
        assert!(
            t.contains("message: \"line 3: expected 250 got 451\""),
            "{t}"
        );
        let f = failures_only(&all);
        assert!(f.contains("b ") && !f.contains("\na "), "{f}");
        assert!(
            f.ends_with("3 scenarios: 1 passed, 1 failed, 1 skipped\n"),
            "{f}"
        );
    }
}
