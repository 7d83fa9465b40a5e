//! Helpers for tests that talk SMTP to a server (this crate's, the relay's): a raw client that
//! sends exact bytes and reads whole replies over plain TCP, STARTTLS or implicit TLS, and a
//! transcript normaliser for snapshots.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use smtp_net::Io;
use smtp_wire::{ClientConnection, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Config;
use crate::persona::Persona;
use crate::server::{FakeUpstream, Handle};

/// A fresh directory `<tmp>/fake-upstream-tests/<name>-<pid>`, emptied first.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join("fake-upstream-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// A persona's defaults in a fresh temporary directory.
pub fn config(persona: &str, name: &str) -> Config {
    Config::new(
        Persona::load(persona).expect("a shipped persona"),
        temp_dir(name),
    )
}

/// Starts a fake upstream, panicking on failure (tests only).
pub async fn start(config: Config) -> Handle {
    FakeUpstream::start(config)
        .await
        .expect("the fake upstream starts")
}

/// A rustls connector that trusts only `ca_pem`.
pub fn tls_connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let config = crate::tls::client_config(ca_pem).expect("a valid CA");
    tokio_rustls::TlsConnector::from(config)
}

/// A raw SMTP client: exact bytes out, whole replies in. Every read waits at most 10 s.
pub struct Client {
    io: Option<Box<dyn Io>>,
    replies: ClientConnection,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Client::with(Box::new(tcp))
    }

    /// Implicit TLS, verifying the server as `name` against `ca_pem`.
    pub async fn connect_tls(addr: SocketAddr, ca_pem: &str, name: &str) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("a name");
        let tls = tls_connector(ca_pem)
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        Client::with(Box::new(tls))
    }

    /// A client over a connection made elsewhere (e.g. bound to another loopback address).
    pub fn from_io(io: Box<dyn Io>) -> Client {
        Client::with(io)
    }

    fn with(io: Box<dyn Io>) -> Client {
        Client {
            io: Some(io),
            replies: ClientConnection::new(4096),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.io.as_mut().expect("connected");
        io.write_all(bytes).await.expect("write");
        io.flush().await.expect("flush");
    }

    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// The next reply, or `None` when the server closed the connection.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some(r) = self.replies.next_reply().expect("a well-formed reply") {
                return Some(r);
            }
            let mut chunk = [0u8; 4096];
            let io = self.io.as_mut().expect("connected");
            let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk))
                .await
                .expect("a reply within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.replies.receive(&chunk[..n]);
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
        let io = self.io.as_mut().expect("connected");
        matches!(
            tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// STARTTLS, then the handshake against `ca_pem` (as `localhost`).
    pub async fn starttls(&mut self, ca_pem: &str) -> Reply {
        self.send("STARTTLS").await;
        let r = self.reply().await;
        assert_eq!(r.code, 220, "{r}");
        self.handshake(ca_pem).await.expect("TLS handshake");
        r
    }

    /// The client side of a TLS handshake on this connection (after a 220 to STARTTLS).
    pub async fn handshake(&mut self, ca_pem: &str) -> Result<(), String> {
        if !self.replies.buffered().is_empty() {
            return Err(format!(
                "{} octets arrived after the 220",
                self.replies.buffered().len()
            ));
        }
        let io = self.io.take().expect("connected");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("a name");
        let tls = tls_connector(ca_pem)
            .connect(name, io)
            .await
            .map_err(|e| e.to_string())?;
        self.io = Some(Box::new(tls));
        Ok(())
    }
}

/// base64 of `s`, for AUTH lines.
pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Replaces the volatile parts of a transcript: client ports, the coremail token, transids,
/// RFC 5322 dates (any form, see [`crate::dates`]), ten-digit unix timestamps and SHA-256
/// fingerprints of per-run keys.
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
        // SHA-256 fingerprints (`sha256:AB:CD:...`) of keys generated per run.
        let mut from = 0;
        while let Some(i) = l[from..].find("sha256:").map(|i| from + i) {
            let start = i + "sha256:".len();
            let end = start
                + l[start..]
                    .find(|c: char| !(c.is_ascii_hexdigit() || c == ':'))
                    .unwrap_or(l.len() - start);
            if end - start == 95 {
                l.replace_range(start..end, "<fingerprint>");
            }
            from = start;
        }
        out.push_str(&replace_timestamps(&crate::dates::replace_dates(&l)));
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

/// A child process that is killed and reaped when the guard goes out of scope, so a failing
/// test never leaves a server running.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `python3 -c script args...` off the async threads; panics with its output unless it
/// succeeds, and returns its standard output.
pub async fn python(script: &str, args: Vec<String>) -> String {
    let script = script.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("python3 runs")
    })
    .await
    .expect("the blocking task ends");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python3 failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
