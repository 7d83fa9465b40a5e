//! Line framing for command mode: splits CRLF-terminated lines out of a byte buffer with a
//! bounded length, returns `NeedMore` on partial input, reports an over-long line once and
//! resynchronises at the next line end.
//!
//! # Bare CR and bare LF policy
//! RFC 5321 2.3.8 allows only CRLF as a line terminator. With [`LineEndings::CrlfOnly`] (the
//! default) a line ends only at CRLF; a bare LF or bare CR inside it makes the whole line an
//! error ([`LineError::BareLf`] / [`LineError::BareCr`], answered `501 5.5.2`), so
//! `MAIL FROM:<a@x>\rRCPT TO:<b@y>\r\n` is one refused command, never two (smtp-edge-cases 55,
//! 56). [`LineEndings::AcceptBareLf`] is for people typing into `nc`: a lone LF also ends a
//! line, in command mode only (DATA stays strict); a bare CR is still refused.

use crate::reply::Reply;

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// Which line terminators command mode accepts. See the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LineEndings {
    #[default]
    CrlfOnly,
    AcceptBareLf,
}

/// A line that cannot be handed to the command parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Longer than the limit (octets including CRLF). Reported once; the rest of the line is
    /// discarded up to the next line end.
    TooLong { limit: usize },
    /// A line feed not preceded by CR inside the line.
    BareLf,
    /// A carriage return not followed by LF inside the line.
    BareCr,
}

impl LineError {
    /// The reply for a command line (during AUTH, a session answers `500 5.5.6` instead).
    pub fn reply(self) -> Reply {
        match self {
            LineError::TooLong { .. } => Reply::new(500, (5, 5, 2), "Error: line too long"),
            LineError::BareLf => Reply::new(501, (5, 5, 2), "Error: bare <LF> in command"),
            LineError::BareCr => Reply::new(501, (5, 5, 2), "Error: bare <CR> in command"),
        }
    }
}

/// The result of one [`LineDecoder::decode`] call. `consumed` is how many bytes of the
/// buffer the caller must drop, whatever the variant.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete line, without its terminator.
    Line { line: &'a [u8], consumed: usize },
    /// No complete line yet: read more and call again with the kept bytes plus the new ones.
    NeedMore { consumed: usize },
    /// A line that was refused; framing continues after it.
    Error { error: LineError, consumed: usize },
}

/// A bounded line splitter. It holds no bytes itself: the caller keeps a buffer and drops
/// `consumed` bytes after each call, so a line's bytes are never copied.
#[derive(Clone, Debug)]
pub struct LineDecoder {
    max: usize,
    endings: LineEndings,
    /// Inside an over-long line that was already reported: skip to its end.
    discarding: bool,
    /// While discarding, the last byte dropped was CR (its LF may come in the next chunk).
    discarded_cr: bool,
}

impl Default for LineDecoder {
    fn default() -> Self {
        LineDecoder::new(MAX_COMMAND_LINE, LineEndings::default())
    }
}

impl LineDecoder {
    /// `max` counts the terminator; it is raised to at least 3.
    pub fn new(max: usize, endings: LineEndings) -> LineDecoder {
        LineDecoder {
            max: max.max(3),
            endings,
            discarding: false,
            discarded_cr: false,
        }
    }

    /// Changes the limit for the following lines (AUTH responses may be 12288 octets).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(3);
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Frames the next line from `buf`.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Decoded<'a> {
        let mut skipped = 0;
        if self.discarding {
            match self.skip_to_line_end(buf) {
                Some(n) => {
                    skipped = n;
                    self.discarding = false;
                    self.discarded_cr = false;
                }
                None => {
                    // Keep nothing: the line is being thrown away. Remember a trailing CR.
                    if let Some(&last) = buf.last() {
                        self.discarded_cr = last == b'\r';
                    }
                    return Decoded::NeedMore {
                        consumed: buf.len(),
                    };
                }
            }
        }
        let rest = &buf[skipped..];
        match self.frame(rest) {
            Frame::Line { len, end } => {
                let line = &rest[..len];
                let consumed = skipped + end;
                match check_line(line) {
                    Some(error) => Decoded::Error { error, consumed },
                    None => Decoded::Line { line, consumed },
                }
            }
            Frame::TooLong { end: Some(end) } => Decoded::Error {
                error: LineError::TooLong { limit: self.max },
                consumed: skipped + end,
            },
            Frame::TooLong { end: None } => {
                self.discarding = true;
                self.discarded_cr = rest.last() == Some(&b'\r');
                Decoded::Error {
                    error: LineError::TooLong { limit: self.max },
                    consumed: buf.len(),
                }
            }
            Frame::Partial => Decoded::NeedMore { consumed: skipped },
        }
    }

    /// Bytes up to and including the end of the line being discarded, if it is in `buf`.
    fn skip_to_line_end(&self, buf: &[u8]) -> Option<usize> {
        if self.discarded_cr && buf.first() == Some(&b'\n') {
            return Some(1);
        }
        match self.endings {
            LineEndings::CrlfOnly => memchr::memmem::find(buf, b"\r\n").map(|p| p + 2),
            LineEndings::AcceptBareLf => memchr::memchr(b'\n', buf).map(|p| p + 1),
        }
    }

    fn frame(&self, buf: &[u8]) -> Frame {
        // A terminator beyond `max` octets means the line is too long either way, so the
        // search never looks further than that: partial lines cost O(max), not O(buffer).
        let window = &buf[..buf.len().min(self.max + 1)];
        let found = match self.endings {
            LineEndings::CrlfOnly => memchr::memmem::find(window, b"\r\n").map(|p| (p, p + 2)),
            LineEndings::AcceptBareLf => memchr::memchr(b'\n', window).map(|p| {
                let len = if p > 0 && window[p - 1] == b'\r' {
                    p - 1
                } else {
                    p
                };
                (len, p + 1)
            }),
        };
        match found {
            Some((len, end)) if len + 2 <= self.max => Frame::Line { len, end },
            Some((_, end)) => Frame::TooLong { end: Some(end) },
            // Too long: the end may still be in this buffer, with pipelined commands after it.
            None if buf.len() >= self.max => Frame::TooLong {
                end: self.skip_to_line_end(buf),
            },
            None => Frame::Partial,
        }
    }
}

enum Frame {
    Line {
        len: usize,
        end: usize,
    },
    /// `end`: where the over-long line ends, when it is already in the buffer.
    TooLong {
        end: Option<usize>,
    },
    Partial,
}

/// A bare CR or LF left inside a framed line.
fn check_line(line: &[u8]) -> Option<LineError> {
    match memchr::memchr2(b'\r', b'\n', line) {
        Some(p) if line[p] == b'\n' => Some(LineError::BareLf),
        Some(_) => Some(LineError::BareCr),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_needs_more() {
        let mut d = LineDecoder::default();
        assert_eq!(d.decode(b"EHLO x"), Decoded::NeedMore { consumed: 0 });
        assert_eq!(
            d.decode(b"EHLO x\r\nNOOP"),
            Decoded::Line {
                line: b"EHLO x",
                consumed: 8
            }
        );
    }

    #[test]
    fn cr_at_the_limit_survives_an_empty_read_while_discarding() {
        let mut d = LineDecoder::new(5, LineEndings::CrlfOnly);
        assert!(matches!(
            d.decode(b"aaaa\r"),
            Decoded::Error { consumed: 5, .. }
        ));
        assert_eq!(d.decode(b""), Decoded::NeedMore { consumed: 0 });
        assert_eq!(d.decode(b"\n"), Decoded::NeedMore { consumed: 1 });
        assert_eq!(
            d.decode(b"\r\n"),
            Decoded::Line {
                line: b"",
                consumed: 2
            }
        );
    }

    #[test]
    fn overlong_line_reported_once_then_resync_across_chunks() {
        let mut d = LineDecoder::new(8, LineEndings::CrlfOnly);
        assert_eq!(
            d.decode(b"123456789"),
            Decoded::Error {
                error: LineError::TooLong { limit: 8 },
                consumed: 9
            }
        );
        assert_eq!(d.decode(b"abc\r"), Decoded::NeedMore { consumed: 4 });
        assert_eq!(
            d.decode(b"\nQUIT\r\n"),
            Decoded::Line {
                line: b"QUIT",
                consumed: 7
            }
        );
    }
}
