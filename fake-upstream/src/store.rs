//! What the fake upstream keeps: accepted messages in per-recipient mailboxes (`<id>.eml`, the
//! delivered copy with the persona's headers, and `<id>.json` beside it); the server writes the
//! raw bytes of each DATA phase and the session transcripts. Also the generated ids (transid, coremail token).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{FixedOffset, Utc};
use serde::Serialize;

use crate::error::Error;
use crate::persona::HeaderStyle;

/// One accepted message, as the handle reports it.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Received {
    /// The transaction id (163's transid); with `/` as `_`, the file name stem.
    pub id: String,
    /// The reverse path in wire form: `<a@b>` or `<>`.
    pub mail_from: String,
    /// Recipient mailboxes, without brackets.
    pub rcpt_to: Vec<String>,
    pub client: SocketAddr,
    /// The session that delivered it: its transcript's id ([`crate::Handle::transcript`]).
    #[serde(default)]
    pub session: u64,
    pub helo: Option<String>,
    pub tls: bool,
    /// The authenticated user, if any.
    pub auth: Option<String>,
    /// Size of the message as received (after dot-unstuffing).
    pub size: u64,
    /// The final reply, as sent.
    pub reply: String,
    pub received_at: String,
    /// Where the delivered copies were written (empty when the persona keeps nothing).
    pub files: Vec<PathBuf>,
    /// The raw bytes of the DATA phase, before dot-unstuffing (when kept).
    pub raw_file: Option<PathBuf>,
    /// Offsets that map the delivered copy back to the message as received.
    pub layout: Layout,
    /// The message exactly as received (after dot-unstuffing); empty when not kept.
    #[serde(skip)]
    pub content: Arc<Vec<u8>>,
}

/// How the delivered copy (`.eml`) was made from the received message: `prefix_len` octets of
/// headers before it, and `appended_len` octets inserted at `appended_at` (an offset in the
/// received message: the end of its header block).
#[derive(Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Layout {
    pub prefix_len: usize,
    pub appended_at: usize,
    pub appended_len: usize,
}

impl Layout {
    /// The received message from a delivered copy.
    pub fn original(&self, eml: &[u8]) -> Vec<u8> {
        let body = &eml[self.prefix_len.min(eml.len())..];
        let at = self.appended_at.min(body.len());
        let mut out = body[..at].to_vec();
        out.extend_from_slice(body.get(at + self.appended_len..).unwrap_or_default());
        out
    }
}

/// Facts about the session for the delivered-copy headers.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub hostid: &'a str,
    pub transid: &'a str,
    pub client_ip: &'a str,
    pub sender: &'a str,
    pub domain: &'a str,
}

/// The delivered copy of `content` in `style`, and its layout.
pub fn delivered_copy(style: HeaderStyle, content: &[u8], trace: &Trace<'_>) -> (Vec<u8>, Layout) {
    match style {
        HeaderStyle::None => (content.to_vec(), Layout::default()),
        HeaderStyle::Coremail => coremail_copy(content, trace),
    }
}

/// persona-163 section 7: DKIM-Signature (a stub: this server signs nothing) and Received
/// prepended, X-CM-* and X-Originating-IP appended after the original headers.
fn coremail_copy(content: &[u8], t: &Trace<'_>) -> (Vec<u8>, Layout) {
    let header_end = memchr::memmem::find(content, b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(content.len());
    let headers = &content[..header_end];
    let present: Vec<&str> = [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-Id",
        "MIME-Version",
    ]
    .into_iter()
    .filter(|h| has_header(headers, h))
    .collect();
    let cst = FixedOffset::east_opt(8 * 3600).expect("valid offset");
    let date = Utc::now()
        .with_timezone(&cst)
        .format("%a, %d %b %Y %H:%M:%S +0800 (CST)");
    let prefix = format!(
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain};\r\n\
         \ts=s110527; h={h}; bh=ZmFrZS11cHN0cmVhbSBzdHVi; b=ZmFrZS11cHN0cmVhbSBzdHVi\r\n\
         Received: from {helo} (unknown [])\r\n\
         \tby {hostid} (Coremail) with SMTP id {transid};\r\n\
         \t{date}\r\n",
        domain = t.domain,
        h = present.join(":"),
        helo = t.helo,
        hostid = t.hostid,
        transid = t.transid,
    );
    let sender_info = t.sender.split('@').next().unwrap_or_default();
    let appended = format!(
        "X-CM-TRANSID:{transid}\r\n\
         X-Originating-IP: [{ip}]\r\n\
         X-CM-SenderInfo: {sender_info}/1tbiFakeUpstreamStub\r\n\
         X-Coremail-Antispam: 1Uf129KBjvJXoWxFakeUpstreamStub\r\n",
        transid = t.transid,
        ip = t.client_ip,
    );
    // After the original headers; when the message has no blank line, after its last line,
    // unless that line has no end (adding text there would join two lines).
    let at = header_end;
    let appended = if at == content.len() && !content.is_empty() && !content.ends_with(b"\r\n") {
        String::new()
    } else {
        appended
    };
    let mut out = Vec::with_capacity(prefix.len() + content.len() + appended.len());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(&content[..at]);
    out.extend_from_slice(appended.as_bytes());
    out.extend_from_slice(&content[at..]);
    let layout = Layout {
        prefix_len: prefix.len(),
        appended_at: at,
        appended_len: appended.len(),
    };
    (out, layout)
}

fn has_header(headers: &[u8], name: &str) -> bool {
    headers.split(|&b| b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && line[name.len()] == b':'
    })
}

/// The value of the first header `name` (unfolded), if any.
pub fn header_value(content: &[u8], name: &str) -> Option<String> {
    let end = memchr::memmem::find(content, b"\r\n\r\n").unwrap_or(content.len());
    let headers = String::from_utf8_lossy(&content[..end]);
    let mut lines = headers.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if !k.eq_ignore_ascii_case(name) {
            continue;
        }
        let mut value = v.trim().to_string();
        while let Some(next) = lines.peek().filter(|l| l.starts_with([' ', '\t'])) {
            value.push(' ');
            value.push_str(next.trim());
            lines.next();
        }
        return Some(value);
    }
    None
}

/// The address of a From header: inside `<...>` when present, else the bare value.
pub fn header_address(value: &str) -> String {
    match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].trim().to_string(),
        _ => value.trim().to_string(),
    }
}

/// A directory name for a mailbox: safe characters kept, the rest as `_`.
pub fn mailbox_dir(address: &str) -> String {
    address
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes a file only the fake's user can read (a mailbox's JSON beside its `.eml`).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(smtp_net::files::FILE_MODE)
        .open(path)?
        .write_all(bytes)
}

/// A transid as a file name: 163's transids may hold `/`.
pub fn file_stem(id: &str) -> String {
    id.replace(['/', '\\'], "_")
}

/// Writes the delivered copy and its JSON for each recipient.
pub async fn write_message(
    data_dir: &Path,
    received: &mut Received,
    eml: &[u8],
) -> Result<(), Error> {
    let mut files = Vec::new();
    for rcpt in &received.rcpt_to {
        let dir = data_dir.join("mailboxes").join(mailbox_dir(rcpt));
        let path = smtp_net::files::write_new_async(
            dir.clone(),
            file_stem(&received.id),
            "eml",
            eml.to_vec(),
        )
        .await
        .map_err(|e| Error::io(&dir, e))?;
        files.push(path);
    }
    received.files = files;
    let json = serde_json::to_vec_pretty(&*received).expect("serializable");
    for eml_path in &received.files {
        let path = eml_path.with_extension("json");
        let (p, bytes) = (path.clone(), json.clone());
        tokio::task::spawn_blocking(move || write_private(&p, &bytes))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Deletes a message's files: each delivered copy and its JSON, and the raw DATA. Files
/// already gone are no error (a user may have cleaned the mailbox by hand).
pub async fn remove_message(received: &Received) {
    let mut paths: Vec<PathBuf> = Vec::new();
    for eml in &received.files {
        paths.push(eml.clone());
        paths.push(eml.with_extension("json"));
    }
    paths.extend(received.raw_file.iter().cloned());
    for p in paths {
        let _ = tokio::fs::remove_file(&p).await;
    }
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const TOKEN: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

fn pick(rng: &mut fastrand::Rng, alphabet: &[u8], n: usize) -> String {
    (0..n)
        .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
        .collect()
}

/// A 163-style transaction id: `_____w` + 16 characters + `--.<n>S2` (persona-163 5.1).
pub fn transid(rng: &mut fastrand::Rng, n: u64) -> String {
    format!("_____w{}--.{}S2", pick(rng, B64, 16), n)
}

/// The per-connection `coremail` EHLO token (persona-163 3.1): fixed prefix and tail, eight
/// varying characters.
pub fn coremail_token(rng: &mut fastrand::Rng) -> String {
    format!(
        "1Uxr2xKj7kG0xkI17xGrU7I0s8FY2U3Uj8Cz28x1UUUUU7Ic2I0Y2U{}UCa0xDrUUUUj",
        pick(rng, TOKEN, 8)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> Trace<'static> {
        Trace {
            helo: "client.example",
            hostid: "gzga-smtp-mtada-g0-3",
            transid: "_____wAAAA--.1S2",
            client_ip: "127.0.0.1",
            sender: "alice@163.com",
            domain: "163.com",
        }
    }

    #[test]
    fn coremail_copy_maps_back_to_the_original() {
        for content in [
            &b"From: alice@163.com\r\nSubject: hi\r\n\r\nbody\r\n"[..],
            b"From: alice@163.com\r\n",
            b"no headers at all",
            b"",
        ] {
            let (eml, layout) = delivered_copy(HeaderStyle::Coremail, content, &trace());
            assert_eq!(layout.original(&eml), content);
            assert!(eml.starts_with(b"DKIM-Signature: v=1;"));
        }
        let (eml, _) = delivered_copy(
            HeaderStyle::Coremail,
            b"From: alice@163.com\r\nSubject: hi\r\n\r\nbody\r\n",
            &trace(),
        );
        let text = String::from_utf8(eml).unwrap();
        assert!(text.contains("h=From:Subject;"), "{text}");
        assert!(
            text.contains("Subject: hi\r\nX-CM-TRANSID:_____wAAAA--.1S2\r\n"),
            "{text}"
        );
        assert!(text.contains("Received: from client.example (unknown [])\r\n\tby gzga-smtp-mtada-g0-3 (Coremail) with SMTP id _____wAAAA--.1S2;\r\n\t"));
        assert!(text.ends_with("+0800 (CST)\r\nFrom: alice@163.com\r\nSubject: hi\r\nX-CM-TRANSID:_____wAAAA--.1S2\r\nX-Originating-IP: [127.0.0.1]\r\nX-CM-SenderInfo: alice/1tbiFakeUpstreamStub\r\nX-Coremail-Antispam: 1Uf129KBjvJXoWxFakeUpstreamStub\r\n\r\nbody\r\n"));
    }

    #[test]
    fn header_values() {
        let m = b"From: \"Boss\" <Boss@Company.com>\r\nSubject: a\r\n b\r\n\r\nFrom: not@this";
        assert_eq!(
            header_value(m, "from").as_deref(),
            Some("\"Boss\" <Boss@Company.com>")
        );
        assert_eq!(header_value(m, "subject").as_deref(), Some("a b"));
        assert_eq!(
            header_address("\"Boss\" <Boss@Company.com>"),
            "Boss@Company.com"
        );
        assert_eq!(header_address(" alice@163.com "), "alice@163.com");
    }

    #[test]
    fn ids_have_the_documented_shape() {
        let mut rng = fastrand::Rng::with_seed(1);
        let t = transid(&mut rng, 7);
        assert!(t.starts_with("_____w") && t.ends_with("--.7S2") && t.len() == 6 + 16 + 6);
        let c = coremail_token(&mut rng);
        assert_eq!(c.len(), 54 + 8 + 12);
        assert_eq!(mailbox_dir("Bob Smith@163.COM"), "bob_smith@163.com");
    }
}
