//! A two-hop transcript made comparable across runs: ports, ids, dates and secrets replaced.

use super::*;

/// A message's bytes, escaped (CR and LF visible), one line per LF: the trace headers in full,
/// then at most `max` octets of the rest, so that what is shown does not depend on the length
/// of a trace header's date.
pub(super) fn show_bytes(bytes: &[u8], max: usize) -> String {
    let rest = strip_trace(bytes);
    let trace_len = bytes.len() - rest.len();
    let shown = &bytes[..trace_len + rest.len().min(max)];
    let mut out = String::new();
    for line in shown.split_inclusive(|&b| b == b'\n') {
        out.push_str("   | ");
        out.push_str(&crate::scenario::escape(line));
        out.push('\n');
    }
    if rest.len() > max {
        out.push_str(&format!("   | ... ({} more octets)\n", rest.len() - max));
    }
    out
}

/// Replaces what changes from run to run: ports, ids, dates (in the fake's normaliser), tokens.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in fake_upstream::testing::normalize(text).lines() {
        let mut l = line.to_string();
        // Every 127.0.0.1:PORT (the fake's normaliser takes the first only).
        let mut from = 0;
        while let Some(i) = l[from..].find("127.0.0.1:") {
            let start = from + i + "127.0.0.1:".len();
            let end = l[start..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(l.len(), |e| start + e);
            if end > start {
                l.replace_range(start..end, "<port>");
            }
            from = start;
        }
        l = replace_spool_ids(&l);
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `20261126T060149.779054-12` (the relay's message ids) becomes `<id>`.
pub(super) fn replace_spool_ids(line: &str) -> String {
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < b.len() {
        let is_id = b.len() >= i + 23
            && b[i..i + 8].iter().all(u8::is_ascii_digit)
            && b[i + 8] == b'T'
            && b[i + 9..i + 15].iter().all(u8::is_ascii_digit)
            && b[i + 15] == b'.'
            && b[i + 16..i + 22].iter().all(u8::is_ascii_digit)
            && b[i + 22] == b'-';
        if is_id {
            let mut end = i + 23;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            out.push_str("<id>");
            i = end;
        } else {
            let ch = line[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}
