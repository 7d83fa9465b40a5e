//! Test helpers: start a fake upstream in a temporary directory, and a raw SMTP client that
//! sends exact bytes and reads whole replies (plain, STARTTLS, implicit TLS).

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fake_upstream::smtp_wire::{Decoded, LineDecoder, LineEndings, Reply, ReplyParser};
use fake_upstream::{Config, FakeUpstream, Handle, Persona};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A fresh data directory under the target dir, removed first if it exists.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fake-upstream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn config(persona: &str, name: &str) -> Config {
    Config::new(Persona::load(persona).unwrap(), temp_dir(name))
}

pub async fn start(config: Config) -> Handle {
    FakeUpstream::start(config).await.unwrap()
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A raw SMTP client: exact bytes out, whole replies in.
pub struct Client {
    io: Option<Box<dyn Io>>,
    buf: Vec<u8>,
    lines: LineDecoder,
}

pub fn tls_connector(handle: &Handle) -> tokio_rustls::TlsConnector {
    let config = fake_upstream::tls::client_config(handle.ca_pem()).unwrap();
    tokio_rustls::TlsConnector::from(config)
}

impl Client {
    pub async fn connect(handle: &Handle) -> Client {
        let tcp = TcpStream::connect(handle.addr()).await.unwrap();
        Client::with(Box::new(tcp))
    }

    pub async fn connect_tls(handle: &Handle) -> Client {
        let tcp = TcpStream::connect(handle.tls_addr().unwrap())
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("smtp.163.com").unwrap();
        let tls = tls_connector(handle).connect(name, tcp).await.unwrap();
        Client::with(Box::new(tls))
    }

    fn with(io: Box<dyn Io>) -> Client {
        Client {
            io: Some(io),
            buf: Vec::new(),
            lines: LineDecoder::new(4096, LineEndings::CrlfOnly),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.io.as_mut().unwrap();
        io.write_all(bytes).await.unwrap();
        io.flush().await.unwrap();
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// The next reply, or `None` when the server closed the connection.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut parser = ReplyParser::default();
        loop {
            match self.lines.decode(&self.buf) {
                Decoded::Line { line, consumed } => {
                    let r = parser.push_line(line).expect("a well-formed reply");
                    self.buf.drain(..consumed);
                    if let Some(r) = r {
                        return Some(r);
                    }
                    continue;
                }
                Decoded::NeedMore { consumed } => {
                    self.buf.drain(..consumed);
                }
                Decoded::Error { error, .. } => panic!("bad reply line: {error:?}"),
            }
            let mut chunk = [0u8; 4096];
            let io = self.io.as_mut().unwrap();
            let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk))
                .await
                .expect("a reply within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn reply(&mut self) -> Reply {
        self.try_reply()
            .await
            .expect("a reply, not a closed connection")
    }

    /// Sends a line and returns the reply's wire form without the final CRLF.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await.to_string()
    }

    /// Whether the server closed the connection (reads until EOF, at most 10 s).
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        let io = self.io.as_mut().unwrap();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// STARTTLS, then the handshake against the fake's CA.
    pub async fn starttls(&mut self, handle: &Handle) -> Reply {
        self.send("STARTTLS").await;
        let r = self.reply().await;
        assert_eq!(r.code, 220, "{r}");
        self.handshake(handle).await.unwrap();
        r
    }

    /// The client side of a TLS handshake on this connection (after a 220 to STARTTLS).
    pub async fn handshake(&mut self, handle: &Handle) -> Result<(), String> {
        if !self.buf.is_empty() {
            return Err(format!("{} octets arrived after the 220", self.buf.len()));
        }
        let io = self.io.take().unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tls_connector(handle)
            .connect(name, io)
            .await
            .map_err(|e| e.to_string())?;
        self.io = Some(Box::new(tls));
        Ok(())
    }
}

/// base64 of `s`.
pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Replaces the volatile parts of a transcript: client ports, the coremail token, transids
/// and ten-digit unix timestamps.
pub fn normalize(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut l = line.to_string();
        if let Some(i) = l.find("coremail 1Uxr") {
            l.replace_range(i + 9.., "<token>");
        }
        while let Some(i) = l.find("_____w") {
            let end = l[i..].find([' ', ',']).map(|e| i + e).unwrap_or(l.len());
            l.replace_range(i..end, "<transid>");
        }
        if let Some(i) = l.find("127.0.0.1:") {
            let start = i + "127.0.0.1:".len();
            let end = l[start..]
                .find(|c: char| !c.is_ascii_digit())
                .map(|e| start + e)
                .unwrap_or(l.len());
            l.replace_range(start..end, "<port>");
        }
        out.push_str(&replace_timestamps(&l));
        out.push('\n');
    }
    out
}

/// Every run of exactly ten digits becomes `<ts>`.
fn replace_timestamps(line: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for c in line.chars().chain(std::iter::once('\u{0}')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() == 10 {
            out.push_str("<ts>");
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        if c != '\u{0}' {
            out.push(c);
        }
    }
    out
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}
