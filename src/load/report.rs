//! A load run's results: the table on the terminal, `--json`, and `--html` (a self-contained
//! page with a latency-percentile plot and throughput over time, inline SVG, no scripts).

use std::fmt::Write as _;

use serde::Serialize;

use super::Outcome;
use super::stats::{Phase, Recorder};

const QUANTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9")];

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// The final table: throughput, then per phase the count and p50/p90/p99/p99.9/max in ms,
/// then the replies by code, then integrity when an observer watched.
pub fn table(title: &str, o: &Outcome) -> String {
    let t = &o.total;
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    let mut s = format!(
        "{title}\n  {} messages delivered, {} failed in {:.2}s: {:.0} msgs/s, {:.2} MB/s\n",
        t.delivered,
        t.failed,
        secs,
        o.rate(),
        t.bytes as f64 / secs / 1e6
    );
    if o.not_run > 0 {
        let _ = writeln!(
            s,
            "  {} scheduled messages not run (the run ended first)",
            o.not_run
        );
    }
    let _ = writeln!(
        s,
        "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "phase (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for phase in Phase::ALL {
        let h = t.phase(phase);
        if h.is_empty() {
            continue;
        }
        let _ = write!(s, "  {:<12} {:>9}", phase.name(), h.len());
        for (q, _) in QUANTILES {
            let _ = write!(s, " {:>9.3}", ms(h.value_at_quantile(q)));
        }
        let _ = writeln!(s, " {:>9.3}", ms(h.max()));
    }
    let codes: Vec<String> = t.codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
    let _ = writeln!(s, "  replies      {}", codes.join(", "));
    if o.observed {
        let _ = writeln!(
            s,
            "  integrity    {} intact, {} corrupted, {} lost, {} duplicated",
            o.intact,
            o.corrupted,
            o.lost(),
            o.duplicates
        );
    }
    s
}

#[derive(Serialize)]
struct PhaseJson {
    phase: &'static str,
    count: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

#[derive(Serialize)]
struct IntervalJson {
    start_s: f64,
    length_s: f64,
    delivered: u64,
    failed: u64,
    msgs_per_s: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct RunJson<'a> {
    name: &'a str,
    delivered: u64,
    failed: u64,
    not_run: u64,
    seconds: f64,
    msgs_per_s: f64,
    mb_per_s: f64,
    phases: Vec<PhaseJson>,
    replies: &'a std::collections::BTreeMap<String, u64>,
    integrity: Option<IntegrityJson>,
    intervals: Vec<IntervalJson>,
}

#[derive(Serialize)]
struct IntegrityJson {
    intact: u64,
    corrupted: u64,
    lost: u64,
    duplicated: u64,
}

fn phases(t: &Recorder) -> Vec<PhaseJson> {
    Phase::ALL
        .iter()
        .filter(|p| !t.phase(**p).is_empty())
        .map(|&p| {
            let h = t.phase(p);
            PhaseJson {
                phase: p.name(),
                count: h.len(),
                p50_ms: ms(h.value_at_quantile(0.5)),
                p90_ms: ms(h.value_at_quantile(0.9)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                p999_ms: ms(h.value_at_quantile(0.999)),
                max_ms: ms(h.max()),
                mean_ms: h.mean() / 1000.0,
            }
        })
        .collect()
}

fn run_json<'a>(name: &'a str, o: &'a Outcome) -> RunJson<'a> {
    let secs = o.elapsed.as_secs_f64().max(1e-9);
    RunJson {
        name,
        delivered: o.total.delivered,
        failed: o.total.failed,
        not_run: o.not_run,
        seconds: secs,
        msgs_per_s: o.rate(),
        mb_per_s: o.total.bytes as f64 / secs / 1e6,
        phases: phases(&o.total),
        replies: &o.total.codes,
        integrity: o.observed.then(|| IntegrityJson {
            intact: o.intact,
            corrupted: o.corrupted,
            lost: o.lost(),
            duplicated: o.duplicates,
        }),
        intervals: o
            .intervals
            .iter()
            .map(|iv| IntervalJson {
                start_s: iv.start.as_secs_f64(),
                length_s: iv.length.as_secs_f64(),
                delivered: iv.data.delivered,
                failed: iv.data.failed,
                msgs_per_s: iv.data.delivered as f64 / iv.length.as_secs_f64().max(1e-9),
                p99_ms: ms(iv.data.phase(Phase::Message).value_at_quantile(0.99)),
            })
            .collect(),
    }
}

/// `--json`: every run of the invocation (one, or `direct` and `relay` with `--self`).
pub fn json(runs: &[(&str, &Outcome)], ratio: Option<f64>) -> String {
    #[derive(Serialize)]
    struct All<'a> {
        runs: Vec<RunJson<'a>>,
        relay_over_direct: Option<f64>,
    }
    let all = All {
        runs: runs.iter().map(|(n, o)| run_json(n, o)).collect(),
        relay_over_direct: ratio,
    };
    serde_json::to_string_pretty(&all).expect("serializable")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// The latency-percentile plot (x: percentile on a log scale of 1/(1-q), as HdrHistogram's
/// plotter draws it; y: ms) of the whole-message latency of each run.
fn percentile_svg(runs: &[(&str, &Outcome)]) -> String {
    let (w, h, left, bottom) = (720.0, 360.0, 60.0, 40.0);
    let qs: Vec<f64> = (0..=60)
        .map(|i| 1.0 - 10f64.powf(-(i as f64) / 12.0))
        .collect();
    let x_of = |q: f64| left + (w - left - 20.0) * (-(1.0 - q).max(1e-5).log10() / 5.0).min(1.0);
    let max_ms = runs
        .iter()
        .map(|(_, o)| ms(o.total.phase(Phase::Message).max()))
        .fold(0.001f64, f64::max);
    let y_of = |v: f64| h - bottom - (h - bottom - 20.0) * (v / max_ms).min(1.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/>",
        h - bottom,
        w - 20.0,
        h - bottom
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"20\" x2=\"{left}\" y2=\"{}\" stroke=\"#444\"/>",
        h - bottom
    );
    for (q, label) in [
        (0.0, "0%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
        (0.99999, "99.999%"),
    ] {
        let x = x_of(q);
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            h - bottom + 16.0
        );
    }
    for i in 0..=4 {
        let v = max_ms * i as f64 / 4.0;
        let y = y_of(v);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\">{v:.2}</text>",
            left - 6.0
        );
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>",
            w - 20.0
        );
    }
    let _ = writeln!(s, "<text x=\"12\" y=\"14\">ms</text>");
    for (i, (name, o)) in runs.iter().enumerate() {
        let hist = o.total.phase(Phase::Message);
        if hist.is_empty() {
            continue;
        }
        let points: Vec<String> = qs
            .iter()
            .map(|&q| format!("{:.1},{:.1}", x_of(q), y_of(ms(hist.value_at_quantile(q)))))
            .collect();
        let c = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
            left + 10.0,
            34.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Delivered messages per second over the run, per run.
fn throughput_svg(runs: &[(&str, &Outcome)]) -> String {
    let (w, h, left, bottom) = (720.0, 260.0, 60.0, 30.0);
    let rate =
        |iv: &super::stats::Interval| iv.data.delivered as f64 / iv.length.as_secs_f64().max(1e-9);
    let max_rate = runs
        .iter()
        .flat_map(|(_, o)| o.intervals.iter().map(rate))
        .fold(1.0f64, f64::max);
    let max_t = runs
        .iter()
        .flat_map(|(_, o)| {
            o.intervals
                .iter()
                .map(|i| (i.start + i.length).as_secs_f64())
        })
        .fold(1.0f64, f64::max);
    let x_of = |t: f64| left + (w - left - 20.0) * t / max_t;
    let y_of = |r: f64| h - bottom - (h - bottom - 20.0) * r / max_rate;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/>",
        h - bottom,
        w - 20.0,
        h - bottom
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"20\" x2=\"{left}\" y2=\"{}\" stroke=\"#444\"/>",
        h - bottom
    );
    let _ = writeln!(s, "<text x=\"12\" y=\"14\">msgs/s</text>");
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{max_t:.0} s</text>",
        w - 20.0,
        h - 8.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"24\" text-anchor=\"end\">{max_rate:.0}</text>",
        left - 6.0
    );
    for (i, (name, o)) in runs.iter().enumerate() {
        let points: Vec<String> = o
            .intervals
            .iter()
            .map(|iv| {
                format!(
                    "{:.1},{:.1}",
                    x_of((iv.start + iv.length).as_secs_f64()),
                    y_of(rate(iv))
                )
            })
            .collect();
        let c = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
            left + 10.0,
            34.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `--html`: one self-contained page.
pub fn html(title: &str, runs: &[(&str, &Outcome)], ratio: Option<f64>) -> String {
    let mut s = String::from("<!doctype html>\n<html><head><meta charset=\"utf-8\">\n");
    let _ = writeln!(s, "<title>{}</title>", esc(title));
    s.push_str("<style>body{font-family:sans-serif;max-width:780px;margin:2em auto}pre{background:#f6f6f6;padding:1em;overflow-x:auto}</style>\n</head><body>\n");
    let _ = writeln!(s, "<h1>{}</h1>", esc(title));
    if let Some(r) = ratio {
        let _ = writeln!(
            s,
            "<p>Through the relay / direct to the sink: <b>{r:.2}</b> of the throughput.</p>"
        );
    }
    s.push_str("<h2>Whole-message latency by percentile</h2>\n");
    s.push_str(&percentile_svg(runs));
    s.push_str("<h2>Throughput over time</h2>\n");
    s.push_str(&throughput_svg(runs));
    for (name, o) in runs {
        let _ = writeln!(
            s,
            "<h2>{}</h2>\n<pre>{}</pre>",
            esc(name),
            esc(&table(name, o))
        );
    }
    s.push_str("</body></html>\n");
    s
}

/// One step of a sweep, as it finishes (on the terminal).
pub fn step_line(s: &super::sweep::Step) -> String {
    let started = &s.started.total;
    let p99 = started.phase(Phase::Message).value_at_quantile(0.99);
    format!(
        "{}: {:.0} msgs/s while it held, p99 {:.1} ms, {}; {}\n",
        s.label,
        s.during.rate(),
        ms(p99),
        codes_line(started),
        recovery_text(s),
    )
}

fn codes_line(t: &Recorder) -> String {
    if t.codes.is_empty() {
        return "no reply".into();
    }
    t.codes
        .iter()
        .map(|(c, n)| format!("{c}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn recovery_text(s: &super::sweep::Step) -> String {
    if s.label == "baseline" {
        return "the baseline".into();
    }
    match s.recovery {
        Some(d) => format!("recovered {:.2} s after it cleared", d.as_secs_f64()),
        None => "not recovered before the step ended".into(),
    }
}

/// Replies by class: (2xx, 4xx, 5xx, other).
fn classes(t: &Recorder) -> (u64, u64, u64, u64) {
    let mut c = (0, 0, 0, 0);
    for (code, n) in &t.codes {
        match code.as_bytes().first() {
            Some(b'2') => c.0 += n,
            Some(b'4') => c.1 += n,
            Some(b'5') => c.2 += n,
            _ => c.3 += n,
        }
    }
    c
}

/// The sweep's table: per step, while its fault held, throughput, whole-message p50, p99 and
/// p99.9, replies by class, what the queue held, and the recovery.
pub fn sweep_table(
    title: &str,
    steps: &[super::sweep::Step],
    hold: std::time::Duration,
    recovery: std::time::Duration,
) -> String {
    let mut s = format!(
        "{title}\n  each step: the fault held {:.1} s, then {:.1} s without it; latency of the whole message, ms\n",
        hold.as_secs_f64(),
        recovery.as_secs_f64()
    );
    let queue = steps.iter().any(|st| st.queued_peak.is_some());
    let _ = write!(
        s,
        "  {:<40} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}",
        "step", "msgs/s", "p50", "p99", "p99.9", "4xx", "5xx", "failed"
    );
    if queue {
        let _ = write!(s, " {:>8} {:>9}", "queued", "drained");
    }
    let _ = writeln!(s, " {:>10}", "recovered");
    for st in steps {
        // Latencies, replies and failures of the messages meant to start while it held.
        let t = &st.started.total;
        let h = t.phase(Phase::Message);
        let (_, c4, c5, _) = classes(t);
        // The swept value is at the end of a long step's text: keep the end.
        let n = st.label.chars().count();
        let label: String = if n > 40 {
            std::iter::once('…')
                .chain(st.label.chars().skip(n - 39))
                .collect()
        } else {
            st.label.clone()
        };
        let _ = write!(
            s,
            "  {:<40} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>7} {:>7}",
            label,
            st.during.rate(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            c4,
            c5,
            t.failed
        );
        if queue {
            let drained = match (st.label.as_str(), st.drained) {
                ("baseline", _) => "-".to_string(),
                (_, Some(d)) => format!("{:.2} s", d.as_secs_f64()),
                (_, None) => "no".to_string(),
            };
            let _ = write!(
                s,
                " {:>8} {:>9}",
                st.queued_peak.map_or("-".into(), |n| n.to_string()),
                drained
            );
        }
        let rec = match (st.label.as_str(), st.recovery) {
            ("baseline", _) => "-".to_string(),
            (_, Some(d)) => format!("{:.2} s", d.as_secs_f64()),
            (_, None) => "no".to_string(),
        };
        let _ = writeln!(s, " {rec:>10}");
    }
    s.push_str("  msgs/s: done while the fault held; p50-failed: the messages meant to start while it held, however late they finished\n");
    s.push_str("  recovered: after the fault cleared, throughput at least 0.9x the baseline's and p99 at most 2x (or +5 ms) from then on; queued: the most messages in the relay's queue; drained: back to the baseline's queue\n");
    s
}

#[derive(Serialize)]
struct StepJson<'a> {
    step: &'a str,
    cleared_at_s: f64,
    during: RunJson<'a>,
    started_during: RunJson<'a>,
    whole: RunJson<'a>,
    recovered_after_s: Option<f64>,
    queued_at_clear: Option<u64>,
    queued_peak: Option<u64>,
    drained_after_s: Option<f64>,
}

/// `--json` for a sweep: per step, the figures while its fault held (every phase's
/// percentiles, the replies by code), the whole step with its 250 ms intervals, the recovery.
pub fn sweep_json(
    title: &str,
    steps: &[super::sweep::Step],
    hold: std::time::Duration,
    recovery: std::time::Duration,
) -> String {
    let all = serde_json::json!({
        "title": title,
        "hold_s": hold.as_secs_f64(),
        "recovery_s": recovery.as_secs_f64(),
        "steps": steps.iter().map(|st| StepJson {
            step: &st.label,
            cleared_at_s: st.cleared_at.as_secs_f64(),
            during: run_json(&st.label, &st.during),
            started_during: run_json(&st.label, &st.started),
            whole: run_json(&st.label, &st.outcome),
            recovered_after_s: st.recovery.map(|d| d.as_secs_f64()),
            queued_at_clear: st.queued_at_clear,
            queued_peak: st.queued_peak,
            drained_after_s: st.drained.map(|d| d.as_secs_f64()),
        }).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&all).expect("serializable")
}

/// Throughput (bars) and p99 (a line, its own scale) per step, while its fault held.
fn steps_svg(steps: &[super::sweep::Step]) -> String {
    let (w, h, left, right, bottom) = (720.0, 300.0, 60.0, 60.0, 70.0);
    let n = steps.len().max(1) as f64;
    let max_rate = steps.iter().map(|s| s.during.rate()).fold(1.0f64, f64::max);
    let p99 = |s: &super::sweep::Step| {
        ms(s.started
            .total
            .phase(Phase::Message)
            .value_at_quantile(0.99))
    };
    let max_p99 = steps.iter().map(p99).fold(0.001f64, f64::max);
    let slot = (w - left - right) / n;
    let y_rate = |r: f64| h - bottom - (h - bottom - 20.0) * r / max_rate;
    let y_p99 = |v: f64| h - bottom - (h - bottom - 20.0) * v / max_p99;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/>",
        h - bottom,
        w - right,
        h - bottom
    );
    let _ = writeln!(
        s,
        "<text x=\"12\" y=\"14\" fill=\"{}\">msgs/s (bars, max {max_rate:.0})</text>",
        COLOURS[0]
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"14\" text-anchor=\"end\" fill=\"{}\">p99 ms (line, max {max_p99:.1})</text>",
        w - 8.0,
        COLOURS[1]
    );
    let mut points = Vec::new();
    for (i, st) in steps.iter().enumerate() {
        let x = left + slot * i as f64;
        let y = y_rate(st.during.rate());
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\" opacity=\"0.7\"/>",
            x + slot * 0.15,
            slot * 0.7,
            h - bottom - y,
            COLOURS[0]
        );
        let cx = x + slot / 2.0;
        points.push(format!("{cx:.1},{:.1}", y_p99(p99(st))));
        let label: String = st
            .label
            .rsplit(':')
            .next()
            .unwrap_or(&st.label)
            .trim()
            .chars()
            .take(24)
            .collect();
        let _ = writeln!(
            s,
            "<text x=\"{cx:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            h - bottom + 16.0,
            esc(&label)
        );
        let _ = writeln!(
            s,
            "<text x=\"{cx:.1}\" y=\"{}\" text-anchor=\"middle\" fill=\"#666\">{}</text>",
            h - bottom + 32.0,
            match (st.label.as_str(), st.recovery) {
                ("baseline", _) => String::new(),
                (_, Some(d)) => format!("recovered {:.2} s", d.as_secs_f64()),
                (_, None) => "not recovered".into(),
            }
        );
    }
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
        COLOURS[1],
        points.join(" ")
    );
    s.push_str("</svg>\n");
    s
}

/// `--html` for a sweep: throughput and p99 per step, latency by percentile per step (while
/// the fault held), throughput over each step's whole run (the fault, then its clearing), and
/// the table.
pub fn sweep_html(
    title: &str,
    steps: &[super::sweep::Step],
    hold: std::time::Duration,
    recovery: std::time::Duration,
) -> String {
    let mut s = String::from("<!doctype html>\n<html><head><meta charset=\"utf-8\">\n");
    let _ = writeln!(s, "<title>{}</title>", esc(title));
    s.push_str("<style>body{font-family:sans-serif;max-width:780px;margin:2em auto}pre{background:#f6f6f6;padding:1em;overflow-x:auto}</style>\n</head><body>\n");
    let _ = writeln!(s, "<h1>{}</h1>", esc(title));
    s.push_str("<h2>Throughput per step while the fault held, and the p99 of the messages meant to start then</h2>\n");
    s.push_str(&steps_svg(steps));
    let during: Vec<(&str, &Outcome)> = steps
        .iter()
        .map(|st| (st.label.as_str(), &st.started))
        .collect();
    s.push_str("<h2>Whole-message latency by percentile, per step, of the messages meant to start while the fault held</h2>\n");
    s.push_str(&percentile_svg(&during));
    let whole: Vec<(&str, &Outcome)> = steps
        .iter()
        .map(|st| (st.label.as_str(), &st.outcome))
        .collect();
    let _ = writeln!(
        s,
        "<h2>Throughput over each step (the fault cleared at {:.1} s)</h2>",
        hold.as_secs_f64()
    );
    s.push_str(&throughput_svg(&whole));
    let _ = writeln!(
        s,
        "<pre>{}</pre>",
        esc(&sweep_table(title, steps, hold, recovery))
    );
    s.push_str("</body></html>\n");
    s
}
