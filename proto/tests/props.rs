//! Property tests: round trips (`parse(encode(x)) == x`) for commands, replies and addresses,
//! chunking invariance of the line and DATA decoders and of a whole server session, DATA
//! encode/decode, and no panic on arbitrary bytes anywhere.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use smtp_wire::{
    AuthResponse, BareLineEnding, Body, ClientConfig, ClientSession, ClientTls, Command,
    Credentials, DataDecoder, DataEncoder, DataProgress, Decoded, Domain, ForwardPath, LineDecoder,
    LineEndings, LineError, MailParams, Mailbox, Mechanism, Notify, Param, RcptParams, Reply,
    ReplyParser, ReversePath, SaslData, ServerConfig,
    params::{Orcpt, Ret},
};

// ------------------------------------------------------------------------ generators

const ATEXT: &str = "abcXYZ019!#$%&'*+-/=?^_`{|}~";

fn atom() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(ATEXT.chars().collect::<Vec<_>>()),
        1..6,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn local_part() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(atom(), 1..4).prop_map(|a| a.join(".")),
        // Anything printable, quoted on the wire.
        "[ -~]{1,20}",
    ]
}

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?"
}

fn domain_name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
}

fn domain() -> impl Strategy<Value = Domain> {
    prop_oneof![
        4 => domain_name().prop_map(Domain::Name),
        1 => any::<u32>().prop_map(|a| Domain::Ipv4(Ipv4Addr::from(a))),
        1 => any::<u128>().prop_map(|a| Domain::Ipv6(Ipv6Addr::from(a))),
    ]
}

fn mailbox() -> impl Strategy<Value = Mailbox> {
    (local_part(), domain()).prop_filter_map("too long", |(l, d)| Mailbox::new(l, d).ok())
}

fn reverse_path() -> impl Strategy<Value = ReversePath> {
    prop_oneof![
        1 => Just(ReversePath::Null),
        5 => mailbox().prop_map(ReversePath::Mailbox),
    ]
}

fn forward_path() -> impl Strategy<Value = ForwardPath> {
    prop_oneof![
        1 => prop::sample::select(vec!["Postmaster", "POSTMASTER", "postmaster"])
            .prop_map(|p| ForwardPath::Postmaster(p.to_string())),
        5 => mailbox().prop_map(ForwardPath::Mailbox),
    ]
}

fn xtext() -> impl Strategy<Value = String> {
    "([!-*,-<>-~]|\\+[0-9A-F]{2}){1,20}"
}

fn unknown_params() -> impl Strategy<Value = Vec<Param>> {
    prop::collection::btree_map("X-[A-Z0-9]{1,6}", prop::option::of("[!-<>-~]{1,10}"), 0..3)
        .prop_map(|m| {
            m.into_iter()
                .map(|(keyword, value)| Param { keyword, value })
                .collect()
        })
}

fn mail_params() -> impl Strategy<Value = MailParams> {
    (
        prop::option::of(any::<u64>()),
        prop::option::of(prop::sample::select(vec![
            Body::SevenBit,
            Body::EightBitMime,
            Body::BinaryMime,
        ])),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![Ret::Full, Ret::Hdrs])),
        prop::option::of(xtext()),
        prop::option::of(prop_oneof![Just("<>".to_string()), xtext()]),
        unknown_params(),
    )
        .prop_map(
            |(size, body, smtputf8, ret, envid, auth, unknown)| MailParams {
                size,
                body,
                smtputf8,
                ret,
                envid,
                auth,
                unknown,
            },
        )
}

fn notify() -> impl Strategy<Value = Notify> {
    prop_oneof![
        Just(Notify::Never),
        (any::<bool>(), any::<bool>(), any::<bool>())
            .prop_filter("one event at least", |(s, f, d)| *s || *f || *d)
            .prop_map(|(success, failure, delay)| Notify::On {
                success,
                failure,
                delay
            }),
    ]
}

fn rcpt_params() -> impl Strategy<Value = RcptParams> {
    (
        prop::option::of(notify()),
        prop::option::of(("rfc822|utf-8", xtext()).prop_map(|(t, a)| Orcpt {
            addr_type: t,
            addr: a,
        })),
        unknown_params(),
    )
        .prop_map(|(notify, orcpt, unknown)| RcptParams {
            notify,
            orcpt,
            unknown,
        })
}

fn mechanism() -> impl Strategy<Value = Mechanism> {
    prop_oneof![
        Just(Mechanism::Plain),
        Just(Mechanism::Login),
        Just(Mechanism::XOAuth2),
        Just(Mechanism::CramMd5),
        "X-[A-Z0-9]{1,8}".prop_map(Mechanism::Other),
    ]
}

/// Free text as it may follow NOOP/VRFY/HELP: printable, no surrounding white space.
fn word_text() -> impl Strategy<Value = String> {
    "[!-~]([ -~]{0,20}[!-~])?"
}

fn helo_domain() -> impl Strategy<Value = String> {
    prop_oneof![
        domain_name(),
        any::<u32>().prop_map(|a| format!("[{}]", Ipv4Addr::from(a))),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        helo_domain().prop_map(|domain| Command::Helo { domain }),
        helo_domain().prop_map(|domain| Command::Ehlo { domain }),
        (reverse_path(), mail_params()).prop_map(|(from, params)| Command::Mail { from, params }),
        (forward_path(), rcpt_params()).prop_map(|(to, params)| Command::Rcpt { to, params }),
        Just(Command::Data),
        (any::<u64>(), any::<bool>()).prop_map(|(size, last)| Command::Bdat { size, last }),
        Just(Command::Rset),
        prop::option::of(word_text()).prop_map(|text| Command::Noop { text }),
        Just(Command::Quit),
        word_text().prop_map(|arg| Command::Vrfy { arg }),
        word_text().prop_map(|arg| Command::Expn { arg }),
        prop::option::of(word_text()).prop_map(|topic| Command::Help { topic }),
        Just(Command::StartTls),
        (
            mechanism(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..40))
        )
            .prop_map(|(mechanism, ir)| Command::Auth {
                mechanism,
                initial: ir.map(SaslData)
            }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        200u16..600,
        prop::collection::vec("([a-zA-Z][ -~]{0,30})?", 1..5),
        any::<bool>(),
        0u16..999,
        0u16..999,
    )
        .prop_map(|(code, lines, with_enhanced, s, d)| {
            let class = (code / 100) as u8;
            let enhanced = (with_enhanced && class != 3).then_some((class, s, d));
            Reply {
                code,
                enhanced,
                lines,
            }
        })
}

/// Splits `bytes` at the given cut points (taken modulo the length, sorted).
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    if bytes.is_empty() {
        return vec![bytes];
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fn smtp_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => Just(b'a'),
            2 => Just(b'.'),
            2 => Just(b'\r'),
            2 => Just(b'\n'),
            1 => Just(b' '),
            1 => Just(0u8),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

// ------------------------------------------------------------------------ drivers

fn line_events(
    chunks: &[&[u8]],
    max: usize,
    endings: LineEndings,
) -> Vec<Result<Vec<u8>, LineError>> {
    let mut d = LineDecoder::new(max, endings);
    let mut buf = Vec::new();
    let mut events = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&buf) {
                Decoded::Line { line, consumed } => {
                    events.push(Ok(line.to_vec()));
                    buf.drain(..consumed);
                }
                Decoded::NeedMore { consumed } => {
                    buf.drain(..consumed);
                    // Never holds more than one line's worth of bytes.
                    assert!(buf.len() <= max);
                    break;
                }
                Decoded::Error { error, consumed } => {
                    events.push(Err(error));
                    buf.drain(..consumed);
                }
            }
        }
    }
    events
}

/// Decodes chunks; returns (output, position of the end in the stream, outcome).
fn data_decode(
    chunks: &[&[u8]],
    limit: u64,
    policy: BareLineEnding,
) -> (Vec<u8>, Option<usize>, smtp_wire::DataOutcome) {
    let mut d = DataDecoder::new(limit, policy);
    let mut out = Vec::new();
    let mut offset = 0;
    for chunk in chunks {
        if let DataProgress::Done { consumed } = d.decode(chunk, &mut out) {
            return (out, Some(offset + consumed), d.outcome());
        }
        offset += chunk.len();
    }
    (out, None, d.outcome())
}

/// What a correct relay makes of arbitrary content: bare CR and LF become CRLF, and a last
/// line without an end gets one.
fn normalize(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

// ------------------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn command_round_trip(cmd in command()) {
        let wire = cmd.to_bytes();
        prop_assert!(wire.ends_with(b"\r\n"));
        prop_assert_eq!(Command::parse(&wire[..wire.len() - 2]), Ok(cmd));
    }

    #[test]
    fn reply_round_trip(r in reply()) {
        prop_assert_eq!(Reply::parse(&r.to_bytes()), Ok(r));
    }

    #[test]
    fn mailbox_round_trip(m in mailbox()) {
        prop_assert_eq!(Mailbox::parse(&m.to_string()), Ok(m));
    }

    #[test]
    fn paths_round_trip(from in reverse_path(), to in forward_path()) {
        let (from_text, to_text) = (from.to_string(), to.to_string());
        let (f, rest) = smtp_wire::address::parse_reverse_path(&from_text).unwrap();
        prop_assert_eq!((f, rest), (from, ""));
        let (t, rest) = smtp_wire::address::parse_forward_path(&to_text).unwrap();
        prop_assert_eq!((t, rest), (to, ""));
    }

    #[test]
    fn line_decoder_ignores_chunking(
        bytes in smtp_bytes(600),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max in 4usize..80,
        lenient in any::<bool>(),
    ) {
        let endings = if lenient { LineEndings::AcceptBareLf } else { LineEndings::CrlfOnly };
        let whole = line_events(&[&bytes], max, endings);
        let chunked = line_events(&split(&bytes, &cuts), max, endings);
        prop_assert_eq!(&whole, &chunked);
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&whole, &line_events(&one_by_one, max, endings));
        for event in whole.iter().flatten() {
            prop_assert!(event.len() + 2 <= max);
        }
    }

    #[test]
    fn data_decoder_ignores_chunking(
        bytes in smtp_bytes(800),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        limit in prop_oneof![Just(u64::MAX), 0u64..200],
        normalize_bare in any::<bool>(),
    ) {
        let policy = if normalize_bare { BareLineEnding::Normalize } else { BareLineEnding::Reject };
        let whole = data_decode(&[&bytes], limit, policy);
        prop_assert_eq!(&whole, &data_decode(&split(&bytes, &cuts), limit, policy));
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&whole, &data_decode(&one_by_one, limit, policy));
        // The end is only ever a real CRLF.CRLF (the DATA line's CRLF counts).
        if let Some(end) = whole.1 {
            let mut stream = b"\r\n".to_vec();
            stream.extend_from_slice(&bytes[..end]);
            prop_assert!(stream.ends_with(b"\r\n.\r\n"));
        }
        // Normalised output never holds a bare CR or LF.
        if policy == BareLineEnding::Normalize && whole.1.is_some() && !whole.2.too_large {
            prop_assert_eq!(normalize(&whole.0), whole.0.clone());
            prop_assert!(!whole.0.contains(&0));
        }
    }

    #[test]
    fn data_round_trip_for_crlf_bodies(
        lines in prop::collection::vec("[a. \\x00é\\t]{0,30}", 0..20),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let body: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
        let wire = DataEncoder::encode_all(&body);
        // Encoding in pieces gives the same bytes.
        let mut enc = DataEncoder::new();
        let mut pieces = Vec::new();
        for c in split(&body, &cuts) {
            enc.encode(c, &mut pieces);
        }
        enc.finish(&mut pieces);
        prop_assert_eq!(&pieces, &wire);
        let (out, end, outcome) = data_decode(&split(&wire, &cuts), u64::MAX, BareLineEnding::Reject);
        prop_assert_eq!(end, Some(wire.len()));
        prop_assert_eq!(outcome.bare_cr + outcome.bare_lf + outcome.nul, 0);
        // NUL octets are left out on the way (a next hop could strip them into an end).
        prop_assert_eq!(out, without_nul(&body));
    }

    #[test]
    fn data_round_trip_normalizes_arbitrary_bytes(body in smtp_bytes(500)) {
        let wire = DataEncoder::encode_all(&body);
        let (out, end, outcome) = data_decode(&[&wire], u64::MAX, BareLineEnding::Reject);
        prop_assert_eq!(end, Some(wire.len()));
        prop_assert_eq!(outcome.bare_cr + outcome.bare_lf + outcome.nul, 0);
        prop_assert_eq!(out, normalize(&without_nul(&body)));
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Command::parse(&bytes);
        let _ = Reply::parse(&bytes);
        let _ = AuthResponse::parse(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = Mailbox::parse(&text);
        let _ = smtp_wire::address::parse_reverse_path(&text);
        let _ = smtp_wire::address::parse_forward_path(&text);
        let _ = MailParams::parse(&text);
        let _ = RcptParams::parse(&text);
        let _ = Credentials::from_plain(&bytes);
        let mut p = ReplyParser::default();
        for line in bytes.split(|&b| b == b'\n') {
            let _ = p.push_line(line);
        }
    }

    #[test]
    fn smtp_shaped_lines_never_panic_the_parser(
        verb in prop::sample::select(vec!["MAIL FROM:", "RCPT TO:", "EHLO ", "AUTH ", "BDAT ", "mail from :", "RCPT TO: "]),
        tail in "[<>@\"\\\\.:,\\[\\] a-zA-Z0-9=+-]{0,60}",
    ) {
        let line = format!("{verb}{tail}");
        if let Ok(cmd) = Command::parse(line.as_bytes()) {
            // Whatever was accepted encodes to something that parses to the same command.
            let wire = cmd.to_bytes();
            prop_assert_eq!(Command::parse(&wire[..wire.len() - 2]), Ok(cmd));
        }
    }

    #[test]
    fn server_session_never_panics_and_ignores_chunking(
        bytes in prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(vec![
                    &b"EHLO x\r\n"[..], b"HELO x\r\n", b"MAIL FROM:<a@x.example>\r\n",
                    b"RCPT TO:<b@y.example>\r\n", b"RCPT TO:<bad>\r\n", b"DATA\r\n",
                    b"BDAT 3\r\n", b"BDAT 2 LAST\r\n", b"RSET\r\n", b"NOOP\r\n",
                    b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n", b"AG1lQDE2My5jb20AcmlnaHQ=\r\n",
                    b"*\r\n", b".\r\n", b"..x\r\n", b"\r\n", b"\n.\n",
                ]).prop_map(|s| s.to_vec()),
                1 => smtp_bytes(20),
            ],
            0..40,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let stream: Vec<u8> = bytes.concat();
        let config = || ServerConfig {
            chunking: true,
            starttls: true,
            ..common::open_config()
        };
        let mut whole = common::Harness::new(config());
        whole.feed(&stream);
        let mut chunked = common::Harness::new(config());
        for c in split(&stream, &cuts) {
            chunked.feed(c);
        }
        prop_assert_eq!(whole.take(), chunked.take());
        prop_assert_eq!(&whole.delivered, &chunked.delivered);
    }

    #[test]
    fn one_reply_per_command_line(
        lines in prop::collection::vec(prop::sample::select(vec![
            "EHLO x", "HELO x", "MAIL FROM:<a@x.example>", "MAIL FROM:<chengli>",
            "RCPT TO:<b@y.example>", "RCPT TO:<chengli@>", "RSET", "NOOP", "VRFY x",
            "EXPN x", "HELP", "FOO", "", "DATA now", "MAIL FROM:<a@x> SIZE=abc",
        ]), 0..60),
    ) {
        let mut h = common::Harness::new(common::open_config());
        h.take();
        for line in &lines {
            let replies = h.cmd(line);
            if h.closed {
                prop_assert_eq!(replies.last().map(|r| r.code), Some(421));
                break;
            }
            prop_assert_eq!(replies.len(), 1, "{:?}", line);
        }
    }

    #[test]
    fn client_session_never_panics(
        replies in prop::collection::vec(reply(), 0..12),
        implicit in any::<bool>(),
    ) {
        let mut c = ClientSession::new(ClientConfig {
            helo_name: "relay.test".into(),
            tls: if implicit { ClientTls::Implicit } else { ClientTls::StartTls },
            credentials: Some(Credentials::new("me@163.com", "code")),
        });
        for r in replies {
            if c.handle_reply(r).is_err() {
                break;
            }
            let _ = c.tls_established();
        }
    }
}

/// One rich session stream split at every single point gives the same replies and the same
/// delivered messages as the unsplit stream (smtp-proto's habit, exhaustively).
#[test]
fn a_whole_session_split_at_every_point() {
    let stream: &[u8] = b"EHLO client.example\r\nMAIL FROM: <a@x.example> SIZE=100\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<bad>\r\nDATA\r\nSubject: hi\r\n\r\n..stuffed\r\nbody\n.\nnot the end\r\n.\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n.\r\nNOOP\r\nQUIT\r\n";
    let mut whole = common::Harness::open_with_bare(BareLineEnding::Normalize);
    whole.feed(stream);
    let expected = whole.take();
    assert_eq!(
        expected.iter().map(|r| r.code).collect::<Vec<_>>(),
        [
            220, 250, 250, 250, 501, 354, 250, 250, 250, 354, 250, 250, 221
        ]
    );
    for cut in 1..stream.len() {
        let mut h = common::Harness::open_with_bare(BareLineEnding::Normalize);
        h.feed(&stream[..cut]);
        h.feed(&stream[cut..]);
        assert_eq!(h.take(), expected, "split at {cut}");
        assert_eq!(h.delivered, whole.delivered, "split at {cut}");
    }
    assert_eq!(
        whole.delivered[0].1,
        b"Subject: hi\r\n\r\n.stuffed\r\nbody\r\n.\r\nnot the end\r\n"
    );
}

fn without_nul(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().copied().filter(|&b| b != 0).collect()
}
