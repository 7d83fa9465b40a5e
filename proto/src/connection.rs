//! A server connection without I/O, in the manner of rustls: bytes in, events out. It owns a
//! [`ServerSession`] and does the buffering every driver would otherwise repeat: line framing
//! at the session's current limit, the DATA decoder, BDAT chunk counting, and dropping the
//! plaintext pipelined after STARTTLS.
//!
//! ```text
//! send conn.greeting()
//! loop {
//!     while let Some(event) = conn.next_event() {
//!         Reply(r) => send r            Close(r) => send r, close
//!         StartTls { reply, .. } => send reply, handshake, conn.tls_established()
//!         Decide(d) => conn.decide(verdict for d)
//!         Content { data, raw } => keep data      Discard => drop what was kept
//!     }
//!     read from the socket, conn.receive(bytes)   // only when next_event() is None
//! }
//! ```
//! The input buffer holds at most one read beyond what is being framed: a driver that reads
//! only when `next_event()` returned `None` keeps memory bounded whatever the client sends.

use crate::auth::MAX_AUTH_LINE;
use crate::catalogue::ReplyKind;
use crate::data::{BareLineEnding, ChunkScan, DataDecoder, DataOutcome, DataProgress};
use crate::line::{Decoded, LineDecoder, LineEndings};
use crate::reply::Reply;
use crate::server::{Decision, Input, ServerConfig, ServerSession, Step, Transport, Verdict};

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Send this reply.
    Reply(Reply),
    /// Send this reply, then close the connection.
    Close(Reply),
    /// Send this reply, then run the TLS handshake and call
    /// [`ServerConnection::tls_established`]. `discarded` plaintext octets that the client
    /// pipelined after STARTTLS were dropped (CVE-2011-0411).
    StartTls { reply: Reply, discarded: usize },
    /// Answer with [`ServerConnection::decide`] before asking for the next event.
    Decide(Decision),
    /// Message content: `data` as delivered (unstuffed), `raw` as it came on the wire.
    Content { data: &'a [u8], raw: &'a [u8] },
    /// The message whose content was given will not be delivered: drop it.
    Discard,
}

/// A server connection's protocol state and buffers. See the module documentation.
#[derive(Debug)]
pub struct ServerConnection {
    session: ServerSession,
    input: Vec<u8>,
    /// Bytes of `input` handed out in the last event, dropped at the next call.
    consumed: usize,
    line: LineDecoder,
    bare: BareLineEnding,
    data: Option<DataDecoder>,
    decoded: Vec<u8>,
    /// Octets of the current BDAT chunk still to come.
    chunk_left: u64,
    /// Bare line ends and NUL in this transaction's BDAT content (see [`ChunkScan`]).
    chunk_scan: ChunkScan,
    /// Steps to report before reading more input.
    queued: std::collections::VecDeque<QueuedEvent>,
    /// Content was handed out for the transaction in progress.
    content_given: bool,
    closed: bool,
    /// The last command or AUTH line framed, for transcripts.
    last_line: Vec<u8>,
    /// Whether `last_line` was an AUTH continuation (a secret).
    last_line_secret: bool,
    lines_handled: u64,
}

#[derive(Debug)]
enum QueuedEvent {
    Step(Step),
    DataEnd(DataOutcome),
}

impl ServerConnection {
    pub fn new(
        config: impl Into<std::sync::Arc<ServerConfig>>,
        transport: Transport,
        endings: LineEndings,
        bare: BareLineEnding,
    ) -> ServerConnection {
        ServerConnection {
            session: ServerSession::new(config, transport),
            input: Vec::new(),
            consumed: 0,
            line: LineDecoder::new(crate::line::MAX_COMMAND_LINE, endings),
            bare,
            data: None,
            decoded: Vec::new(),
            chunk_left: 0,
            chunk_scan: ChunkScan::default(),
            queued: Default::default(),
            content_given: false,
            closed: false,
            last_line: Vec::new(),
            last_line_secret: false,
            lines_handled: 0,
        }
    }

    pub fn greeting(&self) -> Reply {
        self.session.greeting()
    }

    pub fn session(&self) -> &ServerSession {
        &self.session
    }

    /// Whether the session is over (after `Close`).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Octets received and not yet processed.
    pub fn buffered(&self) -> usize {
        self.input.len() - self.consumed
    }

    /// The complete command lines already received after the one being decided (without
    /// their CRLF), at most `max`: a pipelining client's group, for a proxy that wants to
    /// forward it as a group (RFC 2920). A peek only: the lines are still handled one by one,
    /// and the session may answer some of them itself. Nothing while reading content or an
    /// AUTH exchange; it stops at a line that is too long or holds a bare CR or LF.
    pub fn pipelined_lines(&self, max: usize) -> Vec<&[u8]> {
        let mut lines = Vec::new();
        let commands = match self.session.input() {
            Input::Line { max } => max == crate::line::MAX_COMMAND_LINE,
            _ => self.session.deciding_envelope(),
        };
        if !commands {
            return lines;
        }
        let mut rest = &self.input[self.consumed..];
        while lines.len() < max {
            let Some(end) = memchr::memmem::find(rest, b"\r\n") else {
                break;
            };
            let line = &rest[..end];
            if end + 2 > crate::line::MAX_COMMAND_LINE
                || memchr::memchr2(b'\r', b'\n', line).is_some()
            {
                break;
            }
            lines.push(line);
            rest = &rest[end + 2..];
        }
        lines
    }

    /// Whether the session is reading message content (DATA or a BDAT chunk): the driver's
    /// timeouts differ there.
    pub fn in_data(&self) -> bool {
        matches!(
            self.session.input(),
            Input::Data { .. } | Input::Chunk { .. }
        )
    }

    /// Whether a message is under way: DATA content, a BDAT chunk, or the BDAT command lines
    /// between the chunks of one message. A driver's minimum data rate holds over all of it
    /// (small chunks with pauses between them earn no fresh allowance each).
    pub fn in_message(&self) -> bool {
        self.in_data() || self.session.in_chunked_message()
    }

    /// Takes bytes read from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.compact();
        self.input.extend_from_slice(bytes);
    }

    fn compact(&mut self) {
        if self.consumed > 0 {
            self.input.drain(..self.consumed);
            self.consumed = 0;
        }
    }

    /// The driver's answer to the last [`Event::Decide`].
    pub fn decide(&mut self, verdict: Verdict) {
        let step = self.session.decide(verdict);
        self.queued.push_back(QueuedEvent::Step(step));
    }

    /// The TLS handshake after [`Event::StartTls`] finished.
    pub fn tls_established(&mut self) {
        self.session.tls_established();
    }

    /// The `421 4.3.2` to send when the server shuts down.
    pub fn shutdown_reply(&self) -> Reply {
        self.session.shutdown_reply()
    }

    /// The `421 4.4.2` to send when the client was too slow.
    pub fn timeout_reply(&self) -> Reply {
        self.session.reply(ReplyKind::Timeout)
    }

    /// A reply of the catalogue as this session words it (a persona's override, enhanced
    /// codes as configured): for limits the driver enforces itself.
    pub fn reply(&self, kind: crate::catalogue::ReplyKind) -> Reply {
        self.session.reply(kind)
    }

    /// RCPT commands the current transaction may still have decided.
    pub fn rcpt_commands_left(&self) -> usize {
        self.session.rcpt_commands_left()
    }

    /// How many lines (commands, AUTH responses, refused lines) were handled so far: when it
    /// changes, [`ServerConnection::transcript_line`] is the new one.
    pub fn lines_handled(&self) -> u64 {
        self.lines_handled
    }

    /// The last line handled, for a transcript: CR, LF and other control bytes escaped,
    /// AUTH secrets (initial responses, continuation lines) replaced by `<redacted>`.
    pub fn transcript_line(&self) -> String {
        if self.last_line_secret {
            return "<redacted>".into();
        }
        let text = String::from_utf8_lossy(&self.last_line);
        let mut words = text.splitn(3, ' ');
        let (verb, mech) = (words.next().unwrap_or(""), words.next());
        if verb.eq_ignore_ascii_case("AUTH") && words.next().is_some() {
            return format!("{verb} {} <redacted>", mech.unwrap_or(""));
        }
        escape(&text)
    }

    /// The next event, or `None` when more input is needed.
    pub fn next_event(&mut self) -> Option<Event<'_>> {
        self.compact();
        if let Some(q) = self.queued.pop_front() {
            return self.queued_event(q);
        }
        if self.closed {
            return None;
        }
        match self.session.input() {
            Input::Line { max } => {
                self.line.set_max(max);
                match self.line.decode(&self.input) {
                    Decoded::Line { line, consumed } => {
                        self.last_line.clear();
                        self.last_line.extend_from_slice(line);
                        self.last_line_secret = max == MAX_AUTH_LINE;
                        self.lines_handled += 1;
                        let step = self.session.handle_line(line);
                        self.consumed = consumed;
                        self.step_event(step)
                    }
                    Decoded::NeedMore { consumed } => {
                        self.consumed = consumed;
                        None
                    }
                    Decoded::Error { error, consumed } => {
                        self.consumed = consumed;
                        self.last_line = format!("<refused line: {error:?}>").into_bytes();
                        self.last_line_secret = false;
                        self.lines_handled += 1;
                        let step = self.session.handle_line_error(error);
                        self.step_event(step)
                    }
                }
            }
            Input::Data { limit } => {
                if self.input.is_empty() {
                    return None;
                }
                let bare = self.bare;
                let decoder = self
                    .data
                    .get_or_insert_with(|| DataDecoder::new(limit, bare));
                self.decoded.clear();
                let progress = decoder.decode(&self.input, &mut self.decoded);
                let raw_len = match progress {
                    DataProgress::NeedMore => self.input.len(),
                    DataProgress::Done { consumed } => {
                        let outcome = decoder.outcome();
                        self.data = None;
                        self.queued.push_back(QueuedEvent::DataEnd(outcome));
                        consumed
                    }
                };
                self.consumed = raw_len;
                self.content_given = true;
                Some(Event::Content {
                    data: &self.decoded,
                    raw: &self.input[..raw_len],
                })
            }
            Input::Chunk { last, .. } => {
                if self.chunk_left == 0 {
                    if last {
                        self.check_chunked_content();
                    }
                    let step = self.session.handle_chunk_end();
                    return self.step_event(step);
                }
                if self.input.is_empty() {
                    return None;
                }
                let take = (self.input.len() as u64).min(self.chunk_left) as usize;
                self.chunk_left -= take as u64;
                self.chunk_scan.feed(&self.input[..take]);
                self.consumed = take;
                self.content_given = true;
                Some(Event::Content {
                    data: &self.input[..take],
                    raw: &self.input[..take],
                })
            }
            Input::Paused | Input::Closed => None,
        }
    }

    /// After a transaction's last chunk: under the `Reject` policy, content with bare line
    /// ends or NUL is refused as DATA would be (`550 5.6.0`), unless it was announced as
    /// `BODY=BINARYMIME` (then it need not be lines at all).
    fn check_chunked_content(&mut self) {
        self.chunk_scan.finish();
        let binary = self.session.envelope().mail_params.body == Some(crate::Body::BinaryMime);
        if self.bare == BareLineEnding::Reject && !binary && !self.chunk_scan.clean() {
            let bare = self.chunk_scan.bare_cr + self.chunk_scan.bare_lf > 0;
            self.session.refuse_chunks(if bare {
                ReplyKind::BareLineEnding
            } else {
                ReplyKind::NulInData
            });
        }
    }

    fn queued_event(&mut self, q: QueuedEvent) -> Option<Event<'_>> {
        match q {
            QueuedEvent::Step(step) => self.step_event(step),
            QueuedEvent::DataEnd(outcome) => {
                let step = self.session.handle_data_end(outcome);
                self.step_event(step)
            }
        }
    }

    fn step_event(&mut self, step: Step) -> Option<Event<'_>> {
        if matches!(step, Step::Decide(Decision::Deliver(_))) {
            // The driver takes the content with the envelope.
            self.content_given = false;
        } else if self.content_given && self.session.envelope().from.is_none() {
            // The transaction ended without a delivery (too large, bare line ends, a refused
            // last chunk, RSET between chunks): tell the driver before the reply.
            self.content_given = false;
            self.queued.push_front(QueuedEvent::Step(step));
            return Some(Event::Discard);
        }
        Some(match step {
            Step::Reply(r) => Event::Reply(r),
            Step::Close(r) => {
                self.closed = true;
                Event::Close(r)
            }
            Step::StartTls(reply) => {
                let discarded = self.input.len() - self.consumed;
                self.input.clear();
                self.consumed = 0;
                Event::StartTls { reply, discarded }
            }
            Step::Decide(d) => Event::Decide(d),
            Step::ReceiveChunk { size, .. } => {
                if self.session.chunked() == size {
                    // The transaction's first chunk with content: a new scan.
                    self.chunk_scan = ChunkScan::default();
                }
                self.chunk_left = size;
                return self.next_event();
            }
        })
    }
}

/// Escapes control bytes for a one-line transcript entry (`\r` as `<CR>`, others as `\xNN`).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' => out.push_str("<CR>"),
            '\n' => out.push_str("<LF>"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_lines_peek_at_the_group_without_consuming_it() {
        let config = ServerConfig {
            auth_required: false,
            ..ServerConfig::default()
        };
        let mut c = ServerConnection::new(
            config,
            Transport::Plain,
            LineEndings::CrlfOnly,
            BareLineEnding::Reject,
        );
        c.receive(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRCPT TO:<g@h\ri>\r\nDATA\r\nRCPT TO:<partial");
        assert!(matches!(c.next_event(), Some(Event::Reply(_))));
        // Deciding MAIL: the RCPT after it is visible; the one with a bare CR stops the peek.
        assert!(matches!(
            c.next_event(),
            Some(Event::Decide(Decision::Mail { .. }))
        ));
        assert_eq!(c.pipelined_lines(10), vec![&b"RCPT TO:<d@e.f>"[..]]);
        assert_eq!(c.pipelined_lines(0), Vec::<&[u8]>::new());
        c.decide(Verdict::Accept);
        assert!(matches!(c.next_event(), Some(Event::Reply(_))));
        assert!(matches!(
            c.next_event(),
            Some(Event::Decide(Decision::Rcpt { .. }))
        ));
        assert!(
            c.pipelined_lines(10).is_empty(),
            "the bare CR line stops it"
        );
        c.decide(Verdict::Accept);
        assert!(matches!(c.next_event(), Some(Event::Reply(_))));
        assert!(matches!(c.next_event(), Some(Event::Reply(r)) if r.code == 501));
        assert!(matches!(
            c.next_event(),
            Some(Event::Decide(Decision::BeginData))
        ));
        // An incomplete line is not a line yet.
        assert!(c.pipelined_lines(10).is_empty());
    }
}
