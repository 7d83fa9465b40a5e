//! The mutant relay's work on bytes: where DATA ends, what is unclean, dot-stuffing, source
//! routes. Pure, and tested in `tests.rs`.

/// Where the content ends and where the bytes after the terminator start.
pub(super) fn terminator(buf: &[u8], lenient: bool) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    let mut consider = |end: usize, after: usize| {
        if best.is_none_or(|(e, _)| end < e) {
            best = Some((end, after));
        }
    };
    if buf.starts_with(b".\r\n") {
        consider(0, 3);
    }
    if let Some(i) = memchr::memmem::find(buf, b"\r\n.\r\n") {
        consider(i + 2, i + 5);
    }
    if lenient {
        if buf.starts_with(b".\n") {
            consider(0, 2);
        }
        for pat in [&b"\n.\n"[..], b"\n.\r\n"] {
            if let Some(i) = memchr::memmem::find(buf, pat) {
                consider(i + 1, i + pat.len());
            }
        }
    }
    best
}

/// A bare CR, a bare LF or a NUL in the content.
pub(super) fn unclean(content: &[u8]) -> bool {
    content.iter().enumerate().any(|(i, &b)| {
        b == 0
            || (b == b'\r' && content.get(i + 1) != Some(&b'\n'))
            || (b == b'\n' && (i == 0 || content[i - 1] != b'\r'))
    })
}

/// `RCPT TO:<@a,@b:user@d>` as `RCPT TO:<user@d>`: a relay ignores a source route (RFC 5321
/// 3.6.1, appendix C) rather than pass it on.
pub(super) fn without_source_route(line: &[u8]) -> Vec<u8> {
    let Some(open) = line.iter().position(|&b| b == b'<') else {
        return line.to_vec();
    };
    if line.get(open + 1) != Some(&b'@') {
        return line.to_vec();
    }
    let close = line[open..]
        .iter()
        .position(|&b| b == b'>')
        .map_or(line.len(), |c| open + c);
    match line[open..close].iter().position(|&b| b == b':') {
        Some(colon) => [&line[..=open], &line[open + colon + 1..]].concat(),
        None => line.to_vec(),
    }
}

/// Content dot-stuffed for DATA (a line starting with `.` gets another).
pub(super) fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 16);
    let mut at_line_start = true;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

/// Content with its dot-stuffing removed (a line starting `..` loses one dot).
pub(super) fn unstuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut at_line_start = true;
    let mut i = 0;
    while i < content.len() {
        let b = content[i];
        if !(at_line_start && b == b'.' && content.get(i + 1) == Some(&b'.')) {
            out.push(b);
        }
        at_line_start = b == b'\n';
        i += 1;
    }
    out
}
