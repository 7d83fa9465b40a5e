//! The client side's byte handling without I/O, the counterpart of
//! [`crate::ServerConnection`]: bytes in, replies out. It owns the line framing (CRLF only,
//! bounded) and the multi-line reply assembly every client would otherwise repeat: the relay's
//! upstream client, the scenario runner and the fake upstream's test client all read replies
//! through it.
//!
//! ```text
//! loop {
//!     match conn.next_reply()? {
//!         Some(reply) => return reply,
//!         None => read from the socket (0 octets: closed), conn.receive(bytes),
//!     }
//! }
//! ```
//! The input buffer holds at most one read beyond a line being framed: a driver that reads
//! only when `next_reply()` returned `None` keeps memory bounded whatever the server sends
//! (a line longer than the limit is an error, and a reply has at most
//! [`ReplyParser::max_lines`] lines).

use std::fmt;

use crate::line::{Decoded, LineDecoder, LineEndings, LineError};
use crate::reply::{Reply, ReplyError, ReplyParser};

/// The longest reply line taken, CRLF included. RFC 5321 4.5.3.1.5 says 512; real servers
/// send longer EHLO lines and error texts, so this allows 16 times that.
pub const MAX_REPLY_LINE: usize = 8192;

/// Why the server's bytes are not a reply. The connection cannot be trusted after one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyReadError {
    /// A line that could not be framed: too long, or with a bare CR or LF inside.
    Line(LineError),
    /// A line that is not a reply line, or a multi-line reply that does not hold together.
    Reply(ReplyError),
}

impl fmt::Display for ReplyReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyReadError::Line(LineError::TooLong { limit }) => {
                write!(f, "a reply line longer than {limit} octets")
            }
            ReplyReadError::Line(e) => write!(f, "a malformed reply line ({e:?})"),
            ReplyReadError::Reply(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReplyReadError {}

/// Bytes from a server in, whole replies out.
#[derive(Clone, Debug)]
pub struct ClientConnection {
    lines: LineDecoder,
    /// Lines end at CRLF only and a bare CR or LF inside one is kept as part of it
    /// ([`ClientConnection::keeping_bare_line_ends`]).
    keep_bare: Option<usize>,
    parser: ReplyParser,
    input: Vec<u8>,
}

impl Default for ClientConnection {
    fn default() -> Self {
        ClientConnection::new(MAX_REPLY_LINE)
    }
}

impl ClientConnection {
    /// A connection whose reply lines may be `max_line` octets long, CRLF included.
    pub fn new(max_line: usize) -> ClientConnection {
        ClientConnection {
            lines: LineDecoder::new(max_line, LineEndings::CrlfOnly),
            keep_bare: None,
            parser: ReplyParser::default(),
            input: Vec::new(),
        }
    }

    /// A connection that ends lines at CRLF only and keeps a bare CR or LF inside a line as
    /// part of it: for a harness reading servers it did not write (aiosmtpd echoes a refused
    /// command, bare CR included, in its `500` reply), which must report what was said rather
    /// than fail to read it. A relay talking to its upstream uses [`ClientConnection::new`].
    pub fn keeping_bare_line_ends(max_line: usize) -> ClientConnection {
        ClientConnection {
            keep_bare: Some(max_line.max(3)),
            ..ClientConnection::new(max_line)
        }
    }

    /// Bytes read from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next whole reply, if the bytes received hold one; `Ok(None)` asks for more bytes.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyReadError> {
        if let Some(max) = self.keep_bare {
            return self.next_reply_keeping_bare(max);
        }
        loop {
            match self.lines.decode(&self.input) {
                Decoded::Line { line, consumed } => {
                    let parsed = self.parser.push_line(line);
                    self.input.drain(..consumed);
                    match parsed {
                        Ok(Some(reply)) => return Ok(Some(reply)),
                        Ok(None) => continue,
                        Err(e) => return Err(ReplyReadError::Reply(e)),
                    }
                }
                Decoded::NeedMore { consumed } => {
                    self.input.drain(..consumed);
                    return Ok(None);
                }
                Decoded::Error { error, consumed } => {
                    self.input.drain(..consumed);
                    self.parser = ReplyParser::default();
                    return Err(ReplyReadError::Line(error));
                }
            }
        }
    }

    fn next_reply_keeping_bare(&mut self, max: usize) -> Result<Option<Reply>, ReplyReadError> {
        loop {
            let Some(end) = self.input.windows(2).position(|w| w == b"\r\n") else {
                if self.input.len() >= max {
                    self.input.clear();
                    self.parser = ReplyParser::default();
                    return Err(ReplyReadError::Line(LineError::TooLong { limit: max }));
                }
                return Ok(None);
            };
            if end + 2 > max {
                self.input.drain(..end + 2);
                self.parser = ReplyParser::default();
                return Err(ReplyReadError::Line(LineError::TooLong { limit: max }));
            }
            let parsed = self.parser.push_line(&self.input[..end]);
            self.input.drain(..end + 2);
            match parsed {
                Ok(Some(reply)) => return Ok(Some(reply)),
                Ok(None) => continue,
                Err(e) => return Err(ReplyReadError::Reply(e)),
            }
        }
    }

    /// Octets received and not yet part of a reply (after a `220` to STARTTLS there must be
    /// none: anything there was sent before the handshake, CVE-2011-0411's mirror image).
    pub fn buffered(&self) -> &[u8] {
        &self.input
    }

    /// Takes the octets received and not yet part of a reply.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one at a time, collecting every reply and the first error.
    fn replies(chunks: &[&[u8]]) -> (Vec<String>, Option<ReplyReadError>) {
        let mut conn = ClientConnection::new(64);
        let mut out = Vec::new();
        for chunk in chunks {
            conn.receive(chunk);
            loop {
                match conn.next_reply() {
                    Ok(Some(r)) => out.push(r.to_string()),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
        }
        (out, None)
    }

    #[test]
    fn replies_across_reads_and_several_in_one() {
        let (got, err) = replies(&[
            b"220 hi\r\n250-a\r",
            b"\n250 b\r\n354 go\r\n2",
            b"50 ok\r\n",
        ]);
        assert_eq!(got, ["220 hi", "250-a\r\n250 b", "354 go", "250 ok"]);
        assert_eq!(err, None);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let (_, err) = replies(&[b"250-a\r\n550 b\r\n"]);
        assert!(matches!(
            err,
            Some(ReplyReadError::Reply(ReplyError::CodeChanged { .. }))
        ));
        let (_, err) = replies(&[b"hello\r\n"]);
        assert!(matches!(
            err,
            Some(ReplyReadError::Reply(ReplyError::BadCode(_)))
        ));
        let (_, err) = replies(&[b"250 ok\nmore\r\n"]);
        assert_eq!(err, Some(ReplyReadError::Line(LineError::BareLf)));
        let long = [b'2'; 100];
        let (_, err) = replies(&[&long]);
        let err = err.expect("too long");
        assert_eq!(err, ReplyReadError::Line(LineError::TooLong { limit: 64 }));
        assert_eq!(err.to_string(), "a reply line longer than 64 octets");
    }

    #[test]
    fn a_harness_keeps_bare_line_ends_inside_a_reply_line() {
        let mut conn = ClientConnection::keeping_bare_line_ends(64);
        conn.receive(b"500 Error: command \"NO\rOP\" not recognized\r\n250-a\nb\r\n25");
        let r = conn.next_reply().unwrap().unwrap();
        // Read whole; written back, a bare line end inside the text shows as a space.
        assert_eq!(r.code, 500);
        assert_eq!(r.to_string(), "500 Error: command \"NO OP\" not recognized");
        assert_eq!(conn.next_reply().unwrap(), None);
        conn.receive(b"0 c\r\n");
        assert_eq!(
            conn.next_reply().unwrap().unwrap().to_string(),
            "250-a b\r\n250 c"
        );
        conn.receive(&[b'2'; 70]);
        assert_eq!(
            conn.next_reply(),
            Err(ReplyReadError::Line(LineError::TooLong { limit: 64 }))
        );
        // The strict reader refuses the same reply.
        let mut strict = ClientConnection::new(64);
        strict.receive(b"500 NO\rOP\r\n");
        assert_eq!(
            strict.next_reply(),
            Err(ReplyReadError::Line(LineError::BareCr))
        );
    }

    #[test]
    fn what_follows_a_reply_stays_buffered() {
        let mut conn = ClientConnection::default();
        conn.receive(b"220 go ahead\r\nEVIL");
        assert_eq!(conn.next_reply().unwrap().unwrap().code, 220);
        assert_eq!(conn.next_reply().unwrap(), None);
        assert_eq!(conn.buffered(), b"EVIL");
        assert_eq!(conn.take_buffered(), b"EVIL");
        assert!(conn.buffered().is_empty());
    }
}
