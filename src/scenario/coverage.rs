//! `smtp-relay scenarios --coverage CASES.md`: which numbered cases of an edge-case catalogue
//! (`../shared/smtp-edge-cases.md`: `## A. Section`, `12. **Title.**`, `- RFC: RFC 5321 §4.1.4`)
//! the scenarios test, which RFC sections those cases cite, and the cases and sections no
//! scenario tests. A scenario names the cases it tests with `covers: 70 71` or, as the
//! library's comments do, "Edge case 72" / "edge cases 76, 122".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// One numbered case of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub number: u32,
    pub title: String,
    pub section: String,
    /// `RFC 5321 §4.1.4`, as cited on its `RFC:` line.
    pub rfcs: Vec<String>,
}

/// Reads the catalogue's sections, numbered cases and their RFC citations.
pub fn parse_cases(text: &str) -> Vec<Case> {
    let title = regex::Regex::new(r"^(\d+)\.\s+\*\*(.+?)\*\*").expect("a valid pattern");
    let rfc = regex::Regex::new(r"RFC\s*(\d{3,4})\s*§\s*([0-9A-Z][0-9.]*[0-9A-Z]|[0-9A-Z])")
        .expect("a valid pattern");
    let bare = regex::Regex::new(r"^\s*§\s*([0-9][0-9.]*[0-9]|[0-9])").expect("a valid pattern");
    let mut cases: Vec<Case> = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_string();
            continue;
        }
        if let Some(c) = title.captures(line) {
            cases.push(Case {
                number: c[1].parse().unwrap_or(0),
                title: c[2].trim_end_matches('.').to_string(),
                section: section.clone(),
                rfcs: Vec::new(),
            });
            continue;
        }
        let t = line.trim_start();
        if let (Some(case), Some(cited)) = (cases.last_mut(), t.strip_prefix("- RFC:")) {
            // "RFC 5321 §4.1.4; RFC 2920 §3.1": each document's sections (a bare "§3.2" after a
            // document belongs to it).
            let mut doc = None;
            for part in cited.split([';', ',', '(', ')']) {
                for c in rfc.captures_iter(part) {
                    doc = Some(c[1].to_string());
                    case.rfcs.push(format!("RFC {} §{}", &c[1], &c[2]));
                }
                if let (Some(d), None) = (&doc, rfc.find(part))
                    && let Some(c) = bare.captures(part)
                {
                    case.rfcs.push(format!("RFC {d} §{}", &c[1]));
                }
            }
            case.rfcs.dedup();
        }
    }
    cases
}

/// The case numbers a scenario file says it tests: `covers:` lines and "edge case(s) N, M
/// and K" (or "smtp-edge-cases N") in its comments.
pub fn cited_cases(text: &str) -> BTreeSet<u32> {
    let mention =
        regex::Regex::new(r"(?i)(?:edge cases?|smtp-edge-cases)\s+(\d+(?:\s*(?:,|and|&)\s*\d+)*)")
            .expect("a valid pattern");
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let l = line.trim();
        if let Some(list) = l.strip_prefix("covers:") {
            out.extend(
                list.split([',', ' '])
                    .filter_map(|n| n.trim().parse::<u32>().ok()),
            );
        } else if l.starts_with('#') {
            for c in mention.captures_iter(l) {
                out.extend(
                    c[1].split(|ch: char| !ch.is_ascii_digit())
                        .filter_map(|n| n.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// The report: per section, each case and the scenarios that test it; then the totals and the
/// RFC sections by whether a tested case cites them.
pub fn report(cases: &[Case], scenarios: &[(String, BTreeSet<u32>)]) -> String {
    let mut by_case: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for (name, cited) in scenarios {
        for n in cited {
            by_case.entry(*n).or_default().push(name);
        }
    }
    let mut s = String::new();
    let mut section = None;
    for c in cases {
        if section != Some(&c.section) {
            let in_section: Vec<&Case> = cases.iter().filter(|x| x.section == c.section).collect();
            let covered = in_section
                .iter()
                .filter(|x| by_case.contains_key(&x.number))
                .count();
            let _ = writeln!(
                s,
                "\n{} ({covered} of {} cases tested)",
                c.section,
                in_section.len()
            );
            section = Some(&c.section);
        }
        match by_case.get(&c.number) {
            Some(names) => {
                let _ = writeln!(s, "  {:>3}. {}: {}", c.number, c.title, names.join(", "));
            }
            None => {
                let _ = writeln!(s, "  {:>3}. {}: none", c.number, c.title);
            }
        }
    }
    let covered = cases
        .iter()
        .filter(|c| by_case.contains_key(&c.number))
        .count();
    let _ = writeln!(
        s,
        "\n{covered} of {} cases have a scenario; {} scenario(s) cite a case.",
        cases.len(),
        scenarios.iter().filter(|(_, c)| !c.is_empty()).count()
    );
    let unknown: Vec<String> = by_case
        .keys()
        .filter(|n| !cases.iter().any(|c| c.number == **n))
        .map(u32::to_string)
        .collect();
    if !unknown.is_empty() {
        let _ = writeln!(s, "Cited but not in the catalogue: {}", unknown.join(", "));
    }
    let mut rfcs: BTreeMap<&str, bool> = BTreeMap::new();
    for c in cases {
        for r in &c.rfcs {
            *rfcs.entry(r).or_default() |= by_case.contains_key(&c.number);
        }
    }
    let yes: Vec<&str> = rfcs.iter().filter(|(_, v)| **v).map(|(k, _)| *k).collect();
    let no: Vec<&str> = rfcs.iter().filter(|(_, v)| !**v).map(|(k, _)| *k).collect();
    let _ = writeln!(
        s,
        "\nRFC sections cited by a tested case ({}): {}",
        yes.len(),
        yes.join(", ")
    );
    let _ = writeln!(
        s,
        "RFC sections cited only by untested cases ({}): {}",
        no.len(),
        no.join(", ")
    );
    s
}

/// Reads the catalogue and the scenario files, and makes the report.
pub fn run(catalogue: &Path, files: &[std::path::PathBuf]) -> Result<String, String> {
    let text =
        std::fs::read_to_string(catalogue).map_err(|e| format!("{}: {e}", catalogue.display()))?;
    let cases = parse_cases(&text);
    if cases.is_empty() {
        return Err(format!(
            "{}: no numbered cases (`12. **Title.**`) found",
            catalogue.display()
        ));
    }
    let mut scenarios = Vec::new();
    for f in files {
        let t = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        scenarios.push((name, cited_cases(&t)));
    }
    scenarios.sort();
    Ok(report(&cases, &scenarios))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOGUE: &str = "# Cases\n\n## A. Greeting\n\n1. **Early talker.**\n   - RFC: RFC 5321 §3.1; RFC 2920 §3.1.\n2. **EHLO without an argument.**\n   - RFC: RFC 5321 §4.1.4 (\"...\"), §4.1.1.1.\n\n## G. DATA\n\n70. **Bare LF inside DATA.**\n    - RFC: RFC 5321 §2.3.8, §4.1.1.4.\n";

    #[test]
    fn cases_sections_and_rfcs() {
        let cases = parse_cases(CATALOGUE);
        assert_eq!(cases.len(), 3);
        assert_eq!(cases[0].title, "Early talker");
        assert_eq!(cases[0].section, "A. Greeting");
        assert_eq!(cases[0].rfcs, ["RFC 5321 §3.1", "RFC 2920 §3.1"]);
        assert_eq!(cases[1].rfcs, ["RFC 5321 §4.1.4", "RFC 5321 §4.1.1.1"]);
        assert_eq!(cases[2].number, 70);
        assert_eq!(cases[2].section, "G. DATA");
        assert_eq!(cases[2].rfcs, ["RFC 5321 §2.3.8", "RFC 5321 §4.1.1.4"]);
    }

    #[test]
    fn citations_in_comments_and_covers_lines() {
        let text = "# Edge case 72, as OpenSMTPD was attacked\n# see edge cases 76, 122 and 7\n# smtp-edge-cases 70 asks\ncovers: 3 4\nC: edge case 99 is content, not a citation\n";
        assert_eq!(
            cited_cases(text).into_iter().collect::<Vec<_>>(),
            [3, 4, 7, 70, 72, 76, 122]
        );
    }

    #[test]
    fn the_report_names_what_no_scenario_tests() {
        let cases = parse_cases(CATALOGUE);
        let scenarios = vec![
            ("data-bare-lf".to_string(), BTreeSet::from([70, 500])),
            ("other".to_string(), BTreeSet::new()),
        ];
        let r = report(&cases, &scenarios);
        assert!(r.contains("A. Greeting (0 of 2 cases tested)"), "{r}");
        assert!(r.contains("    1. Early talker: none"), "{r}");
        assert!(r.contains("G. DATA (1 of 1 cases tested)"), "{r}");
        assert!(
            r.contains("   70. Bare LF inside DATA: data-bare-lf"),
            "{r}"
        );
        assert!(
            r.contains("1 of 3 cases have a scenario; 1 scenario(s) cite a case."),
            "{r}"
        );
        assert!(r.contains("Cited but not in the catalogue: 500"), "{r}");
        assert!(
            r.contains(
                "RFC sections cited by a tested case (2): RFC 5321 §2.3.8, RFC 5321 §4.1.1.4"
            ),
            "{r}"
        );
        assert!(r.contains("cited only by untested cases (4)"), "{r}");
    }
}
