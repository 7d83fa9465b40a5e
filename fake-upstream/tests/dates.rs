//! Property tests of the date redaction the transcript normalisers use: every RFC 5322 date form,
//! generated part by part and by chrono for any instant and zone, becomes `<date>` and nothing
//! around it changes.

use chrono::{FixedOffset, TimeZone};
use fake_upstream::dates::replace_dates;
use fake_upstream::testing::normalize;
use proptest::prelude::*;

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const NAMED_ZONES: [&str; 12] = [
    "UT", "GMT", "EST", "EDT", "CST", "CDT", "MST", "MDT", "PST", "PDT", "Z", "A",
];

fn blank() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![Just(' '), Just('\t')], 1..3)
        .prop_map(|v| v.into_iter().collect())
}

fn case(s: &str, upper: bool, lower: bool) -> String {
    if upper {
        s.to_ascii_uppercase()
    } else if lower {
        s.to_ascii_lowercase()
    } else {
        s.to_string()
    }
}

prop_compose! {
    /// One RFC 5322 date, built from its grammar's parts with their optional pieces.
    fn rfc5322_date()(
        weekday in prop::option::of((0..7usize, prop::bool::ANY)),
        day in 1..=31u32,
        pad in prop::bool::ANY,
        month in 0..12usize,
        year in prop_oneof![1900..=2199u32, 0..=99u32],
        hour in 0..24u32, minute in 0..60u32, second in prop::option::of(0..61u32),
        numeric_zone in prop::bool::ANY,
        offset in -1200..=1400i32,
        named in 0..NAMED_ZONES.len(),
        comment in prop::option::of("[A-Za-z ]{1,10}"),
        (upper, lower) in (prop::bool::ANY, prop::bool::ANY),
        s in prop::collection::vec(blank(), 6),
    ) -> String {
        let mut d = String::new();
        if let Some((w, space_before_comma)) = weekday {
            d.push_str(&case(DAYS[w], upper, lower));
            if space_before_comma { d.push(' '); }
            d.push(',');
            d.push_str(&s[0]);
        }
        if pad { d.push_str(&format!("{day:02}")) } else { d.push_str(&day.to_string()) }
        d.push_str(&s[1]);
        d.push_str(&case(MONTHS[month], upper, lower));
        d.push_str(&s[2]);
        d.push_str(&if year < 100 { format!("{year:02}") } else { year.to_string() });
        d.push_str(&s[3]);
        d.push_str(&format!("{hour:02}:{minute:02}"));
        if let Some(sec) = second { d.push_str(&format!(":{sec:02}")); }
        d.push_str(&s[4]);
        if numeric_zone {
            let sign = if offset < 0 { '-' } else { '+' };
            d.push_str(&format!("{sign}{:04}", offset.unsigned_abs()));
        } else {
            d.push_str(&case(NAMED_ZONES[named], upper, lower));
        }
        if let Some(c) = comment {
            d.push_str(&s[5]);
            d.push_str(&format!("({c})"));
        }
        d
    }
}

/// Text around a date: never a letter or digit where it touches the date.
fn surround() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![Just(String::new()), "[ -~]{0,20}[ ;:\t]"],
        prop_oneof![Just(String::new()), "[;\r,.\"][ -~]{0,20}"],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_generated_date_is_redacted(date in rfc5322_date(), (before, after) in surround()) {
        let line = format!("{before}{date}{after}");
        let want = format!("{}<date>{}", replace_dates(&before), replace_dates(&after));
        prop_assert_eq!(replace_dates(&line), want);
    }

    /// What chrono writes (the relay's `Received:` line, the DSN) and what the fake 163 writes,
    /// for any instant from 1970 to 2199 and any zone.
    #[test]
    fn dates_as_written_by_the_relay_and_the_fake(
        secs in 0i64..7_258_118_400,
        offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59i32),
    ) {
        let zone = FixedOffset::east_opt(offset_minutes * 60).expect("in range");
        let t = zone.timestamp_opt(secs, 0).single().expect("unambiguous");
        let written = [
            t.to_rfc2822(),
            t.format("%a, %d %b %Y %H:%M:%S %z (CST)").to_string(),
            t.format("%-d %b %Y %H:%M %z").to_string(),
        ];
        for w in written {
            let line = format!("Received: from x by y; {w}");
            prop_assert_eq!(normalize(&line), "Received: from x by y; <date>\n");
        }
    }

    /// Text with no date in it passes through unchanged.
    #[test]
    fn text_without_dates_is_unchanged(s in "[a-zA-Z0-9 ,:+()-]{0,60}") {
        prop_assume!(!s.contains(':'));
        prop_assert_eq!(replace_dates(&s), s);
    }
}

/// Fingerprints of keys made per run are redacted; anything shorter than a SHA-256 stays.
#[test]
fn fingerprints_are_redacted_and_only_them() {
    let fp = (0..32)
        .map(|i| format!("{i:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(
        normalize(&format!(
            "pin [\"sha256:{fp}\"] (or its key, \"sha256:{fp}\")"
        )),
        "pin [\"sha256:<fingerprint>\"] (or its key, \"sha256:<fingerprint>\")\n"
    );
    assert_eq!(
        normalize("sha256:AB:CD and more"),
        "sha256:AB:CD and more\n"
    );
}
