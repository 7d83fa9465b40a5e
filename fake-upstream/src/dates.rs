//! Finds RFC 5322 dates in text (section 3.3 and its obsolete forms in 4.3), so that a transcript
//! normaliser can redact them whatever day of the month, weekday or zone they carry.
//!
//! Accepted: `[day-of-week ","] day month year hour ":" minute [":" second] zone [comment]` where
//! the day has one or two digits, the year two to four, the zone is `+hhmm`/`-hhmm` or one of the
//! obsolete names (`UT`, `GMT`, `EST` ... `PDT`, the military letters), names are matched without
//! regard to case, and the separators are runs of spaces or tabs. A date must stand alone: the
//! characters around it are not letters or digits.

/// Every date in `line` replaced by `<date>`.
pub fn replace_dates(line: &str) -> String {
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric()
            && starts_word(b, i)
            && let Some(end) = date_at(b, i)
        {
            out.push_str(&line[copied..i]);
            out.push_str("<date>");
            i = end;
            copied = end;
            continue;
        }
        i += 1;
    }
    out.push_str(&line[copied..]);
    out
}

/// Whether a word can start at `i`: the line starts there, or a character other than a letter
/// or digit stands before it, or a transcript's escape for a tab or line end (`\t`, `\r`, `\n`).
fn starts_word(b: &[u8], i: usize) -> bool {
    match i {
        0 => true,
        _ if !b[i - 1].is_ascii_alphanumeric() => true,
        _ => i >= 2 && b[i - 2] == b'\\' && matches!(b[i - 1], b't' | b'r' | b'n'),
    }
}

/// The end of the date that starts at `start`, if one does.
pub fn date_at(b: &[u8], start: usize) -> Option<usize> {
    let mut c = Cursor { b, i: start };
    if c.name(&DAYS).is_some() {
        c.blanks();
        c.byte(b',')?;
        c.blanks();
    }
    c.digits(1, 2)?;
    c.blanks1()?;
    c.name(&MONTHS)?;
    c.blanks1()?;
    c.digits(2, 4)?;
    c.blanks1()?;
    c.digits(2, 2)?;
    c.byte(b':')?;
    c.digits(2, 2)?;
    let before_seconds = c.i;
    if c.byte(b':').and_then(|_| c.digits(2, 2)).is_none() {
        c.i = before_seconds;
    }
    c.blanks1()?;
    c.zone()?;
    if !c.at_word_end() {
        return None;
    }
    let before_comment = c.i;
    if c.blanks1().and_then(|_| c.comment()).is_none() {
        c.i = before_comment;
    }
    Some(c.i)
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
/// The obsolete zone names of RFC 5322 4.3, longest first so that `GMT` is not read as `G`.
const ZONES: [&str; 10] = [
    "gmt", "est", "edt", "cst", "cdt", "mst", "mdt", "pst", "pdt", "ut",
];

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn byte(&mut self, want: u8) -> Option<()> {
        (self.peek()? == want).then(|| self.i += 1)
    }

    /// Spaces and tabs, possibly none.
    fn blanks(&mut self) -> usize {
        let from = self.i;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        self.i - from
    }

    /// At least one space or tab.
    fn blanks1(&mut self) -> Option<()> {
        (self.blanks() > 0).then_some(())
    }

    /// Between `min` and `max` digits, not followed by another digit.
    fn digits(&mut self, min: usize, max: usize) -> Option<()> {
        let from = self.i;
        while self.peek().is_some_and(|d| d.is_ascii_digit()) {
            self.i += 1;
        }
        (min..=max).contains(&(self.i - from)).then_some(())
    }

    /// One of `names` (three letters each, or two), any case, not followed by a letter.
    fn name(&mut self, names: &[&str]) -> Option<usize> {
        for (n, name) in names.iter().enumerate() {
            let end = self.i + name.len();
            if end <= self.b.len()
                && self.b[self.i..end].eq_ignore_ascii_case(name.as_bytes())
                && !self.b.get(end).is_some_and(u8::is_ascii_alphabetic)
            {
                self.i = end;
                return Some(n);
            }
        }
        None
    }

    fn zone(&mut self) -> Option<()> {
        match self.peek()? {
            b'+' | b'-' => {
                self.i += 1;
                self.digits(4, 4)
            }
            _ if self.name(&ZONES).is_some() => Some(()),
            // A military zone: one letter other than J.
            l if l.is_ascii_alphabetic()
                && !l.eq_ignore_ascii_case(&b'j')
                && !self.b.get(self.i + 1).is_some_and(u8::is_ascii_alphabetic) =>
            {
                self.i += 1;
                Some(())
            }
            _ => None,
        }
    }

    fn at_word_end(&self) -> bool {
        !self.peek().is_some_and(|c| c.is_ascii_alphanumeric())
    }

    /// A short comment such as `(CST)` or `(UTC)`: no nesting, at most 40 octets.
    fn comment(&mut self) -> Option<()> {
        self.byte(b'(')?;
        let close = self.b[self.i..]
            .iter()
            .take(41)
            .position(|&c| c == b')' || c == b'(')?;
        if self.b[self.i + close] != b')' {
            return None;
        }
        self.i += close + 1;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            // (input, output)
            ("Tue, 1 Dec 2026 06:33:12 +0000", "<date>"),
            ("Tue, 01 Dec 2026 06:33:12 +0000", "<date>"),
            ("Thu, 26 Nov 2026 06:01:49 +0000", "<date>"),
            ("\tTue, 1 Dec 2026 06:33:12 +0000", "\t<date>"),
            ("1 Dec 2026 06:33:12 +0000", "<date>"),
            ("by x; Tue,  1 Dec 2026 06:33:12 -0330", "by x; <date>"),
            ("Tue , 1 Dec 2026 06:33 +0000", "<date>"),
            ("Tue,1 Dec 2026 06:33:12 +0000", "<date>"),
            ("Tue, 01 Dec 2026 14:33:12 +0800 (CST)", "<date>"),
            ("Tue, 1 Dec 26 06:33:12 GMT", "<date>"),
            ("Tue, 1 Dec 2026 06:33:12 UT", "<date>"),
            ("tue, 1 DEC 2026 06:33:12 pst", "<date>"),
            ("Tue, 1 Dec 2026 06:33:12 Z;", "<date>;"),
            ("Date: Tue, 1 Dec 2026 06:33:12 +0000\r", "Date: <date>\r"),
            (
                "a Tue, 1 Dec 2026 06:33:12 +0000 b 2 Jan 2027 00:00:00 +0100 c",
                "a <date> b <date> c",
            ),
            // Not dates: left as they are.
            ("Thu, no date", "Thu, no date"),
            ("Tue, 1 Dec 2026", "Tue, 1 Dec 2026"),
            ("Tue, 1 Dec 2026 06:33:12", "Tue, 1 Dec 2026 06:33:12"),
            (
                "Tue, 1 Dec 2026 06:33:12 +00",
                "Tue, 1 Dec 2026 06:33:12 +00",
            ),
            (
                "Tue, 123 Dec 2026 06:33:12 +0000",
                "Tue, 123 Dec 2026 06:33:12 +0000",
            ),
            (
                "Tue, 1 Dez 2026 06:33:12 +0000",
                "Tue, 1 Dez 2026 06:33:12 +0000",
            ),
            ("x1 Dec 2026 06:33:12 +0000", "x1 Dec 2026 06:33:12 +0000"),
            ("1 Dec 2026 06:33:12 +00001", "1 Dec 2026 06:33:12 +00001"),
            ("1 Dec 2026 06:33:12 Jx", "1 Dec 2026 06:33:12 Jx"),
            (
                "Tue, 1 Dec 2026 06:33:12 +0000 (unclosed",
                "<date> (unclosed",
            ),
            (
                "| \\tTue, 1 Dec 2026 06:33:12 +0000\\r\\n",
                "| \\t<date>\\r\\n",
            ),
            ("x\\tTue, 1 Dec 2026 06:33:12 +0000", "x\\t<date>"),
            ("日期 Tue, 1 Dec 2026 06:33:12 +0000", "日期 <date>"),
        ];
        for (input, want) in cases {
            assert_eq!(replace_dates(input), want, "input {input:?}");
        }
    }
}
