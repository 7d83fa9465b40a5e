//! One message as the page shows it: its headers, the body decoded (charsets such as GB2312
//! and GBK, quoted-printable, base64, by mail-parser), its attachments, where its files are.
//! A message above [`VIEW_MAX`] is not read whole: its headers only.

use std::path::PathBuf;

use serde::Serialize;

use super::index::{Entry, read_head};

/// The largest message whose body the page decodes; above it, headers and the raw download.
pub const VIEW_MAX: u64 = 16 * 1024 * 1024;

#[derive(Serialize)]
pub struct Header {
    pub name: String,
    /// As written (encoded words left as they are).
    pub raw: String,
    /// Decoded for reading, when it differs from `raw`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decoded: Option<String>,
}

#[derive(Serialize)]
pub struct Attachment {
    /// Its number in the download path (`attachments/<index>`).
    pub index: u32,
    pub name: Option<String>,
    pub content_type: String,
    pub size: usize,
}

/// What `GET /api/v1/messages/{id}` returns.
#[derive(Serialize)]
pub struct View {
    #[serde(flatten)]
    pub entry: Entry,
    /// The session that delivered it (its transcript).
    pub session: u64,
    pub client: String,
    pub helo: Option<String>,
    pub date: Option<String>,
    pub cc: String,
    pub message_id: Option<String>,
    pub headers: Vec<Header>,
    /// The plain-text body, decoded.
    pub text: Option<String>,
    /// The message has an HTML body (shown from `.../html`, sandboxed).
    pub html: bool,
    pub attachments: Vec<Attachment>,
    /// Why the body is not shown (too large, no copy kept), when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_omitted: Option<String>,
    /// The delivered copies on disk, one per recipient.
    pub files: Vec<PathBuf>,
    /// The raw DATA phase (before dot-unstuffing), when kept.
    pub raw_file: Option<PathBuf>,
}

/// The message's bytes as the mailbox holds them: the delivered copy (the persona's headers
/// added), or the content as received when no copy was written; `None` when neither is kept.
pub async fn source(entry: &Entry) -> Option<Vec<u8>> {
    if let Some(path) = entry.received.files.first()
        && let Ok(bytes) = tokio::fs::read(path).await
    {
        return Some(bytes);
    }
    (!entry.received.content.is_empty()).then(|| entry.received.content.to_vec())
}

/// How large the message's source is (its delivered copy, else its size as received).
pub async fn source_len(entry: &Entry) -> u64 {
    match entry.received.files.first() {
        Some(p) => tokio::fs::metadata(p)
            .await
            .map(|m| m.len())
            .unwrap_or(entry.size),
        None => entry.received.content.len() as u64,
    }
}

/// The view of a message; reads its file, or only its head when it is over `view_max` octets.
pub async fn view(entry: &Entry, view_max: u64) -> View {
    let len = source_len(entry).await;
    let (bytes, omitted) = if len > view_max {
        let head = match entry.received.files.first() {
            Some(p) => read_head(p).await,
            None => super::index::head_of(&entry.received.content).to_vec(),
        };
        (
            Some(head),
            Some(format!(
                "the message is {len} octets, more than this page decodes ({view_max}): its headers are shown; download the raw source for the rest"
            )),
        )
    } else {
        match source(entry).await {
            Some(b) => (Some(b), None),
            None => (
                None,
                Some("the server kept no copy of this message (its persona keeps none)".into()),
            ),
        }
    };
    let r = &entry.received;
    let mut v = View {
        entry: entry.clone(),
        session: r.session,
        client: r.client.to_string(),
        helo: r.helo.clone(),
        date: None,
        cc: String::new(),
        message_id: None,
        headers: Vec::new(),
        text: None,
        html: false,
        attachments: Vec::new(),
        body_omitted: omitted.clone(),
        files: r.files.clone(),
        raw_file: r.raw_file.clone(),
    };
    let Some(bytes) = bytes else {
        return v;
    };
    let parser = mail_parser::MessageParser::default();
    let parsed = if omitted.is_some() {
        parser.parse_headers(&bytes[..])
    } else {
        parser.parse(&bytes[..])
    };
    let Some(m) = parsed else {
        return v;
    };
    v.date = m.date().map(|d| d.to_rfc3339());
    v.message_id = m.message_id().map(str::to_string);
    v.cc = m
        .cc()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.address())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    for (name, raw) in m.headers_raw() {
        let raw = unfold(raw);
        let decoded = decode_words(&raw).filter(|d| *d != raw);
        v.headers.push(Header {
            name: name.to_string(),
            raw,
            decoded,
        });
    }
    if omitted.is_some() {
        return v;
    }
    v.text = m.body_text(0).map(|t| t.into_owned());
    v.html = m.html_bodies().any(is_html);
    v.attachments = m
        .attachments()
        .enumerate()
        .map(|(i, p)| Attachment {
            index: i as u32,
            name: mail_parser::MimeHeaders::attachment_name(p).map(str::to_string),
            content_type: content_type(p),
            size: p.contents().len(),
        })
        .collect();
    v
}

fn is_html(p: &mail_parser::MessagePart<'_>) -> bool {
    matches!(p.body, mail_parser::PartType::Html(_))
}

fn content_type(p: &mail_parser::MessagePart<'_>) -> String {
    mail_parser::MimeHeaders::content_type(p)
        .map(|c| match c.subtype() {
            Some(s) => format!("{}/{}", c.ctype(), s),
            None => c.ctype().to_string(),
        })
        .unwrap_or_else(|| "application/octet-stream".into())
}

/// The HTML body of a message, when it has one.
pub fn html(bytes: &[u8]) -> Option<String> {
    let m = mail_parser::MessageParser::default().parse(bytes)?;
    let part = m.html_bodies().find(|p| is_html(p))?;
    match &part.body {
        mail_parser::PartType::Html(h) => Some(h.to_string()),
        _ => None,
    }
}

/// Attachment `index` of a message: its name, type and bytes.
pub fn attachment(bytes: &[u8], index: u32) -> Option<(Option<String>, String, Vec<u8>)> {
    let m = mail_parser::MessageParser::default().parse(bytes)?;
    let p = m.attachments().nth(index as usize)?;
    Some((
        mail_parser::MimeHeaders::attachment_name(p).map(str::to_string),
        content_type(p),
        p.contents().to_vec(),
    ))
}

/// A header value on one line (folding removed).
fn unfold(raw: &str) -> String {
    raw.replace("\r\n", "").replace('\n', "").trim().to_string()
}

/// RFC 2047 encoded words decoded (any charset mail-parser knows), by parsing the value as
/// an unstructured header.
fn decode_words(value: &str) -> Option<String> {
    if !value.contains("=?") {
        return None;
    }
    let fake = format!("Subject: {value}\r\n\r\n");
    mail_parser::MessageParser::default()
        .parse_headers(fake.as_bytes())
        .and_then(|m| m.subject().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_words_in_any_header_are_decoded() {
        // 测试 in GB2312, base64, as Foxmail writes it.
        assert_eq!(
            decode_words("=?GB2312?B?suLK1A==?=").as_deref(),
            Some("测试")
        );
        assert_eq!(decode_words("plain").as_deref(), None);
        assert_eq!(unfold("a\r\n b"), "a b");
    }
}
