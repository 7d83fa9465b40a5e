//! The scenario's client side: its connections to the relay, each reply read through
//! `ClientConnection`, each wait bounded.

use super::*;

/// The client side of a scenario.
pub(super) struct Client {
    pub(super) conn: Option<Conn>,
    /// Earlier connections, kept open (idle) when the scenario connects again.
    pub(super) held: Vec<Conn>,
    pub(super) tls: Arc<rustls::ClientConfig>,
    /// Bytes of `C:`/`raw:` steps not yet written (one write: a pipelined group).
    pub(super) pending: Vec<u8>,
    /// What the client said and heard, with times (for the merged transcript of external
    /// relays).
    pub(super) events: Vec<(Instant, String)>,
    /// Messages the client sent (the DATA content after dot-unstuffing), in order.
    pub(super) sent: Vec<Vec<u8>>,
    /// For each of `sent`: it had a bare CR or LF on the wire (a relay may repair those as
    /// it likes, so its copy is counted, not compared).
    pub(super) bare: Vec<bool>,
    /// The message being sent has had a bare CR or LF so far; the last octet of it.
    pub(super) bare_now: (bool, u8),
    /// Inside DATA after a 354: decodes what is sent.
    pub(super) data: Option<(DataDecoder, Vec<u8>)>,
    /// The final reply to each message in `sent` (when it was read).
    pub(super) finals: Vec<Option<Reply>>,
    /// A message ended and its final reply is the next one read.
    pub(super) awaiting_final: bool,
    /// A `drain` saw the relay close: later sends are skipped.
    pub(super) closed_seen: bool,
    /// Against another relay: the header line put first in every message (its scenario's
    /// token), taken out again of what `sent` keeps.
    pub(super) token: Option<String>,
    /// The last write ended with a DATA command: a 354 now opens a message of the client's
    /// own (not one smuggled inside another).
    pub(super) data_written: bool,
    pub(super) at_line: usize,
    pub(super) at_step: String,
    /// A message going in BDAT chunks (RFC 3030), followed from the bytes written.
    pub(super) bdat: Option<BdatSend>,
    /// A command line written in part (the rest comes with a later write).
    pub(super) partial: Vec<u8>,
    /// What each command written and not yet answered is (to know which reply is a BDAT
    /// message's final one); a DATA message's final reply is `awaiting_final`'s.
    pub(super) owed: std::collections::VecDeque<Owed>,
    /// A message begun by `bdat` steps has not had its last chunk: its first chunk carried
    /// the token (against another relay), the next ones do not.
    pub(super) bdat_open: bool,
}

/// A BDAT message as the client sends it.
#[derive(Default)]
pub(super) struct BdatSend {
    /// Octets of the chunk under way still to come, and whether it is the last.
    left: u64,
    last: bool,
    msg: Vec<u8>,
    scan: smtp_wire::ChunkScan,
}

/// A reply the relay owes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owed {
    Other,
    /// The final reply to message `sent[i]`, sent in BDAT.
    Final(usize),
}

pub(super) struct Conn {
    pub(super) io: Box<dyn Io>,
    /// The relay's replies: bytes read, whole replies out.
    pub(super) replies: ClientConnection,
    pub(super) eof: bool,
}

/// No single reply line longer than this is accepted from the relay.
pub(super) const MAX_REPLY_LINE: usize = 8192;

/// A step that waits for the relay gives up after this.
pub(super) const STEP_WAIT: Duration = Duration::from_secs(15);

impl Client {
    pub(super) fn new(tls: Arc<rustls::ClientConfig>) -> Client {
        Client {
            conn: None,
            held: Vec::new(),
            tls,
            pending: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
            bare: Vec::new(),
            bare_now: (false, 0),
            data: None,
            finals: Vec::new(),
            awaiting_final: false,
            closed_seen: false,
            token: None,
            data_written: false,
            at_line: 0,
            at_step: String::new(),
            bdat: None,
            partial: Vec::new(),
            owed: Default::default(),
            bdat_open: false,
        }
    }

    pub(super) fn note(&mut self, line: String) {
        self.events.push((Instant::now(), line));
    }

    pub(super) fn conn(&mut self) -> Result<&mut Conn, String> {
        self.conn
            .as_mut()
            .ok_or_else(|| "not connected (the scenario needs connect first)".to_string())
    }

    pub(super) async fn flush(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.closed_seen && self.conn.is_none() {
            let n = self.pending.len();
            self.pending.clear();
            self.note(format!(
                "* {n} octets not sent: the relay had closed the connection"
            ));
            return Ok(());
        }
        let bytes = std::mem::take(&mut self.pending);
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let shown = match line.strip_suffix(b"\r\n") {
                Some(l) if !l.contains(&b'\r') && !l.contains(&b'\n') => {
                    crate::scenario::escape(l).replace("\\\\", "\\")
                }
                _ => format!("<raw> {}", crate::scenario::escape(line)),
            };
            self.note(format!("C: {shown}"));
        }
        let content = self.track_data(&bytes);
        self.track_commands(&bytes[content..]);
        self.data_written = bytes.to_ascii_uppercase().ends_with(b"DATA\r\n");
        let conn = self.conn()?;
        match tokio::time::timeout(STEP_WAIT, conn.io.write_all(&bytes)).await {
            Ok(Ok(())) => {
                let _ = conn.io.flush().await;
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err("write timed out (the relay does not read)".into()),
        }
    }

    /// Follows the commands written (each owes a reply) and the BDAT chunks among them, to
    /// know each message sent in chunks and which reply is its final one. After a DATA line
    /// the rest of the write may be content sent ahead of the 354: not counted.
    pub(super) fn track_commands(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if let Some(b) = self.bdat.as_mut().filter(|b| b.left > 0) {
                let take = (b.left as usize).min(bytes.len());
                b.scan.feed(&bytes[..take]);
                b.msg.extend_from_slice(&bytes[..take]);
                b.left -= take as u64;
                bytes = &bytes[take..];
                if b.left == 0 && b.last {
                    self.end_bdat_message();
                }
                continue;
            }
            // Lines end at CRLF only, as the relay frames them (a bare LF is inside a line);
            // a CR that ends one write and an LF that starts the next are one line end.
            let line = if self.partial.is_empty() {
                let Some(end) = memchr::memmem::find(bytes, b"\r\n") else {
                    self.partial.extend_from_slice(bytes);
                    return;
                };
                let line = bytes[..end + 2].to_vec();
                bytes = &bytes[end + 2..];
                line
            } else {
                // The end of a line begun in an earlier write (its CR may end that write).
                let cr_before =
                    self.partial.last() == Some(&b'\r') && bytes.first() == Some(&b'\n');
                let end = if cr_before {
                    Some(1)
                } else {
                    memchr::memmem::find(bytes, b"\r\n").map(|e| e + 2)
                };
                let Some(end) = end else {
                    self.partial.extend_from_slice(bytes);
                    return;
                };
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&bytes[..end]);
                bytes = &bytes[end..];
                line
            };
            let text = String::from_utf8_lossy(&line)
                .trim_end()
                .to_ascii_uppercase();
            let mut words = text.split_ascii_whitespace();
            if words.next() == Some("BDAT")
                && let Some(size) = words.next().and_then(|n| n.parse::<u64>().ok())
            {
                let last = words.next() == Some("LAST");
                self.owed.push_back(if last {
                    Owed::Final(self.sent.len())
                } else {
                    Owed::Other
                });
                let b = self.bdat.get_or_insert_with(BdatSend::default);
                b.left = size;
                b.last = last;
                if size == 0 && last {
                    self.end_bdat_message();
                }
                continue;
            }
            self.owed.push_back(Owed::Other);
            match text.as_str() {
                "DATA" => return,
                "RSET" => self.bdat = None,
                _ => {}
            }
        }
    }

    /// Buffers a BDAT chunk, its size counted: `BDAT <size>[ LAST]` and the octets. Against
    /// another relay the scenario's token goes first in a message's first chunk.
    pub(super) fn bdat_chunk(&mut self, content: &[u8], last: bool) {
        let token = match &self.token {
            Some(t) if !self.bdat_open => t.as_bytes(),
            _ => &[],
        };
        let size = token.len() + content.len();
        let command = format!("BDAT {size}{}\r\n", if last { " LAST" } else { "" });
        self.pending.extend_from_slice(command.as_bytes());
        self.pending.extend_from_slice(token);
        self.pending.extend_from_slice(content);
        self.bdat_open = !last;
    }

    /// A command line the scenario sends: one that begins a transaction (or ends one) ends
    /// a message of `bdat` steps left without its last chunk.
    pub(super) fn command_sent(&mut self, bytes: &[u8]) {
        let upper = bytes.to_ascii_uppercase();
        if [&b"RSET"[..], b"MAIL", b"EHLO", b"HELO"]
            .iter()
            .any(|verb| upper.starts_with(verb))
        {
            self.bdat_open = false;
        }
    }

    /// The last chunk of a BDAT message was written: the message is the client's.
    fn end_bdat_message(&mut self) {
        let Some(mut b) = self.bdat.take() else {
            return;
        };
        b.scan.finish();
        self.bare.push(b.scan.bare_cr + b.scan.bare_lf > 0);
        let msg = match &self.token {
            Some(_) => without_token(&b.msg),
            None => b.msg,
        };
        self.sent.push(msg);
        self.finals.push(None);
    }

    /// A new connection: what the old one owed is not coming; the greeting is.
    pub(super) fn connected(&mut self) {
        self.owed.clear();
        self.owed.push_back(Owed::Other);
        self.partial.clear();
        self.bdat = None;
        self.bdat_open = false;
    }

    /// Follows the DATA content the client sends after a 354, to know each message; how many
    /// leading octets of `bytes` were that content.
    pub(super) fn track_data(&mut self, mut bytes: &[u8]) -> usize {
        let all = bytes.len();
        let scan = |seen: &mut (bool, u8), part: &[u8]| {
            for &b in part {
                seen.0 |= (seen.1 == b'\r' && b != b'\n') || (b == b'\n' && seen.1 != b'\r');
                seen.1 = b;
            }
        };
        while let Some((decoder, out)) = self.data.as_mut() {
            match decoder.decode(bytes, out) {
                DataProgress::NeedMore => {
                    scan(&mut self.bare_now, bytes);
                    return all;
                }
                DataProgress::Done { consumed } => {
                    scan(&mut self.bare_now, &bytes[..consumed]);
                    self.bare.push(std::mem::take(&mut self.bare_now).0);
                    let (_, msg) = self.data.take().expect("some");
                    let msg = match &self.token {
                        Some(_) => without_token(&msg),
                        None => msg,
                    };
                    self.sent.push(msg);
                    self.finals.push(None);
                    self.awaiting_final = true;
                    bytes = &bytes[consumed..];
                }
            }
        }
        all - bytes.len()
    }

    pub(super) async fn read_reply(&mut self) -> Result<Reply, String> {
        let conn = self.conn()?;
        let deadline = Instant::now() + STEP_WAIT;
        loop {
            match conn.replies.next_reply() {
                Ok(Some(reply)) => {
                    for l in reply.to_string().split("\r\n") {
                        self.note(format!("S: {l}"));
                    }
                    if self.awaiting_final {
                        self.awaiting_final = false;
                        if let Some(last) = self.finals.last_mut() {
                            *last = Some(reply.clone());
                        }
                    } else if let Some(Owed::Final(i)) = self.owed.pop_front()
                        && let Some(f) = self.finals.get_mut(i)
                    {
                        *f = Some(reply.clone());
                    }
                    if reply.code == 354 && self.data.is_none() {
                        self.data = Some((
                            DataDecoder::new(u64::MAX, BareLineEnding::Normalize),
                            Vec::new(),
                        ));
                        if let Some(token) = &self.token
                            && std::mem::take(&mut self.data_written)
                        {
                            self.pending.splice(0..0, token.bytes());
                        }
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            if conn.eof {
                return Err(if conn.replies.buffered().is_empty() {
                    "the relay closed the connection".to_string()
                } else {
                    format!(
                        "the relay closed the connection after {:?}",
                        String::from_utf8_lossy(conn.replies.buffered())
                    )
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(left, conn.io.read(&mut chunk)).await {
                Err(_) => return Err(format!("no reply within {}s", STEP_WAIT.as_secs())),
                Ok(Ok(0)) => conn.eof = true,
                Ok(Ok(n)) => conn.replies.receive(&chunk[..n]),
                Ok(Err(e)) => {
                    if e.kind() == std::io::ErrorKind::ConnectionReset {
                        conn.eof = true;
                    } else {
                        return Err(format!("read failed: {e}"));
                    }
                }
            }
        }
    }

    /// Reads replies until the relay is quiet for 150 ms or closes.
    pub(super) async fn drain(&mut self) -> Result<(), String> {
        if self.conn.is_none() {
            return Ok(());
        }
        loop {
            let conn = self.conn()?;
            if conn.replies.buffered().is_empty() && !conn.eof {
                let mut chunk = [0u8; 8192];
                match tokio::time::timeout(Duration::from_millis(150), conn.io.read(&mut chunk))
                    .await
                {
                    Err(_) => return Ok(()),
                    Ok(Ok(0)) | Ok(Err(_)) => conn.eof = true,
                    Ok(Ok(n)) => conn.replies.receive(&chunk[..n]),
                }
            }
            let conn = self.conn()?;
            if conn.eof && conn.replies.buffered().is_empty() {
                self.note("* closed by the relay".into());
                self.conn = None;
                self.closed_seen = true;
                return Ok(());
            }
            if conn.eof && memchr::memmem::find(conn.replies.buffered(), b"\r\n").is_none() {
                let rest = String::from_utf8_lossy(conn.replies.buffered()).into_owned();
                return Err(format!(
                    "the relay closed after an incomplete reply line {rest:?}"
                ));
            }
            self.read_reply().await?;
        }
    }

    pub(super) async fn expect_close(&mut self) -> Result<(), String> {
        let conn = self.conn()?;
        let deadline = Instant::now() + STEP_WAIT;
        while !conn.eof {
            if !conn.replies.buffered().is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(left, conn.io.read(&mut chunk)).await {
                Err(_) => {
                    return Err("expected the relay to close the connection; it stayed open".into());
                }
                Ok(Ok(0)) | Ok(Err(_)) => conn.eof = true,
                Ok(Ok(n)) => conn.replies.receive(&chunk[..n]),
            }
        }
        if !conn.replies.buffered().is_empty() {
            let got = String::from_utf8_lossy(conn.replies.buffered()).into_owned();
            return Err(format!("expected the close, got {got:?}"));
        }
        self.note("* closed by the relay".into());
        self.conn = None;
        Ok(())
    }

    pub(super) async fn handshake(&mut self) -> Result<(), String> {
        let mut conn = self.conn.take().ok_or("not connected")?;
        if !conn.replies.buffered().is_empty() {
            return Err(format!(
                "{} octets arrived after the 220 to STARTTLS (possible injection)",
                conn.replies.buffered().len()
            ));
        }
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let io = tokio::time::timeout(STEP_WAIT, connector.connect(name, conn.io))
            .await
            .map_err(|_| "TLS handshake timed out".to_string())?
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        conn.io = Box::new(io);
        self.conn = Some(conn);
        self.note("* TLS handshake done (verified against the run's CA)".into());
        Ok(())
    }
}

/// Reply text as on the wire, per line, after the code and its separator.
pub(super) fn wire_lines(reply: &Reply) -> Vec<String> {
    reply
        .to_string()
        .split("\r\n")
        .map(|l| l.get(4..).unwrap_or("").to_string())
        .collect()
}

pub(super) async fn write(conn: &mut Conn, bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(STEP_WAIT, conn.io.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("write timed out".into()),
    }
}
