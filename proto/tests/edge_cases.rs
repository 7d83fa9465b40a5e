//! Table tests for `../shared/smtp-edge-cases.md` sections A-H and J (and the STARTTLS cases
//! of I that concern the session machine), each named after its case number.

mod common;

use common::{Harness, assert_reply, open_config, submission_config};
use smtp_wire::{
    AddressError, BareLineEnding, Command, CommandError, Decision, Domain, ForwardPath,
    LineEndings, Mailbox, Reply, ReversePath, ServerConfig, Transport, Verdict,
};

fn open() -> Harness {
    Harness::open().ehlo()
}

/// Opens a transaction with an accepted recipient.
fn in_transaction() -> Harness {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_eq!(h.code("RCPT TO:<b@y.example>"), 250);
    h
}

// ---------------------------------------------------------------- A. Connection, greeting

#[test]
fn a01_early_talker_is_answered_after_the_greeting() {
    let mut h = Harness::open();
    h.feed(b"EHLO x\r\n");
    assert_eq!(h.codes(), [220, 250]);
}

#[test]
fn a02_ehlo_without_argument() {
    let mut h = Harness::open();
    h.take();
    assert_reply(&h.reply("EHLO"), 501, (5, 5, 4));
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 503);
    assert_eq!(h.code("EHLO x"), 250);
}

#[test]
fn a03_ehlo_with_address_literal() {
    for arg in ["[192.0.2.1]", "[IPv6:2001:db8::1]", "[255.255.255.255]"] {
        let mut h = Harness::open();
        h.take();
        assert_eq!(h.code(&format!("EHLO {arg}")), 250, "{arg}");
    }
}

#[test]
fn a04_ehlo_with_invalid_characters() {
    let cases = [
        ("EHLO my_host.local", 250),
        ("EHLO 张三-PC", 501),
        ("EHLO a..b", 501),
    ];
    for (line, code) in cases {
        let mut h = Harness::open();
        h.take();
        let r = h.reply(line);
        assert_eq!(r.code, code, "{line}");
        if code == 501 {
            assert_eq!(r.enhanced, Some((5, 5, 2)), "{line}");
        }
    }
}

#[test]
fn a05_ehlo_with_trailing_junk() {
    let mut h = Harness::open();
    h.take();
    assert_eq!(h.code("EHLO host.example (192.0.2.1 says hi)"), 250);
    assert_eq!(h.session().helo(), Some("host.example"));
}

#[test]
fn a06_helo_gets_a_single_line_250() {
    let mut h = Harness::open();
    h.take();
    let r = h.reply("HELO host.example");
    assert_eq!(r.code, 250);
    assert_eq!(r.lines.len(), 1);
}

#[test]
fn a07_second_ehlo_resets_the_transaction() {
    let mut h = in_transaction();
    assert_eq!(h.code("EHLO again"), 250);
    assert_reply(&h.reply("DATA"), 503, (5, 5, 1));
}

#[test]
fn a08_ehlo_after_auth_keeps_authentication() {
    let mut h = Harness::new(submission_config()).authed();
    assert_eq!(h.code("EHLO again"), 250);
    assert_eq!(h.code("MAIL FROM:<me@163.com>"), 250);
}

#[test]
fn a09_commands_that_need_no_ehlo() {
    let mut h = Harness::open();
    h.take();
    assert_eq!(h.code("NOOP"), 250);
    assert_eq!(h.code("RSET"), 250);
    assert_eq!(h.code("VRFY x"), 252);
    assert_eq!(h.code("HELP"), 214);
}

// ---------------------------------------------------------------- B. Address syntax

#[test]
fn b10_baseline() {
    let mut h = open();
    assert_reply(&h.reply("MAIL FROM:<alice@example.com>"), 250, (2, 1, 0));
    assert_reply(&h.reply("RCPT TO:<bob@example.org>"), 250, (2, 1, 5));
}

/// Runs a MAIL line and returns the canonical reverse path the driver was asked about.
fn decided_sender(line: &str) -> String {
    let mut h = open();
    assert_eq!(h.code(line), 250, "{line}");
    match h.decisions.last() {
        Some(Decision::Mail { from, .. }) => from.to_string(),
        other => panic!("no MAIL decision: {other:?}"),
    }
}

fn decided_rcpt(line: &str) -> String {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_eq!(h.code(line), 250, "{line}");
    match h.decisions.last() {
        Some(Decision::Rcpt { to, .. }) => to.to_string(),
        other => panic!("no RCPT decision: {other:?}"),
    }
}

#[test]
fn b11_space_after_colon_is_accepted_and_canonicalised() {
    assert_eq!(
        decided_sender("MAIL FROM: <alice@example.com>"),
        "<alice@example.com>"
    );
    assert_eq!(
        decided_rcpt("RCPT TO: <bob@example.org>"),
        "<bob@example.org>"
    );
}

#[test]
fn b12_space_before_colon() {
    assert_eq!(decided_sender("MAIL FROM :<a@x.example>"), "<a@x.example>");
    assert_eq!(decided_rcpt("rcpt to : <b@y.example>"), "<b@y.example>");
}

#[test]
fn b13_missing_angle_brackets() {
    assert_eq!(
        decided_sender("MAIL FROM:alice@example.com"),
        "<alice@example.com>"
    );
    assert_eq!(decided_rcpt("RCPT TO:bob@example.org"), "<bob@example.org>");
}

#[test]
fn b14_null_reverse_path_is_valid_syntax() {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<>"), 250);
    assert!(matches!(
        h.decisions.last(),
        Some(Decision::Mail {
            from: ReversePath::Null,
            ..
        })
    ));
}

#[test]
fn b14_null_reverse_path_refused_by_policy_is_not_a_syntax_error() {
    let policy: common::Policy = Box::new(|_, d| match d {
        Decision::Mail {
            from: ReversePath::Null,
            ..
        } => Verdict::Reply(Reply::new(550, (5, 7, 1), "NULL sender is not allowed")),
        _ => Verdict::Accept,
    });
    let mut h = Harness::with(
        open_config(),
        Transport::Plain,
        LineEndings::CrlfOnly,
        policy,
    )
    .ehlo();
    assert_reply(&h.reply("MAIL FROM:<>"), 550, (5, 7, 1));
    assert_eq!(h.code("RCPT TO:<b@y.example>"), 503);
}

#[test]
fn b15_null_path_with_a_space() {
    let mut h = open();
    assert_reply(&h.reply("MAIL FROM:< >"), 501, (5, 1, 7));
}

#[test]
fn b16_source_route_is_accepted_and_stripped() {
    assert_eq!(
        decided_rcpt("RCPT TO:<@a.example,@b.example:bob@c.example>"),
        "<bob@c.example>"
    );
    assert_eq!(
        decided_sender("MAIL FROM:<@relay.example:alice@example.com>"),
        "<alice@example.com>"
    );
}

#[test]
fn b17_quoted_local_part_with_a_space() {
    assert_eq!(
        decided_sender("MAIL FROM:<\"john smith\"@example.com>"),
        "<\"john smith\"@example.com>"
    );
}

#[test]
fn b18_quoted_local_part_with_escapes() {
    assert_eq!(
        decided_rcpt(r#"RCPT TO:<"a\"b\\c"@example.com>"#),
        r#"<"a\"b\\c"@example.com>"#
    );
    let at = decided_rcpt(r#"RCPT TO:<"@"@example.com>"#);
    assert_eq!(at, r#"<"@"@example.com>"#);
    let m = Mailbox::parse(r#""@"@example.com"#).unwrap();
    assert_eq!(m.domain(), &Domain::Name("example.com".into()));
}

#[test]
fn b19_needlessly_quoted_local_part_is_the_same_mailbox() {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_eq!(h.code("RCPT TO:<\"bob\"@example.org>"), 250);
    assert_eq!(h.code("RCPT TO:<bob@example.org>"), 250);
    assert_eq!(h.session().envelope().rcpts.len(), 1);
    assert_eq!(
        h.session().envelope().rcpts[0].0.to_string(),
        "<bob@example.org>"
    );
}

#[test]
fn b20_ip_literal_domain() {
    assert_eq!(
        decided_rcpt("RCPT TO:<bob@[192.0.2.7]>"),
        "<bob@[192.0.2.7]>"
    );
    assert_eq!(
        decided_rcpt("RCPT TO:<bob@[IPv6:2001:db8::7]>"),
        "<bob@[IPv6:2001:db8::7]>"
    );
}

#[test]
fn b21_malformed_address_literal() {
    for line in [
        "RCPT TO:<bob@[999.1.1.1]>",
        "RCPT TO:<bob@[IPv6:zz::1]>",
        "RCPT TO:<bob@[1.2.3]>",
    ] {
        let mut h = open();
        assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
        assert_reply(&h.reply(line), 501, (5, 1, 3));
    }
}

#[test]
fn b22_seed_bare_user_name() {
    let mut h = open();
    let r = h.reply("MAIL FROM:<chengli>");
    assert_reply(&r, 501, (5, 1, 7));
    assert!(r.text().contains("no @"), "{r}");
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    let r = h.reply("RCPT TO:<chengli>");
    assert_reply(&r, 501, (5, 1, 3));
    assert!(r.text().contains("no @"), "{r}");
}

#[test]
fn b23_seed_empty_domain() {
    let mut h = open();
    let r = h.reply("MAIL FROM:<chengli@>");
    assert_reply(&r, 501, (5, 1, 7));
    assert!(r.text().contains("missing domain"), "{r}");
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_reply(&h.reply("RCPT TO:<chengli@>"), 501, (5, 1, 3));
}

#[test]
fn b24_seed_domain_only() {
    let mut h = open();
    let r = h.reply("MAIL FROM:<@bupt.edu.cn>");
    assert_reply(&r, 501, (5, 1, 7));
    assert!(r.text().contains("missing local part"), "{r}");
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_reply(&h.reply("RCPT TO:<bupt.edu.cn>"), 501, (5, 1, 3));
    assert_eq!(
        Mailbox::parse("@163.com"),
        Err(AddressError::MissingLocalPart)
    );
    assert_eq!(Mailbox::parse("a@b@c"), Err(AddressError::MultipleAt));
}

#[test]
fn b25_postmaster_without_domain() {
    assert_eq!(decided_rcpt("RCPT TO:<Postmaster>"), "<Postmaster>");
    assert_eq!(decided_rcpt("RCPT TO:<POSTMASTER>"), "<POSTMASTER>");
}

#[test]
fn b26_local_part_length() {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    let ok = format!("RCPT TO:<{}@example.com>", "a".repeat(64));
    assert_eq!(h.code(&ok), 250);
    let long = format!("RCPT TO:<{}@example.com>", "a".repeat(65));
    assert_reply(&h.reply(&long), 501, (5, 1, 3));
}

#[test]
fn b27_path_or_domain_too_long() {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    let long = format!("RCPT TO:<a@{}.com>", "b".repeat(250));
    assert_reply(&h.reply(&long), 501, (5, 1, 3));
    let labels = vec!["b".repeat(60); 5].join(".");
    assert_reply(&h.reply(&format!("RCPT TO:<a@{labels}>")), 501, (5, 1, 3));
}

#[test]
fn b28_bad_domain_syntax() {
    for (domain, err) in [
        ("exa_mple.com", AddressError::DomainChar('_')),
        ("example.com.", AddressError::DomainTrailingDot),
        (".example.com", AddressError::DomainEmptyLabel),
        ("example..com", AddressError::DomainEmptyLabel),
        ("-example.com", AddressError::DomainHyphen),
    ] {
        let mut h = open();
        assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
        assert_reply(&h.reply(&format!("RCPT TO:<bob@{domain}>")), 501, (5, 1, 3));
        assert_eq!(Domain::parse(domain), Err(err), "{domain}");
    }
}

#[test]
fn b29_bad_dot_string() {
    for local in [".alice", "al..ice", "alice."] {
        let mut h = open();
        assert_reply(
            &h.reply(&format!("MAIL FROM:<{local}@example.com>")),
            501,
            (5, 1, 7),
        );
        assert_eq!(
            decided_sender(&format!("MAIL FROM:<\"{local}\"@example.com>")),
            format!("<\"{local}\"@example.com>")
        );
    }
}

#[test]
fn b30_non_ascii_address_without_smtputf8() {
    let mut h = open();
    assert_reply(&h.reply("MAIL FROM:<用户@例子.中国>"), 550, (5, 6, 7));
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_reply(&h.reply("RCPT TO:<bob@bücher.example>"), 553, (5, 6, 7));
}

#[test]
fn b31_smtputf8_only_when_offered() {
    // Not offered (the upstream, like 163, lacks it): the parameter is refused, so no UTF-8
    // envelope can reach the upstream.
    let mut h = open();
    assert!(!h.session().capabilities().smtputf8());
    assert_reply(
        &h.reply("MAIL FROM:<用户@例子.中国> SMTPUTF8"),
        555,
        (5, 5, 4),
    );
    // Offered: accepted.
    let mut h = Harness::new(ServerConfig {
        smtputf8: true,
        ..open_config()
    })
    .ehlo();
    assert_eq!(h.code("MAIL FROM:<用户@例子.中国> SMTPUTF8"), 250);
    assert_eq!(h.code("RCPT TO:<friend@163.com>"), 250);
    assert_eq!(h.code("RCPT TO:<朋友@例子.中国>"), 250);
}

#[test]
fn b32_smtputf8_with_a_value() {
    let mut h = Harness::new(ServerConfig {
        smtputf8: true,
        ..open_config()
    })
    .ehlo();
    assert_reply(
        &h.reply("MAIL FROM:<a@x.example> SMTPUTF8=YES"),
        501,
        (5, 5, 4),
    );
}

#[test]
fn b33_case_insensitive_verbs_keep_local_part_case() {
    for line in ["mail from:<Alice@x.example>", "MaIl FrOm:<Alice@x.example>"] {
        assert_eq!(decided_sender(line), "<Alice@x.example>");
    }
    assert_eq!(decided_rcpt("rcpt TO:<BoB@y.example>"), "<BoB@y.example>");
    let mut h = in_transaction();
    assert_eq!(h.code("data"), 354);
    h.feed(b".\r\n");
    assert_eq!(h.codes(), [250]);
    assert_eq!(h.code("quit"), 221);
}

#[test]
fn b34_extra_white_space_between_verb_and_argument() {
    assert_eq!(decided_sender("MAIL  FROM:<a@x.example>"), "<a@x.example>");
    assert_eq!(decided_sender("MAIL\tFROM:<a@x.example>"), "<a@x.example>");
}

#[test]
fn b35_angle_bracket_inside_the_path() {
    for line in [
        "MAIL FROM:<a<b@x>",
        "MAIL FROM:<a@x> <b@y>",
        "MAIL FROM:<<a@x>>",
    ] {
        let mut h = open();
        let r = h.reply(line);
        assert_eq!(r.code, 501, "{line}: {r}");
        assert_eq!(r.enhanced.map(|e| e.0), Some(5), "{line}");
        assert!(h.decisions.is_empty(), "{line} reached the policy");
    }
}

// ---------------------------------------------------------------- C. MAIL/RCPT parameters

#[test]
fn c36_size_within_the_limit() {
    let mut h = open();
    assert!(h.session().capabilities().size());
    assert_reply(
        &h.reply("MAIL FROM:<a@x.example> SIZE=1000"),
        250,
        (2, 1, 0),
    );
}

#[test]
fn c37_size_over_the_fixed_limit() {
    let mut h = open();
    assert_reply(
        &h.reply("MAIL FROM:<a@x.example> SIZE=999999999"),
        552,
        (5, 3, 4),
    );
    assert_eq!(h.code("RCPT TO:<b@y.example>"), 503);
    assert_eq!(h.code("DATA"), 503);
}

#[test]
fn c38_malformed_size() {
    for v in ["abc", "", "-1", "123456789012345678901"] {
        let mut h = open();
        assert_reply(
            &h.reply(&format!("MAIL FROM:<a@x.example> SIZE={v}")),
            501,
            (5, 5, 4),
        );
    }
}

#[test]
fn c39_unknown_parameter() {
    let mut h = open();
    assert_reply(&h.reply("MAIL FROM:<a@x.example> FOO=BAR"), 555, (5, 5, 4));
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_reply(&h.reply("RCPT TO:<b@y.example> XYZ"), 555, (5, 5, 4));
}

#[test]
fn c40_body_parameter() {
    for (v, code) in [
        ("8BITMIME", 250),
        ("7BIT", 250),
        ("8bitmime", 250),
        ("BINARYMIME", 555),
        ("FOO", 501),
    ] {
        let mut h = open();
        assert_eq!(
            h.code(&format!("MAIL FROM:<a@x.example> BODY={v}")),
            code,
            "{v}"
        );
    }
}

#[test]
fn c41_duplicate_parameter() {
    for p in ["SIZE=10 SIZE=20", "BODY=7BIT BODY=8BITMIME"] {
        let mut h = open();
        assert_reply(
            &h.reply(&format!("MAIL FROM:<a@x.example> {p}")),
            501,
            (5, 5, 4),
        );
    }
}

#[test]
fn c42_dsn_parameters() {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example> RET=HDRS ENVID=abc"), 555);
    let mut h = Harness::new(ServerConfig {
        dsn: true,
        ..open_config()
    })
    .ehlo();
    assert_eq!(h.code("MAIL FROM:<a@x.example> RET=HDRS ENVID=abc"), 250);
    assert_eq!(
        h.code("RCPT TO:<b@y.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.example"),
        250
    );
    assert_reply(
        &h.reply("RCPT TO:<c@y.example> NOTIFY=NEVER,SUCCESS"),
        501,
        (5, 5, 4),
    );
}

#[test]
fn c43_auth_parameter_is_accepted_and_not_passed_on() {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example> AUTH=<>"), 250);
    match h.decisions.last() {
        Some(Decision::Mail { params, .. }) => assert_eq!(params.auth, None),
        other => panic!("{other:?}"),
    }
    h.code("RSET");
    assert_eq!(h.code("MAIL FROM:<a@x.example> AUTH=a+2Bb@x"), 250);
    h.code("RSET");
    assert_reply(
        &h.reply("MAIL FROM:<a@x.example> AUTH=a+zz"),
        501,
        (5, 5, 4),
    );
}

// ---------------------------------------------------------------- D. RCPT specifics

#[test]
fn d44_duplicate_recipients_are_delivered_once() {
    let mut h = in_transaction();
    assert_eq!(h.code("RCPT TO:<b@y.example>"), 250);
    assert_eq!(h.code("RCPT TO:<b@Y.EXAMPLE>"), 250);
    assert_eq!(h.code("DATA"), 354);
    h.feed(b"Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_eq!(h.codes(), [250]);
    assert_eq!(h.delivered_rcpts(0), ["<b@y.example>"]);
}

fn recipient_limit(n: usize) {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    let mut burst = String::new();
    for i in 0..n {
        burst.push_str(&format!("RCPT TO:<r{i}@y.example>\r\n"));
    }
    h.feed_str(&burst);
    let replies = h.take();
    assert_eq!(replies.len(), n);
    assert!(replies[..100].iter().all(|r| r.code == 250));
    for r in &replies[100..] {
        assert_reply(r, 452, (4, 5, 3));
    }
    assert_eq!(h.code("DATA"), 354);
    h.feed(b"x\r\n.\r\n");
    assert_eq!(h.codes(), [250]);
    assert_eq!(h.delivered[0].0.rcpts.len(), 100);
}

#[test]
fn d45_recipient_limit_101() {
    recipient_limit(101);
}

#[test]
fn d45_recipient_limit_1000() {
    recipient_limit(1000);
}

#[test]
fn d46_rcpt_before_mail() {
    let mut h = open();
    assert_reply(&h.reply("RCPT TO:<b@y.example>"), 503, (5, 5, 1));
}

#[test]
fn d47_unauthenticated_relay_attempt() {
    let mut h = Harness::new(submission_config()).ehlo();
    assert_reply(&h.reply("MAIL FROM:<a@x.example>"), 530, (5, 7, 0));
    assert_eq!(h.code("RCPT TO:<someone@qq.com>"), 503);
    assert!(h.decisions.is_empty());
}

// ---------------------------------------------------------------- E. Command robustness

#[test]
fn e48_unknown_verb() {
    let mut h = open();
    assert_reply(&h.reply("FOO bar"), 500, (5, 5, 2));
    assert_eq!(h.code("NOOP"), 250);
}

#[test]
fn e49_error_flood_closes_after_max_errors() {
    let mut h = open();
    let max = h.session().config().max_errors as usize;
    h.feed_str(&"FOO\r\n".repeat(50));
    let replies = h.take();
    assert_eq!(replies.len(), max);
    assert!(replies[..max - 1].iter().all(|r| r.code == 500));
    assert_reply(&replies[max - 1], 421, (4, 7, 0));
    assert!(h.closed);
}

#[test]
fn e50_empty_line() {
    let mut h = open();
    assert_reply(&h.reply(""), 500, (5, 5, 2));
}

#[test]
fn e51_command_line_of_exactly_512_octets() {
    let mut h = open();
    let line = format!("NOOP {}", "x".repeat(505));
    assert_eq!(line.len() + 2, 512);
    assert_eq!(h.code(&line), 250);
}

#[test]
fn e52_overlong_line_is_refused_once_and_its_tail_never_runs() {
    let mut h = in_transaction();
    h.feed_str(&format!("NOOP {}RCPT TO:<evil@x>\r\n", "x".repeat(2000)));
    let replies = h.take();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_reply(&replies[0], 500, (5, 5, 2));
    assert_eq!(h.session().envelope().rcpts.len(), 1);
    // A 10 MB line without LF, in 64 KiB reads: one 500, and nothing is kept meanwhile.
    let chunk = vec![b'x'; 65536];
    for _ in 0..160 {
        h.feed(&chunk);
    }
    h.feed(b"\r\nNOOP\r\n");
    assert_eq!(h.codes(), [500, 250]);
}

#[test]
fn e53_arguments_to_data_rset_quit() {
    let mut h = in_transaction();
    for line in ["DATA now", "RSET x", "QUIT bye", "DATA "] {
        assert_reply(&h.reply(line), 501, (5, 5, 4));
    }
    assert_eq!(h.session().envelope().rcpts.len(), 1);
    assert!(!h.closed);
}

#[test]
fn e54_noop_with_an_argument() {
    let mut h = open();
    assert_reply(&h.reply("NOOP hello world"), 250, (2, 0, 0));
}

#[test]
fn e55_bare_lf_terminator_strict_policy() {
    let mut h = Harness::open();
    h.take();
    h.feed(b"EHLO x\nMAIL FROM:<a@x>\n");
    assert!(h.take().is_empty(), "no reply before a CRLF");
    h.feed(b"\r\n");
    let replies = h.take();
    assert_eq!(replies.len(), 1);
    assert_reply(&replies[0], 501, (5, 5, 2));
}

#[test]
fn e55_bare_lf_terminator_compatibility_policy() {
    let mut h = Harness::with(
        open_config(),
        Transport::Plain,
        LineEndings::AcceptBareLf,
        common::accept_all(),
    );
    h.take();
    h.feed(b"EHLO x\nMAIL FROM:<a@x.example>\n");
    assert_eq!(h.codes(), [250, 250]);
}

#[test]
fn e56_bare_cr_inside_a_command() {
    let mut h = open();
    h.feed(b"MAIL FROM:<a@x>\rRCPT TO:<b@y>\r\n");
    let replies = h.take();
    assert_eq!(replies.len(), 1);
    assert_reply(&replies[0], 501, (5, 5, 2));
    assert!(h.decisions.is_empty());
}

#[test]
fn e57_nul_or_control_bytes_in_a_command() {
    let mut h = open();
    h.feed(b"MAIL FROM:<a\x00b@x>\r\nEHLO a\x01b\r\n");
    let replies = h.take();
    assert_eq!(replies.len(), 2);
    for r in &replies {
        assert_reply(r, 501, (5, 5, 2));
    }
    assert_eq!(
        Command::parse(b"MAIL FROM:<a\x00b@x>"),
        Err(CommandError::ControlByte(0))
    );
}

#[test]
fn e58_eight_bit_bytes_in_a_verb() {
    let mut h = open();
    assert_reply(&h.reply("MÄIL FROM:<a@x>"), 500, (5, 5, 2));
}

// ---------------------------------------------------------------- F. Sequencing

#[test]
fn f59_mail_before_ehlo() {
    let mut h = Harness::open();
    h.take();
    assert_reply(&h.reply("MAIL FROM:<a@x.example>"), 503, (5, 5, 1));
}

#[test]
fn f60_mail_before_auth_on_submission() {
    let mut h = Harness::new(submission_config()).ehlo();
    assert_reply(&h.reply("MAIL FROM:<me@163.com>"), 530, (5, 7, 0));
}

#[test]
fn f61_nested_mail() {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_reply(&h.reply("MAIL FROM:<b@x.example>"), 503, (5, 5, 1));
    assert_eq!(
        h.session().envelope().from.as_ref().unwrap().to_string(),
        "<a@x.example>"
    );
}

#[test]
fn f62_data_with_no_valid_recipient() {
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_reply(&h.reply("DATA"), 554, (5, 5, 1));
    // The refused DATA ended the transaction.
    assert_eq!(h.code("RCPT TO:<b@y.example>"), 503);
    let mut h = open();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_eq!(h.code("RCPT TO:<bad>"), 501);
    assert_reply(&h.reply("DATA"), 554, (5, 5, 1));
    let mut h = open();
    assert_reply(&h.reply("DATA"), 503, (5, 5, 1));
}

#[test]
fn f63_two_transactions_in_one_session() {
    let mut h = open();
    for (rcpt, body) in [("b1@y.example", "one"), ("b2@y.example", "two")] {
        assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
        assert_eq!(h.code(&format!("RCPT TO:<{rcpt}>")), 250);
        assert_eq!(h.code("DATA"), 354);
        h.feed_str(&format!("Subject: {body}\r\n\r\n{body}\r\n.\r\n"));
        assert_eq!(h.codes(), [250]);
    }
    assert_eq!(h.delivered_rcpts(0), ["<b1@y.example>"]);
    assert_eq!(h.delivered_rcpts(1), ["<b2@y.example>"]);
    assert_eq!(h.delivered[0].1, b"Subject: one\r\n\r\none\r\n");
    assert_eq!(h.delivered[1].1, b"Subject: two\r\n\r\ntwo\r\n");
}

#[test]
fn f64_rset_in_the_middle_of_a_transaction() {
    let mut h = Harness::new(submission_config()).authed();
    assert_eq!(h.code("MAIL FROM:<me@163.com>"), 250);
    assert_eq!(h.code("RCPT TO:<b@y.example>"), 250);
    assert_reply(&h.reply("RSET"), 250, (2, 0, 0));
    assert_reply(&h.reply("DATA"), 503, (5, 5, 1));
    assert_eq!(h.session().authenticated(), Some("me@163.com"));
    assert_eq!(h.code("MAIL FROM:<me@163.com>"), 250);
}

#[test]
fn f65_rset_with_argument_and_before_ehlo() {
    let mut h = Harness::open();
    h.take();
    assert_reply(&h.reply("RSET"), 250, (2, 0, 0));
    assert_reply(&h.reply("RSET now"), 501, (5, 5, 4));
}

// ---------------------------------------------------------------- G. DATA content

/// Sends a body after DATA and returns (replies, delivered body if any).
fn send_body(body: &[u8], bare: BareLineEnding) -> (Vec<Reply>, Harness) {
    let mut h = Harness::open_with_bare(bare).ehlo();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_eq!(h.code("RCPT TO:<b@y.example>"), 250);
    assert_eq!(h.code("DATA"), 354);
    h.feed(body);
    let replies = h.take();
    (replies, h)
}

#[test]
fn g66_dot_stuffing_is_removed() {
    let (r, h) = send_body(
        b"..hidden\r\n..\r\n....\r\n..leading\r\n.\r\n",
        BareLineEnding::Reject,
    );
    assert_eq!(r.len(), 1);
    assert_eq!(h.delivered[0].1, b".hidden\r\n.\r\n...\r\n.leading\r\n");
}

#[test]
fn g67_terminator_right_after_data() {
    let (r, h) = send_body(b".\r\n", BareLineEnding::Reject);
    assert_eq!(r.len(), 1, "one reply, no hang");
    assert_eq!(h.delivered[0].1, b"");
}

#[test]
fn g68_dots_not_at_line_start_are_content() {
    let (r, h) = send_body(b"abc.\r\nx. \r\n\r\n.\r\n", BareLineEnding::Reject);
    assert_eq!(r.len(), 1);
    assert_eq!(h.delivered[0].1, b"abc.\r\nx. \r\n\r\n");
}

#[test]
fn g69_text_line_longer_than_1000_octets_is_passed_unmodified() {
    let line = format!("{}\r\n", "a".repeat(5000));
    let (r, h) = send_body(format!("{line}.\r\n").as_bytes(), BareLineEnding::Reject);
    assert_eq!(r[0].code, 250);
    assert_eq!(h.delivered[0].1, line.as_bytes());
}

#[test]
fn g70_bare_lf_inside_data() {
    let body = b"Subject: hi\r\n\r\nline1\nline2\r\n.\r\n";
    let (r, h) = send_body(body, BareLineEnding::Reject);
    assert_reply(&r[0], 550, (5, 6, 0));
    assert!(h.delivered.is_empty());
    let (r, h) = send_body(body, BareLineEnding::Normalize);
    assert_eq!(r[0].code, 250);
    assert_eq!(h.delivered[0].1, b"Subject: hi\r\n\r\nline1\r\nline2\r\n");
}

#[test]
fn g71_bare_cr_inside_data() {
    let body = b"line1\rline2\r\n.\r\n";
    let (r, h) = send_body(body, BareLineEnding::Reject);
    assert_reply(&r[0], 550, (5, 6, 0));
    assert!(h.delivered.is_empty());
    let (r, h) = send_body(body, BareLineEnding::Normalize);
    assert_eq!(r[0].code, 250);
    assert_eq!(h.delivered[0].1, b"line1\r\nline2\r\n");
}

/// smtp-edge-cases 72-76: a fake end of data followed by a smuggled transaction. Whatever the
/// policy: at most one message, never a second MAIL transaction, never a bare CR or LF in what
/// is delivered, and a dot alone on a line in the delivered content is re-stuffed on output.
fn smuggling(separator: &[u8]) {
    let mut body = b"Subject: x\r\n\r\nbody".to_vec();
    body.extend_from_slice(separator);
    body.extend_from_slice(
        b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\nFrom: ceo@bank.example\r\n\r\nsmuggled\r\n.\r\n",
    );
    for bare in [BareLineEnding::Reject, BareLineEnding::Normalize] {
        let (replies, h) = send_body(&body, bare);
        assert_eq!(replies.len(), 1, "{separator:?} {bare:?}: {replies:?}");
        assert_eq!(
            h.mail_decisions(),
            1,
            "{separator:?} {bare:?}: smuggled MAIL ran"
        );
        assert!(h.delivered.len() <= 1);
        for (_, content) in &h.delivered {
            let mut prev = 0u8;
            for (i, &b) in content.iter().enumerate() {
                if b == b'\n' {
                    assert_eq!(prev, b'\r', "{separator:?}: bare LF delivered at {i}");
                }
                if prev == b'\r' {
                    assert_eq!(b, b'\n', "{separator:?}: bare CR delivered at {i}");
                }
                prev = b;
            }
            let wire = smtp_wire::DataEncoder::encode_all(content);
            let end = memchr_end(&wire);
            assert_eq!(
                end,
                wire.len() - 3,
                "{separator:?}: early terminator on re-encode"
            );
        }
        // A NUL is refused as bare line ends are, or removed when normalising: a next hop
        // that strips NULs must never get `CRLF NUL . CRLF` (and so an end of data).
        for (_, content) in &h.delivered {
            assert!(!content.contains(&0), "{separator:?}: NUL delivered");
            let wire = smtp_wire::DataEncoder::encode_all(content);
            assert!(!wire.contains(&0), "{separator:?}: NUL sent on");
        }
        let has_bare = separator
            .windows(2)
            .any(|w| (w[0] == b'\r') != (w[1] == b'\n'))
            || separator.first() == Some(&b'\n')
            || separator.last() == Some(&b'\r')
            || separator.contains(&0);
        if bare == BareLineEnding::Reject && has_bare {
            assert_reply(&replies[0], 550, (5, 6, 0));
        } else {
            assert_eq!(replies[0].code, 250, "{separator:?} {bare:?}");
            assert_eq!(h.delivered.len(), 1);
        }
    }
}

/// Where the first `CRLF.CRLF` starts in `CRLF + wire` (the DATA command's CRLF counts).
fn memchr_end(wire: &[u8]) -> usize {
    let mut with_crlf = b"\r\n".to_vec();
    with_crlf.extend_from_slice(wire);
    with_crlf
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .expect("terminator")
}

#[test]
fn g72_smuggling_lf_dot_lf() {
    smuggling(b"\n.\n");
}

#[test]
fn g73_smuggling_lf_dot_crlf() {
    smuggling(b"\n.\r\n");
}

#[test]
fn g74_smuggling_crlf_dot_lf() {
    smuggling(b"\r\n.\n");
}

#[test]
fn g75_smuggling_bare_cr_variants() {
    for sep in [&b"\r.\r"[..], b"\r.\r\n", b"\r\n.\r", b"\r.\n", b"\n.\r"] {
        smuggling(sep);
    }
}

#[test]
fn g76_smuggling_nul_and_doubled_cr_variants() {
    for sep in [&b"\r\n\x00.\r\n"[..], b"\r\n.\x00\r\n", b"\r\r\n.\r\r\n"] {
        smuggling(sep);
    }
}

// ---------------------------------------------------------------- H. PIPELINING

#[test]
fn h77_pipelining_after_the_terminator() {
    let mut h = in_transaction();
    assert_eq!(h.code("DATA"), 354);
    h.feed(b"one\r\n.\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n");
    assert_eq!(h.codes(), [250, 250, 250, 354]);
    h.feed(b"two\r\n.\r\n");
    assert_eq!(h.codes(), [250]);
    assert_eq!(h.delivered.len(), 2);
    assert_eq!(h.delivered[1].1, b"two\r\n");
    assert_eq!(h.delivered_rcpts(1), ["<c@y.example>"]);
}

#[test]
fn h78_whole_envelope_in_one_group() {
    let mut h = open();
    h.feed(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<bad>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n");
    assert_eq!(h.codes(), [250, 250, 501, 250, 354]);
    let mut h = open();
    h.feed(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<bad>\r\nRCPT TO:<worse>\r\nDATA\r\n");
    assert_eq!(h.codes(), [250, 501, 501, 554]);
}

#[test]
fn h79_body_sent_after_a_refused_data_is_parsed_as_commands() {
    let mut h = open();
    h.feed(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<bad>\r\nDATA\r\nSubject: x\r\n\r\nRCPT TO:<evil@y.example>\r\n.\r\n");
    let codes = h.codes();
    assert_eq!(codes, [250, 501, 554, 500, 500, 503, 500]);
    assert!(h.delivered.is_empty());
    assert!(
        !h.decisions
            .iter()
            .any(|d| matches!(d, Decision::Rcpt { .. })),
        "the smuggled RCPT reached the policy"
    );
}

#[test]
fn h80_pipelining_when_not_advertised_is_answered_in_order() {
    let mut h = Harness::new(ServerConfig {
        pipelining: false,
        ..open_config()
    })
    .ehlo();
    assert!(!h.session().capabilities().pipelining());
    h.feed(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<bad>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n");
    assert_eq!(h.codes(), [250, 250, 501, 250, 354]);
}

#[test]
fn h81_large_pipelined_burst() {
    recipient_limit(500);
}

#[test]
fn h82_quit_pipelined_after_the_terminator() {
    let mut h = in_transaction();
    assert_eq!(h.code("DATA"), 354);
    h.feed(b"hello\r\n.\r\nQUIT\r\n");
    let replies = h.take();
    assert_eq!(
        replies.iter().map(|r| r.code).collect::<Vec<_>>(),
        [250, 221]
    );
    assert_reply(&replies[1], 221, (2, 0, 0));
    assert!(h.closed);
    assert_eq!(h.delivered.len(), 1);
}

// ---------------------------------------------------------------- I. STARTTLS (session side)

fn tls_config() -> ServerConfig {
    ServerConfig {
        starttls: true,
        auth_requires_tls: true,
        ..submission_config()
    }
}

#[test]
fn i83_starttls_with_an_argument() {
    let mut h = Harness::new(tls_config()).ehlo();
    assert_reply(&h.reply("STARTTLS now"), 501, (5, 5, 4));
}

#[test]
fn i84_plaintext_pipelined_after_starttls_is_discarded() {
    let mut h = Harness::new(tls_config()).ehlo();
    h.feed(b"STARTTLS\r\nRSET\r\nMAIL FROM:<a@x>\r\n");
    assert_eq!(h.codes(), [220]);
    assert_eq!(h.tls_upgrades, 1);
    assert!(h.discarded_at_starttls > 0);
    assert_eq!(h.code("EHLO x"), 250);
}

#[test]
fn i85_state_after_starttls_needs_a_fresh_ehlo() {
    let mut h = Harness::new(ServerConfig {
        starttls: true,
        ..open_config()
    })
    .ehlo();
    assert_eq!(h.code("STARTTLS"), 220);
    assert_reply(&h.reply("MAIL FROM:<a@x.example>"), 503, (5, 5, 1));
}

#[test]
fn i86_ehlo_after_starttls_does_not_offer_starttls() {
    let mut h = Harness::new(tls_config()).ehlo();
    assert!(h.session().capabilities().starttls());
    assert!(
        h.session().capabilities().auth_mechanisms().is_empty(),
        "no AUTH before TLS when it requires TLS"
    );
    assert_eq!(h.code("STARTTLS"), 220);
    let ehlo = h.reply("EHLO x");
    let caps = smtp_wire::Capabilities::from_ehlo(&ehlo);
    assert!(!caps.starttls());
    assert!(
        !caps.auth_mechanisms().is_empty(),
        "AUTH offered once TLS is on"
    );
}

#[test]
fn i87_starttls_inside_tls() {
    let mut h = Harness::with(
        tls_config(),
        Transport::Tls,
        LineEndings::CrlfOnly,
        common::accept_all(),
    )
    .ehlo();
    assert_reply(&h.reply("STARTTLS"), 503, (5, 5, 1));
}

#[test]
fn i89_auth_before_tls_when_policy_requires_tls() {
    let mut h = Harness::new(tls_config()).ehlo();
    assert_reply(&h.reply("AUTH PLAIN AGFAYi5leGFtcGxlAHB3"), 538, (5, 7, 11));
    assert!(h.decisions.is_empty(), "credentials must not be checked");
}

// ---------------------------------------------------------------- J. AUTH

fn auth_session() -> Harness {
    Harness::new(submission_config()).ehlo()
}

#[test]
fn j91_cancel() {
    let mut h = auth_session();
    assert_eq!(h.reply("AUTH LOGIN"), Reply::plain(334, "VXNlcm5hbWU6"));
    assert_reply(&h.reply("*"), 501, (5, 7, 0));
    assert_eq!(h.session().authenticated(), None);
    assert_eq!(h.code("AUTH PLAIN AG1lQDE2My5jb20AcmlnaHQ="), 235);
}

#[test]
fn j92_undecodable_base64() {
    let mut h = auth_session();
    assert_eq!(h.code("AUTH LOGIN"), 334);
    assert_reply(&h.reply("!!!notbase64"), 501, (5, 5, 2));
    assert_reply(&h.reply("AUTH PLAIN ####"), 501, (5, 5, 2));
}

#[test]
fn j93_initial_response_equals_sign() {
    let mut h = auth_session();
    let r = h.reply("AUTH PLAIN =");
    assert_ne!(r.code, 334);
    assert_reply(&r, 501, (5, 5, 2));
}

#[test]
fn j94_auth_plain_without_initial_response() {
    let mut h = auth_session();
    let r = h.reply("AUTH PLAIN");
    assert_eq!(r.to_bytes(), b"334 \r\n");
    assert_reply(&h.reply("AG1lQDE2My5jb20AcmlnaHQ="), 235, (2, 7, 0));
}

#[test]
fn j95_plain_with_mismatched_authorization_identity() {
    let mut h = auth_session();
    // base64("other@163.com\0me@163.com\0right")
    let r = h.reply("AUTH PLAIN b3RoZXJAMTYzLmNvbQBtZUAxNjMuY29tAHJpZ2h0");
    assert_reply(&r, 535, (5, 7, 8));
    assert!(h.decisions.is_empty());
}

#[test]
fn j96_login_with_an_initial_response() {
    let mut h = auth_session();
    assert_eq!(
        h.reply("AUTH LOGIN bWVAMTYzLmNvbQ=="),
        Reply::plain(334, "UGFzc3dvcmQ6")
    );
    assert_eq!(h.code("cmlnaHQ="), 235);
    assert_eq!(h.session().authenticated(), Some("me@163.com"));
}

#[test]
fn j97_auth_twice() {
    let mut h = Harness::new(submission_config()).authed();
    assert_reply(&h.reply("AUTH LOGIN"), 503, (5, 5, 1));
}

#[test]
fn j98_auth_during_a_transaction() {
    let mut h = Harness::new(ServerConfig {
        auth_required: false,
        ..submission_config()
    })
    .ehlo();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    assert_reply(
        &h.reply("AUTH PLAIN AG1lQDE2My5jb20AcmlnaHQ="),
        503,
        (5, 5, 1),
    );
}

#[test]
fn j99_unknown_or_unadvertised_mechanism() {
    let mut h = auth_session();
    assert_reply(&h.reply("AUTH CRAM-MD5"), 504, (5, 5, 4));
    assert_reply(&h.reply("AUTH FOO"), 504, (5, 5, 4));
}

#[test]
fn j100_wrong_credentials_then_lockout() {
    let mut h = auth_session();
    let max = h.session().config().max_auth_failures;
    // base64("\0me@163.com\0wrong")
    for _ in 1..max {
        assert_reply(
            &h.reply("AUTH PLAIN AG1lQDE2My5jb20Ad3Jvbmc="),
            535,
            (5, 7, 8),
        );
    }
    assert_reply(
        &h.reply("AUTH PLAIN AG1lQDE2My5jb20Ad3Jvbmc="),
        421,
        (4, 7, 0),
    );
    assert!(h.closed);
}

#[test]
fn j101_very_long_sasl_response() {
    let mut h = auth_session();
    assert_eq!(h.code("AUTH PLAIN"), 334);
    // A 4,000-octet base64 line is processed (here: a malformed PLAIN, not "line too long").
    let r = h.reply(&"QUFB".repeat(1000));
    assert_ne!(r.code, 500);
    assert_eq!(h.code("AUTH PLAIN"), 334);
    let r = h.reply(&"QUFB".repeat(3250));
    assert_reply(&r, 500, (5, 5, 6));
    assert_eq!(h.code("NOOP"), 250);
}

#[test]
fn j102_sender_not_owned_by_the_authenticated_user_is_a_policy_decision() {
    let policy: common::Policy = Box::new(|s, d| match d {
        Decision::Authenticate(_) => Verdict::Accept,
        Decision::Mail {
            from: ReversePath::Mailbox(m),
            ..
        } if Some(m.to_string().as_str()) != s.authenticated() => Verdict::Reply(Reply::new(
            553,
            (5, 7, 1),
            "Sender address not owned by authenticated user",
        )),
        _ => Verdict::Accept,
    });
    let mut h = Harness::with(
        submission_config(),
        Transport::Plain,
        LineEndings::CrlfOnly,
        policy,
    )
    .authed();
    assert_reply(&h.reply("MAIL FROM:<boss@163.com>"), 553, (5, 7, 1));
    assert_eq!(h.code("MAIL FROM:<me@163.com>"), 250);
    assert!(matches!(
        h.decisions.last(),
        Some(Decision::Mail {
            from: ReversePath::Mailbox(_),
            ..
        })
    ));
}

// ---------------------------------------------------------------- BDAT (RFC 3030)

#[test]
fn bdat_chunks_are_delivered_byte_exact() {
    let mut h = Harness::new(ServerConfig {
        chunking: true,
        binarymime: true,
        ..open_config()
    })
    .ehlo();
    assert_eq!(h.code("MAIL FROM:<a@x.example> BODY=BINARYMIME"), 250);
    assert_eq!(h.code("RCPT TO:<b@y.example>"), 250);
    h.feed(b"BDAT 5\r\na\r\n.\rBDAT 3 LAST\r\n\x00\n.");
    assert_eq!(h.codes(), [250, 250]);
    assert_eq!(h.delivered[0].1, b"a\r\n.\r\x00\n.");
}

#[test]
fn bdat_without_recipients_is_read_then_refused() {
    let mut h = Harness::new(ServerConfig {
        chunking: true,
        ..open_config()
    })
    .ehlo();
    assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
    h.feed(b"BDAT 9 LAST\r\nNOOP\r\nxyzNOOP\r\n");
    assert_eq!(h.codes(), [554, 250]);
    assert!(h.delivered.is_empty());
}

fn chunking() -> ServerConfig {
    ServerConfig {
        chunking: true,
        ..open_config()
    }
}

/// Without BINARYMIME (a relay's setting: the message goes on as DATA), a BDAT message is
/// still lines: bare CR, bare LF or NUL anywhere in its chunks is refused after the last one,
/// as DATA would be (the smuggling shapes of smtp-edge-cases 70-76, sent as BDAT); a CRLF
/// split over two chunks is one line end.
#[test]
fn bdat_content_with_bare_line_ends_is_refused_without_binarymime() {
    for (chunks, want) in [
        (&b"BDAT 7\r\nab\n.\ncdBDAT 2 LAST\r\nx\n"[..], [250, 550]),
        (b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\nc\r", [250, 550]),
        (b"BDAT 4\r\na\x00.\nBDAT 2 LAST\r\n\r\n", [250, 550]),
        (b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\nc\n", [250, 550]),
    ] {
        let mut h = Harness::new(chunking()).ehlo();
        assert_eq!(h.code("MAIL FROM:<a@x.example>"), 250);
        assert_eq!(h.code("RCPT TO:<b@y.example>"), 250);
        h.feed(chunks);
        assert_eq!(h.codes(), want, "{:?}", String::from_utf8_lossy(chunks));
        assert!(h.delivered.is_empty());
        assert_eq!(
            h.code("NOOP"),
            250,
            "the chunks were read, not taken as commands"
        );
    }
    let mut h = Harness::new(chunking()).ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    h.feed(b"BDAT 3\r\nab\rBDAT 4 LAST\r\n\nc\r\n");
    assert_eq!(h.codes(), [250, 250]);
    assert_eq!(h.delivered[0].1, b"ab\r\nc\r\n");
    // NUL alone: its own reply.
    let mut h = Harness::new(chunking()).ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    h.feed(b"BDAT 3 LAST\r\na\x00b");
    let r = h.take().last().unwrap().to_string();
    assert!(r.starts_with("550 5.6.0 Message contains NUL"), "{r}");
}

/// Under the Normalize policy the content passes as it came (the DATA encoder of the next
/// hop turns each bare line end into CRLF).
#[test]
fn bdat_content_passes_as_it_came_under_normalize() {
    let mut h = Harness::build(
        chunking(),
        Transport::Plain,
        LineEndings::CrlfOnly,
        BareLineEnding::Normalize,
        common::accept_all(),
    )
    .ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    h.feed(b"BDAT 4 LAST\r\na\n.\n");
    assert_eq!(h.codes(), [250]);
    assert_eq!(h.delivered[0].1, b"a\n.\n");
}

/// BINARYMIME is offered only with its own switch, and refused without it.
#[test]
fn binarymime_needs_its_own_switch() {
    let mut h = Harness::new(chunking());
    h.take();
    let ehlo = format!("{:?}", h.cmd("EHLO c.example"));
    assert!(
        ehlo.contains("CHUNKING") && !ehlo.contains("BINARYMIME"),
        "{ehlo}"
    );
    assert_eq!(h.code("MAIL FROM:<a@x.example> BODY=BINARYMIME"), 555);
}

/// The first BDAT of a transaction asks the driver to begin the message (a relay opens its
/// upstream DATA there), once; a refusal answers that chunk after it is read, and the
/// transaction's later chunks too, until the last.
#[test]
fn the_first_bdat_begins_the_message_and_a_refusal_answers_its_chunks() {
    let mut h = Harness::new(chunking()).ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    h.feed(b"BDAT 2\r\nabBDAT 0\r\nBDAT 2 LAST\r\ncd");
    assert_eq!(h.codes(), [250, 250, 250]);
    let begins = h
        .decisions
        .iter()
        .filter(|d| matches!(d, Decision::BeginData))
        .count();
    assert_eq!(begins, 1);
    assert_eq!(h.delivered[0].1, b"abcd");

    let refuse: common::Policy = Box::new(|_, d| match d {
        Decision::BeginData => Verdict::Reply(Reply::new(451, (4, 3, 0), "upstream busy")),
        _ => Verdict::Accept,
    });
    let mut h = Harness::with(chunking(), Transport::Plain, LineEndings::CrlfOnly, refuse).ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    h.feed(b"BDAT 4\r\nNOOPBDAT 5 LAST\r\nRSET\r");
    let got: Vec<String> = h.take().iter().map(|r| r.to_string()).collect();
    assert_eq!(got, ["451 4.3.0 upstream busy", "451 4.3.0 upstream busy"]);
    assert!(h.delivered.is_empty());
    assert_eq!(h.code("NOOP"), 250);
}

/// Between the chunks of one message the session is still inside it (a driver's minimum data
/// rate holds over the whole message); before the first BDAT, after the last, and after RSET
/// it is not.
#[test]
fn a_chunked_message_lasts_from_its_first_bdat_to_its_last() {
    let mut h = Harness::new(chunking()).ehlo();
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    assert!(!h.session().in_chunked_message());
    h.feed(b"BDAT 2\r\nab");
    assert!(h.session().in_chunked_message());
    h.feed(b"BDAT 2 LAST\r\ncd");
    assert_eq!(h.codes(), [250, 250]);
    assert!(!h.session().in_chunked_message());
    h.cmd("MAIL FROM:<a@x.example>");
    h.cmd("RCPT TO:<b@y.example>");
    h.feed(b"BDAT 0\r\n");
    assert_eq!(h.codes(), [250]);
    assert!(h.session().in_chunked_message());
    assert_eq!(h.code("RSET"), 250);
    assert!(!h.session().in_chunked_message());
}

#[test]
fn forward_path_equality_for_postmaster() {
    let a = ForwardPath::Postmaster("Postmaster".into());
    assert!(a.same_target(&ForwardPath::Postmaster("POSTMASTER".into())));
}
