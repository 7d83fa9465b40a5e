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
            parser: ReplyParser::default(),
            input: Vec::new(),
        }
    }

    /// Bytes read from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The next whole reply, if the bytes received hold one; `Ok(None)` asks for more bytes.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyReadError> {
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
