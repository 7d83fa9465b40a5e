//! Delivery status notifications (RFC 3464): the bounce the relay sends to a message's sender
//! when some of its recipients were accepted at RCPT but failed later (a mixed outcome of a
//! fan-out: the client got 250, so it must be told another way).
//!
//! The report is a `multipart/report; report-type=delivery-status` (RFC 6522) with a
//! human-readable part, a `message/delivery-status` part with one block per failed recipient
//! (the upstream's reply as `Diagnostic-Code`), and the original message's headers as
//! `text/rfc822-headers`. All of it is 7-bit ASCII with CRLF line ends and lines under 998
//! octets, so any upstream can carry it.

use smtp_wire::Reply;

/// One recipient that was not delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The recipient, as the client gave it (`RCPT TO`).
    pub recipient: String,
    /// The upstream that answered (its certificate name or host), for `Remote-MTA`.
    pub remote: String,
    /// What was said: the upstream's own reply, or the relay's 4xx for a lost connection.
    pub reply: Reply,
}

/// What a report says and about which message.
#[derive(Clone, Debug)]
pub struct Report<'a> {
    /// Our host name (`Reporting-MTA`).
    pub reporting_mta: &'a str,
    /// The original message's envelope sender: the report goes there.
    pub to: &'a str,
    /// The spool id of the original message.
    pub original_id: &'a str,
    /// `ENVID` of the original MAIL FROM, when the client gave one.
    pub envelope_id: Option<&'a str>,
    pub arrival: chrono::DateTime<chrono::Utc>,
    pub failures: &'a [Failure],
    /// The original message's header section (up to its blank line), as received.
    pub original_headers: &'a [u8],
}

/// At most this much of the original header section is returned.
pub const MAX_RETURNED_HEADERS: usize = 64 * 1024;

/// The header section of a message: its header lines up to the first blank line (which is
/// left out), at most [`MAX_RETURNED_HEADERS`] octets (cut at a line end).
pub fn header_section(message: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let end = end.min(MAX_RETURNED_HEADERS);
    match message[..end].iter().rposition(|&b| b == b'\n') {
        Some(i) => &message[..=i],
        None => &message[..0],
    }
}

/// `Status:` for a reply: its enhanced code, else the class of its code (`5.0.0`, `4.0.0`).
pub fn status(reply: &Reply) -> String {
    match reply.enhanced {
        Some((a, b, c)) => format!("{a}.{b}.{c}"),
        None => format!(
            "{}.0.0",
            if reply.severity() == smtp_wire::Severity::Transient {
                4
            } else {
                5
            }
        ),
    }
}

/// Anything outside printable ASCII becomes `?`, so a header line can carry it.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The report, ready to send (CRLF line ends, no terminator).
///
/// `from` is the address in the report's `From:` header: `MAILER-DAEMON@<host>` normally, the
/// sender itself when the upstream only accepts mail from the authenticated user, as 163 does.
pub fn build(r: &Report, from: &str) -> Vec<u8> {
    let boundary = format!("=_smtp-relay-dsn-{}", ascii(r.original_id));
    let date = r.arrival.to_rfc2822();
    let mut m = String::new();
    let mut line = |s: &str| {
        m.push_str(s);
        m.push_str("\r\n");
    };
    line(&format!("From: Mail Delivery System <{}>", ascii(from)));
    line(&format!("To: <{}>", ascii(r.to)));
    line("Subject: Undelivered Mail Returned to Sender");
    line(&format!("Date: {}", chrono::Utc::now().to_rfc2822()));
    line(&format!(
        "Message-ID: <dsn-{}@{}>",
        ascii(r.original_id),
        ascii(r.reporting_mta)
    ));
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
    ));
    line("");
    line("This is a MIME-encapsulated message (RFC 3464 delivery status notification).");
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=us-ascii");
    line("Content-Description: Notification");
    line("");
    line(&format!(
        "This is the mail system at host {}.",
        ascii(r.reporting_mta)
    ));
    line("");
    line(&format!(
        "Your message {} of {date} could not be delivered to {} of its recipients.",
        ascii(r.original_id),
        r.failures.len()
    ));
    line("The other recipients were delivered; this report is only about these:");
    line("");
    for f in r.failures {
        line(&format!(
            "<{}>: {} said: {}",
            ascii(&f.recipient),
            ascii(&f.remote),
            ascii(&crate::upstream::said(&f.reply))
        ));
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("Content-Description: Delivery report");
    line("");
    line(&format!("Reporting-MTA: dns; {}", ascii(r.reporting_mta)));
    if let Some(envid) = r.envelope_id {
        line(&format!("Original-Envelope-Id: {}", ascii(envid)));
    }
    line(&format!("X-Smtp-Relay-Queue-ID: {}", ascii(r.original_id)));
    line(&format!("Arrival-Date: {date}"));
    for f in r.failures {
        line("");
        line(&format!("Final-Recipient: rfc822; {}", ascii(&f.recipient)));
        line("Action: failed");
        line(&format!("Status: {}", status(&f.reply)));
        line(&format!("Remote-MTA: dns; {}", ascii(&f.remote)));
        line(&format!(
            "Diagnostic-Code: smtp; {}",
            ascii(&crate::upstream::said(&f.reply))
        ));
    }
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/rfc822-headers");
    line("Content-Description: Undelivered message headers");
    line("");
    let mut out = m.into_bytes();
    for raw in header_section(r.original_headers).split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            continue;
        }
        // Original header lines are kept; 8-bit octets (raw UTF-8 headers) become `?`.
        out.extend(raw.iter().map(|&b| if b < 0x80 { b } else { b'?' }));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// One bounce, in the two forms [`send`] may need: from `MAILER-DAEMON@<reporting MTA>`, and
/// from the original sender itself (for an upstream that refuses the null sender). The one
/// bounce builder of live mode and of the queue.
pub struct Bounce {
    pub as_daemon: Vec<u8>,
    pub as_sender: Vec<u8>,
}

impl Bounce {
    pub fn new(report: &Report) -> Bounce {
        Bounce {
            as_daemon: build(report, &format!("MAILER-DAEMON@{}", report.reporting_mta)),
            as_sender: build(report, report.to),
        }
    }
}

/// Sends a bounce through `config`: with the null sender (RFC 5321 4.5.5), or, when the
/// upstream refuses the null sender permanently (163: `553 ... NULL sender is not allowed`),
/// as the original sender to itself (`as_sender` carries that address in `From:`, since 163
/// also wants the header From to match).
pub async fn send(
    config: &crate::upstream::UpstreamConfig,
    sender: &smtp_wire::Mailbox,
    bounce: &Bounce,
) -> Result<Reply, crate::upstream::UpstreamError> {
    use crate::upstream::{Content, Outbound};
    let mut up = crate::upstream::Upstream::connect(config).await?;
    let to = [(
        smtp_wire::ForwardPath::Mailbox(sender.clone()),
        smtp_wire::RcptParams::default(),
    )];
    let params = smtp_wire::MailParams::default();
    let (daemon, from_sender) = (
        smtp_wire::ReversePath::Null,
        smtp_wire::ReversePath::Mailbox(sender.clone()),
    );
    let pieces = [&bounce.as_daemon[..], &bounce.as_sender[..]];
    let msg = |from, n: usize| Outbound {
        from,
        params: &params,
        rcpts: &to,
        content: Content::Pieces(&pieces[n..=n]),
        pipelining: true,
    };
    let mut sent = up.send_message(&msg(&daemon, 0), &mut |_, _| {}).await?;
    // An upstream that refuses the null sender for good gets the bounce from the sender.
    if sent.mail.severity() == smtp_wire::Severity::Permanent {
        up.rset().await?;
        sent = up
            .send_message(&msg(&from_sender, 1), &mut |_, _| {})
            .await?;
    }
    up.quit().await;
    Ok(sent.verdict().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    fn report(failures: &[Failure]) -> Vec<u8> {
        Bounce::new(&Report {
            reporting_mta: "relay.test",
            to: "alice@163.com",
            original_id: "20261126T060000.000000-7",
            envelope_id: Some("ENV42"),
            arrival: chrono::Utc::now(),
            failures,
            original_headers: "From: alice@163.com\r\nSubject: =?GB2312?B?xOO6ww==?=\r\nX-Raw: caf\u{e9}\r\n\r\nbody must not appear\r\n".as_bytes(),
        })
        .as_daemon
    }

    #[test]
    fn a_parser_reads_the_report_back() {
        let failures = [
            Failure {
                recipient: "nobody@qq.com".into(),
                remote: "smtp.qq.com".into(),
                reply: Reply::plain(550, "Mailbox not found"),
            },
            Failure {
                recipient: "x@bupt.edu.cn".into(),
                remote: "mx.bupt.edu.cn".into(),
                reply: Reply::new(451, (4, 4, 2), "upstream mx: connection closed"),
            },
        ];
        let bytes = report(&failures);
        assert!(bytes.is_ascii());
        assert!(!bytes.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        assert!(bytes.split(|&b| b == b'\n').all(|l| l.len() < 998));
        let m = mail_parser::MessageParser::default().parse(&bytes).unwrap();
        assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
        let ct = m.content_type().unwrap();
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        let parts: Vec<_> = m.parts.iter().filter_map(|p| p.content_type()).collect();
        let kinds: Vec<String> = parts
            .iter()
            .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
            .collect();
        assert!(
            kinds.contains(&"message/delivery-status".to_string()),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&"text/rfc822-headers".to_string()),
            "{kinds:?}"
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Final-Recipient: rfc822; nobody@qq.com\r\nAction: failed\r\nStatus: 5.0.0\r\nRemote-MTA: dns; smtp.qq.com\r\nDiagnostic-Code: smtp; 550 Mailbox not found\r\n"));
        assert!(text.contains("Status: 4.4.2\r\n"));
        assert!(text.contains("Original-Envelope-Id: ENV42\r\n"));
        assert!(text.contains("Subject: =?GB2312?B?xOO6ww==?=\r\nX-Raw: caf??\r\n"));
        assert!(!text.contains("body must not appear"));
    }

    #[test]
    fn header_section_is_bounded_and_cut_at_a_line() {
        assert_eq!(header_section(b"A: b\r\n\r\nbody"), b"A: b\r\n");
        assert_eq!(header_section(b"A: b\r\nC: d"), b"A: b\r\n");
        assert_eq!(header_section(b"no line end"), b"");
        let big = "X: y\r\n".repeat(MAX_RETURNED_HEADERS);
        let cut = header_section(big.as_bytes());
        assert!(cut.len() <= MAX_RETURNED_HEADERS && cut.ends_with(b"\r\n"));
    }

    #[test]
    fn status_from_the_reply() {
        assert_eq!(status(&Reply::new(550, (5, 1, 1), "x")), "5.1.1");
        assert_eq!(status(&Reply::plain(554, "DT:SPM")), "5.0.0");
        assert_eq!(status(&Reply::plain(451, "later")), "4.0.0");
    }
}
