//! Deliberately broken relays for testing the harness: a check is only worth the defects it
//! catches. [`start`] runs a small, plain SMTP relay (one upstream session per client session,
//! commands forwarded line by line, the upstream's replies passed back verbatim, the message
//! buffered and refused for bare line ends) with at most one [`Defect`] switched on. The
//! correct one (`Defect::None`) passes every portable scenario; each defect must fail at least
//! one (`tests/mutants.rs`, `smtp-relay scenarios --mutants`), and a defect that survives is a
//! scenario still to write.
//!
//! Loopback only, bounded everywhere (lines, messages, every wait), never for real mail.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One defect of a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    /// None: the correct relay, which every portable scenario must pass.
    None,
    /// Takes a line `.` ended by a bare LF (`LF . LF`, `CRLF . LF`, `LF . CRLF`) as the end of
    /// data, treats what follows as commands, and keeps its upstream sessions open after the
    /// client leaves (OpenSMTPD 6.8: the smuggled MAIL goes upstream in a session that is
    /// never closed).
    LfDotLf,
    /// Passes bare CR and bare LF in the content on to the upstream unchanged.
    PassesBareLineEnds,
    /// Removes the client's dot-stuffing and does not put it back.
    Unstuffs,
    /// Adds a header to every message.
    AddsHeader,
    /// Answers `250` to the client's recipients after the first without forwarding them.
    DropsRecipient,
    /// Turns the upstream's `5xx` to the end of data into `250`.
    UpstreamRefusalTo250,
    /// Answers `250` at the end of data before the upstream has answered.
    AnswersEarly,
    /// Rewrites the envelope sender's case (the local part is case-sensitive, RFC 5321 2.4).
    LowercasesSender,
    /// Leaves `BODY=8BITMIME` out of the MAIL it sends upstream (OpenSMTPD 6.8), though the
    /// upstream offers 8BITMIME (RFC 6152 3).
    DropsBodyParameter,
    /// Leaves the syntax of EHLO names and of paths to the upstream: passes on
    /// `bob@exa_mple.com`, `< >`, `<a@x> <b@y>` and `RCPT TO:<>` as they came.
    NoSyntaxCheck,
    /// Adds no `Received:` line (RFC 5321 4.4 says a relay MUST).
    NoTrace,
    /// Sends a message that came in BDAT chunks on in DATA without dot-stuffing it (BDAT
    /// content is not stuffed, RFC 3030 2; DATA content must be, RFC 5321 4.5.2): a line
    /// `.` in a chunk ends the message at the next hop and what follows is read as commands.
    ChunksNotStuffed,
}

impl Defect {
    /// Every defect, the correct relay excluded.
    pub const ALL: [Defect; 12] = [
        Defect::LfDotLf,
        Defect::PassesBareLineEnds,
        Defect::Unstuffs,
        Defect::AddsHeader,
        Defect::DropsRecipient,
        Defect::UpstreamRefusalTo250,
        Defect::AnswersEarly,
        Defect::LowercasesSender,
        Defect::DropsBodyParameter,
        Defect::NoSyntaxCheck,
        Defect::NoTrace,
        Defect::ChunksNotStuffed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Defect::None => "none",
            Defect::LfDotLf => "lf-dot-lf",
            Defect::PassesBareLineEnds => "passes-bare-line-ends",
            Defect::Unstuffs => "unstuffs",
            Defect::AddsHeader => "adds-header",
            Defect::DropsRecipient => "drops-recipient",
            Defect::UpstreamRefusalTo250 => "upstream-refusal-to-250",
            Defect::AnswersEarly => "answers-early",
            Defect::LowercasesSender => "lowercases-sender",
            Defect::DropsBodyParameter => "drops-body-parameter",
            Defect::NoSyntaxCheck => "no-syntax-check",
            Defect::NoTrace => "no-trace",
            Defect::ChunksNotStuffed => "chunks-not-stuffed",
        }
    }

    /// What the defect does, in a sentence.
    pub fn describe(self) -> &'static str {
        match self {
            Defect::None => "the correct relay",
            Defect::LfDotLf => {
                "ends DATA at LF . LF and keeps its upstream session open (OpenSMTPD 6.8)"
            }
            Defect::PassesBareLineEnds => "passes bare CR and LF on to the upstream",
            Defect::Unstuffs => "removes dot-stuffing and does not put it back",
            Defect::AddsHeader => "adds a header to every message",
            Defect::DropsRecipient => "accepts recipients after the first without forwarding them",
            Defect::UpstreamRefusalTo250 => "turns the upstream's 5xx to the data into 250",
            Defect::AnswersEarly => "answers 250 to the data before the upstream has",
            Defect::LowercasesSender => "lowercases the envelope sender",
            Defect::DropsBodyParameter => "leaves BODY=8BITMIME out of the MAIL sent upstream",
            Defect::NoSyntaxCheck => "passes bad EHLO names and paths on instead of refusing them",
            Defect::NoTrace => "adds no Received: line",
            Defect::ChunksNotStuffed => {
                "sends BDAT content on in DATA without dot-stuffing it (smuggling)"
            }
        }
    }
}

impl std::str::FromStr for Defect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        std::iter::once(Defect::None)
            .chain(Defect::ALL)
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = std::iter::once(Defect::None)
                    .chain(Defect::ALL)
                    .map(Defect::name)
                    .collect();
                format!("{s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// The longest command line or reply line read.
const MAX_LINE: usize = 4096;
/// The largest message buffered; beyond it, `552`.
const MAX_MESSAGE: usize = 64 << 20;
/// Every wait: a client's next bytes, the upstream's connect and replies.
const WAIT: Duration = Duration::from_secs(10);

/// A running mutant relay.
pub struct Mutant {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    /// Upstream sessions held open by [`Defect::LfDotLf`] until shutdown.
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Mutant {
    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends every session and closes the upstream sessions it held.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        self.held.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl Drop for Mutant {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts a relay with `defect` on 127.0.0.1 (port 0), delivering to `upstream` (plain SMTP).
pub async fn start(defect: Defect, upstream: SocketAddr) -> std::io::Result<Mutant> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = watch::channel(false);
    let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let keep = held.clone();
    tokio::spawn(async move {
        let mut stopped = rx.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let (keep, mut stop) = (keep.clone(), rx.clone());
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = session(stream, upstream, defect, keep) => {}
                            _ = stop.wait_for(|s| *s) => {}
                        }
                    });
                }
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    });
    Ok(Mutant {
        addr,
        shutdown: tx,
        held,
    })
}

/// Bytes read from one side, with what is buffered beyond the last line taken.
struct Input {
    read: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Input {
    async fn more(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.read.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no input"))??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next line with its ending (LF, with or without CR), or `None` at the end.
    async fn line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                return Ok(Some(self.buf.drain(..=i).collect()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(std::io::Error::other("line too long"));
            }
            if !self.more().await? {
                return Ok(None);
            }
        }
    }

    /// Exactly `n` octets (a BDAT chunk).
    async fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more().await? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed in a BDAT chunk",
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// The message content up to its terminator (taken off too), and the content's length
    /// without the terminator; `lenient` also ends it at a `.` line ended by a bare LF.
    async fn content(&mut self, lenient: bool) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some((end, after)) = terminator(&self.buf, lenient) {
                let content = self.buf[..end].to_vec();
                self.buf.drain(..after);
                return Ok(Some(content));
            }
            if self.buf.len() > MAX_MESSAGE {
                return Ok(None);
            }
            if !self.more().await? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed in DATA",
                ));
            }
        }
    }
}

struct Upstream {
    read: OwnedReadHalf,
    replies: smtp_wire::ClientConnection,
    write: OwnedWriteHalf,
}

impl Upstream {
    async fn connect(addr: SocketAddr) -> std::io::Result<Upstream> {
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
        let (read, write) = tcp.into_split();
        let mut up = Upstream {
            read,
            replies: smtp_wire::ClientConnection::new(MAX_LINE),
            write,
        };
        up.reply().await?;
        up.send(b"EHLO mutant.test\r\n").await?;
        up.reply().await?;
        Ok(up)
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(WAIT, self.write.write_all(bytes))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write"))?
    }

    /// One whole reply, every line with its CRLF, as the upstream said it.
    async fn reply(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(reply) = self
                .replies
                .next_reply()
                .map_err(|e| std::io::Error::other(e.to_string()))?
            {
                return Ok(reply.to_bytes());
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(WAIT, self.read.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))??;
            if n == 0 {
                return Err(std::io::Error::other("upstream closed"));
            }
            self.replies.receive(&chunk[..n]);
        }
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Vec<u8>> {
        self.send(line).await?;
        self.reply().await
    }

    fn into_stream(self) -> Option<TcpStream> {
        self.read.reunite(self.write).ok()
    }
}

fn code(reply: &[u8]) -> u16 {
    std::str::from_utf8(reply.get(..3).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn session(
    client: TcpStream,
    upstream: SocketAddr,
    defect: Defect,
    held: Arc<Mutex<Vec<TcpStream>>>,
) {
    let (read, mut out) = client.into_split();
    let mut input = Input {
        read,
        buf: Vec::new(),
    };
    let mut up = match Upstream::connect(upstream).await {
        Ok(up) => up,
        Err(e) => {
            let _ = out
                .write_all(format!("421 4.4.1 upstream unreachable: {e}\r\n").as_bytes())
                .await;
            return;
        }
    };
    let _ = drive(&mut input, &mut out, &mut up, defect).await;
    if defect == Defect::LfDotLf {
        if let Some(stream) = up.into_stream() {
            held.lock().unwrap_or_else(|p| p.into_inner()).push(stream);
        }
    } else {
        let _ = up.command(b"QUIT\r\n").await;
    }
}

async fn drive(
    input: &mut Input,
    out: &mut OwnedWriteHalf,
    up: &mut Upstream,
    defect: Defect,
) -> std::io::Result<()> {
    out.write_all(format!("220 mutant.test ESMTP ({})\r\n", defect.name()).as_bytes())
        .await?;
    let (mut mail_ok, mut rcpts) = (false, 0u32);
    // The chunks of a message in BDAT so far (RFC 3030), or `None` when one was refused.
    let mut chunks: Option<Vec<u8>> = Some(Vec::new());
    while let Some(line) = input.line().await? {
        let text = String::from_utf8_lossy(&line);
        let verb = text
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let argument = text.split_whitespace().nth(1).is_some();
        // The syntax of names, paths and arguments is the relay's to check (RFC 5321 4.1.2,
        // 4.1.3), not something to leave to the upstream.
        let command = forwarded(&line);
        if defect != Defect::NoSyntaxCheck
            && matches!(verb.as_str(), "EHLO" | "HELO" | "MAIL" | "RCPT" | "VRFY")
            && let Err(e) = smtp_wire::Command::parse(&command[..command.len() - 2])
        {
            out.write_all(&e.reply().to_bytes()).await?;
            continue;
        }
        match verb.as_str() {
            // RFC 5321 4.1.1.1: EHLO and HELO name the client.
            "EHLO" | "HELO" if !argument => {
                out.write_all(b"501 5.5.4 EHLO and HELO need a domain\r\n")
                    .await?
            }
            "EHLO" => {
                // RFC 5321 4.1.4: EHLO resets a transaction under way, as RSET does.
                if mail_ok {
                    up.command(b"RSET\r\n").await?;
                    (mail_ok, rcpts) = (false, 0);
                }
                chunks = Some(Vec::new());
                out.write_all(
                    b"250-mutant.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 SIZE 67108864\r\n",
                )
                .await?
            }
            "HELO" => out.write_all(b"250 mutant.test\r\n").await?,
            // Informational commands are the relay's own to answer, never the upstream's.
            "NOOP" => out.write_all(b"250 2.0.0 OK\r\n").await?,
            "VRFY" => out.write_all(b"252 2.1.5 will try\r\n").await?,
            "EXPN" => out.write_all(b"502 5.5.1 no EXPN\r\n").await?,
            "HELP" => out.write_all(b"214 2.0.0 see RFC 5321\r\n").await?,
            "QUIT" => {
                out.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            // RFC 5321 4.1.1.4: DATA takes no argument.
            "DATA" if argument => {
                out.write_all(b"501 5.5.4 DATA takes no argument\r\n")
                    .await?
            }
            "DATA" if mail_ok && rcpts > 0 => {
                (mail_ok, rcpts) = (false, 0);
                if !data(input, out, up, defect).await? {
                    return Ok(());
                }
            }
            "BDAT" => {
                let state = (&mut chunks, &mut mail_ok, &mut rcpts);
                if !bdat(&text, input, out, up, defect, state).await? {
                    return Ok(());
                }
            }
            "RSET" | "MAIL" => {
                chunks = Some(Vec::new());
                forward(&line, &verb, out, up, defect, (&mut mail_ok, &mut rcpts)).await?
            }
            "RCPT" if defect == Defect::DropsRecipient && rcpts > 0 => {
                rcpts += 1;
                out.write_all(b"250 2.1.5 OK (not forwarded)\r\n").await?;
            }
            _ => forward(&line, &verb, out, up, defect, (&mut mail_ok, &mut rcpts)).await?,
        }
    }
    Ok(())
}

/// `BDAT n [LAST]` (RFC 3030 2): the chunk is read whatever the verdict, gathered, and the
/// message goes on in DATA (stuffed) when its last chunk came. False: the session ends (a
/// chunk too big to read).
async fn bdat(
    text: &str,
    input: &mut Input,
    out: &mut OwnedWriteHalf,
    up: &mut Upstream,
    defect: Defect,
    (chunks, mail_ok, rcpts): (&mut Option<Vec<u8>>, &mut bool, &mut u32),
) -> std::io::Result<bool> {
    let mut words = text.split_whitespace().skip(1);
    let size = words.next().and_then(|n| n.parse::<usize>().ok());
    let last = words.next().is_some_and(|w| w.eq_ignore_ascii_case("LAST"));
    let Some(size) = size.filter(|n| *n <= MAX_MESSAGE) else {
        out.write_all(b"501 5.5.4 BDAT needs a size\r\n").await?;
        return Ok(false);
    };
    let chunk = input.exact(size).await?;
    let taken = chunks.as_mut().filter(|c| c.len() + size <= MAX_MESSAGE);
    match taken {
        _ if !(*mail_ok && *rcpts > 0) => {
            out.write_all(b"503 5.5.1 MAIL and RCPT first\r\n").await?
        }
        None => {
            *chunks = None;
            out.write_all(b"552 5.3.4 message refused\r\n").await?
        }
        Some(c) if !last => {
            c.extend_from_slice(&chunk);
            let said = format!("250 2.0.0 {} octets\r\n", c.len());
            out.write_all(said.as_bytes()).await?
        }
        Some(c) => {
            c.extend_from_slice(&chunk);
            let content = std::mem::take(c);
            (*mail_ok, *rcpts) = (false, 0);
            deliver(content, true, out, up, defect).await?;
        }
    }
    if last {
        *chunks = Some(Vec::new());
    }
    Ok(true)
}

/// A command line as it goes upstream: whatever line ending it came with, CRLF.
fn forwarded(line: &[u8]) -> Vec<u8> {
    let mut l = line.to_vec();
    while matches!(l.last(), Some(b'\r' | b'\n')) {
        l.pop();
    }
    l.extend_from_slice(b"\r\n");
    l
}

/// The message after a 354, checked and changed as the defect has it, then to the upstream;
/// false when the session ends here (the message was too big).
async fn data(
    input: &mut Input,
    out: &mut OwnedWriteHalf,
    up: &mut Upstream,
    defect: Defect,
) -> std::io::Result<bool> {
    out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        .await?;
    let Some(content) = input.content(defect == Defect::LfDotLf).await? else {
        out.write_all(b"552 5.3.4 message too big\r\n").await?;
        return Ok(false);
    };
    deliver(content, false, out, up, defect).await?;
    Ok(true)
}

/// A message to the upstream in DATA: `content` as DATA content came (dot-stuffed), or as
/// BDAT chunks did (`chunked`: to be stuffed here), checked and changed as the defect has it.
async fn deliver(
    mut content: Vec<u8>,
    chunked: bool,
    out: &mut OwnedWriteHalf,
    up: &mut Upstream,
    defect: Defect,
) -> std::io::Result<()> {
    let lenient = matches!(defect, Defect::LfDotLf | Defect::PassesBareLineEnds);
    if !lenient && unclean(&content) {
        out.write_all(b"550 5.6.0 bare CR, bare LF or NUL in the message\r\n")
            .await?;
        up.command(b"RSET\r\n").await?;
        return Ok(());
    }
    if chunked && defect != Defect::ChunksNotStuffed {
        content = stuff(&content);
    }
    if defect == Defect::Unstuffs {
        content = unstuff(&content);
    }
    // RFC 5321 4.4: a relay adds its trace line at the top.
    if defect != Defect::NoTrace {
        let mut traced = b"Received: from client by mutant.test with ESMTP;\r\n\tTue, 1 Dec 2026 10:00:00 +0000\r\n".to_vec();
        traced.extend_from_slice(&content);
        content = traced;
    }
    if defect == Defect::AddsHeader {
        let mut c = b"X-Mutant: added\r\n".to_vec();
        c.extend_from_slice(&content);
        content = c;
    }
    let r = up.command(b"DATA\r\n").await?;
    if code(&r) != 354 {
        out.write_all(&r).await?;
        return Ok(());
    }
    if defect == Defect::AnswersEarly {
        out.write_all(b"250 2.0.0 OK (answered early)\r\n").await?;
    }
    if !content.is_empty() && !content.ends_with(b"\r\n") {
        content.extend_from_slice(b"\r\n");
    }
    up.send(&content).await?;
    let r = up.command(b".\r\n").await?;
    match defect {
        Defect::AnswersEarly => {}
        Defect::UpstreamRefusalTo250 if code(&r) >= 500 => {
            out.write_all(b"250 2.0.0 OK\r\n").await?
        }
        _ => out.write_all(&r).await?,
    }
    Ok(())
}

/// A command the upstream answers: forwarded (changed as the defect has it), its reply
/// passed back, the transaction's state followed.
async fn forward(
    line: &[u8],
    verb: &str,
    out: &mut OwnedWriteHalf,
    up: &mut Upstream,
    defect: Defect,
    (mail_ok, rcpts): (&mut bool, &mut u32),
) -> std::io::Result<()> {
    let mut l = forwarded(line);
    if verb == "RCPT" || verb == "MAIL" {
        l = without_source_route(&l);
    }
    if verb == "MAIL" && defect == Defect::DropsBodyParameter {
        let text = String::from_utf8_lossy(&l).replace(" BODY=8BITMIME", "");
        l = text.into_bytes();
    }
    if verb == "MAIL" && defect == Defect::LowercasesSender {
        l = l.to_ascii_lowercase();
    }
    let r = up.command(&l).await?;
    let ok = code(&r) / 100 == 2;
    match verb {
        "MAIL" => {
            *mail_ok = ok;
            *rcpts = 0;
        }
        "RCPT" if ok => *rcpts += 1,
        "RSET" => {
            *mail_ok = false;
            *rcpts = 0;
        }
        _ => {}
    }
    out.write_all(&r).await?;
    Ok(())
}

mod bytes;
mod score;
use bytes::*;
pub use score::{Score, score, table};

#[cfg(test)]
mod tests;
