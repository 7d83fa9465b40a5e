//! The reply catalogue and persona knobs of the server session, and the connection's content
//! events: what the fake upstream relies on to speak a persona's exact bytes.

mod common;

use common::{Harness, accept_all, open_config};
use smtp_wire::{
    BareLineEnding, LineEndings, Reply, ReplyBook, ReplyKind, ServerConfig, Transport,
};

fn r(s: &str) -> Reply {
    Reply::parse(format!("{s}\r\n").as_bytes()).unwrap()
}

fn coremail_like() -> ServerConfig {
    let mut replies = ReplyBook::new();
    for (kind, text) in [
        (
            ReplyKind::Greeting,
            "220 163.com Anti-spam GT for Coremail System (163com[20141201])",
        ),
        (ReplyKind::MailOk, "250 Mail OK"),
        (ReplyKind::RcptOk, "250 Mail OK"),
        (
            ReplyKind::UnknownCommand,
            "502 Error: command not implemented",
        ),
        (ReplyKind::Help, "502 Error: command not implemented"),
        (ReplyKind::SyntaxError, "500 Error: bad syntax"),
        (ReplyKind::AuthUsernamePrompt, "334 dXNlcm5hbWU6"),
        (ReplyKind::Bye, "221 Bye"),
    ] {
        replies.set(kind, r(text));
    }
    ServerConfig {
        hostname: "163.com".into(),
        enhanced_status_codes: false,
        auth_after_helo: true,
        auth_requires_tls: false,
        auth_required: false,
        starttls: true,
        starttls_after_tls: true,
        ehlo_first_line: Some("mail".into()),
        ehlo_lines: Some(
            [
                "AUTH LOGIN PLAIN",
                "AUTH=LOGIN PLAIN",
                "STARTTLS",
                "8BITMIME",
            ]
            .map(String::from)
            .to_vec(),
        ),
        replies,
        ..ServerConfig::default()
    }
}

fn wire(replies: &[Reply]) -> String {
    replies
        .iter()
        .map(|r| String::from_utf8(r.to_bytes()).unwrap())
        .collect()
}

#[test]
fn overrides_give_the_personas_exact_bytes() {
    let mut h = Harness::new(coremail_like());
    h.feed(b"EHLO x\r\nHELP\r\nFOO\r\nDATA \r\nMAIL FROM:<a@163.com>\r\nRCPT TO:<b@qq.com>\r\nQUIT\r\n");
    assert_eq!(
        wire(&h.take()),
        "220 163.com Anti-spam GT for Coremail System (163com[20141201])\r\n\
         250-mail\r\n250-AUTH LOGIN PLAIN\r\n250-AUTH=LOGIN PLAIN\r\n250-STARTTLS\r\n250 8BITMIME\r\n\
         502 Error: command not implemented\r\n\
         502 Error: command not implemented\r\n\
         500 Error: bad syntax\r\n\
         250 Mail OK\r\n250 Mail OK\r\n221 Bye\r\n"
    );
}

#[test]
fn without_enhancedstatuscodes_generated_replies_carry_none() {
    let mut h = Harness::new(ServerConfig {
        enhanced_status_codes: false,
        ..open_config()
    });
    let ehlo = h.cmd("EHLO x");
    assert!(!smtp_wire::Capabilities::from_ehlo(&ehlo[1]).enhanced_status_codes());
    let reply = h.reply("RCPT TO:<b@y.example>");
    assert_eq!(reply.to_bytes(), b"503 Error: need MAIL before RCPT\r\n");
    assert_eq!(h.reply("MAIL FROM:<chengli>").enhanced, None);
}

#[test]
fn starttls_line_is_kept_inside_tls_only_as_a_quirk() {
    let ehlo_inside_tls = |quirk: bool| {
        let mut h = Harness::with(
            ServerConfig {
                starttls_after_tls: quirk,
                ..coremail_like()
            },
            Transport::Tls,
            LineEndings::CrlfOnly,
            accept_all(),
        );
        h.take();
        smtp_wire::Capabilities::from_ehlo(&h.reply("EHLO x")).starttls()
    };
    assert!(ehlo_inside_tls(true));
    assert!(!ehlo_inside_tls(false));
}

#[test]
fn auth_after_helo_when_configured() {
    let mut h = Harness::new(ServerConfig {
        auth_required: true,
        ..coremail_like()
    });
    h.take();
    assert_eq!(h.code("HELO x"), 250);
    assert_eq!(h.reply("AUTH LOGIN"), r("334 dXNlcm5hbWU6"));
    let mut h = Harness::new(smtp_wire::ServerConfig {
        auth_requires_tls: false,
        ..ServerConfig::default()
    });
    h.take();
    assert_eq!(h.code("HELO x"), 250);
    assert_eq!(h.code("AUTH LOGIN"), 503);
}

#[test]
fn too_large_message_is_discarded_before_the_552() {
    let mut h = Harness::new(ServerConfig {
        max_message_size: 10,
        ..open_config()
    })
    .ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    assert_eq!(h.code("DATA"), 354);
    h.feed(b"0123456789abcdef\r\n.\r\n");
    assert_eq!(h.codes(), [552]);
    assert_eq!(h.discards, 1);
    assert!(h.delivered.is_empty());
}

#[test]
fn rset_between_bdat_chunks_discards_them() {
    let mut h = Harness::new(ServerConfig {
        chunking: true,
        ..open_config()
    })
    .ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    h.feed(b"BDAT 3\r\nabcNOOP\r\n");
    assert_eq!(h.codes(), [250, 250]);
    assert_eq!(h.discards, 0, "NOOP keeps the transaction");
    h.feed(b"RSET\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<c@y.example>\r\nBDAT 2 LAST\r\nxy");
    assert_eq!(h.codes(), [250, 250, 250, 250]);
    assert_eq!(h.discards, 1);
    assert_eq!(h.delivered[0].1, b"xy");
}

#[test]
fn raw_content_is_the_wire_bytes_up_to_the_terminator() {
    let mut h = Harness::open_with_bare(BareLineEnding::Normalize).ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    h.cmd("DATA");
    h.feed(b"..a\nb\r\n.\r\nNOOP\r\n");
    assert_eq!(h.codes(), [250, 250]);
    assert_eq!(h.raw, b"..a\nb\r\n.\r\n");
    assert_eq!(h.delivered[0].1, b".a\r\nb\r\n");
}
