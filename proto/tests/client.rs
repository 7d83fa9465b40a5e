//! The client session machine against scripted servers: 163's EHLO quirks, LOGIN prompts,
//! odd success texts, STARTTLS rules, pipelined envelopes (smtp-edge-cases N).

use smtp_wire::{
    ClientConfig, ClientError, ClientEvent, ClientSession, ClientTls, Command, Credentials,
    ForwardPath, MailParams, Mechanism, Outgoing, RcptParams, Reply, ReversePath,
};

fn reply(bytes: &str) -> Reply {
    Reply::parse(bytes.as_bytes()).unwrap()
}

fn wire(out: &[Outgoing]) -> String {
    let mut v = Vec::new();
    for o in out {
        o.encode(&mut v);
    }
    String::from_utf8(v).unwrap()
}

fn sent(ev: ClientEvent) -> String {
    match ev {
        ClientEvent::Send(out) => wire(&out),
        other => panic!("expected Send, got {other:?}"),
    }
}

/// smtp.163.com's EHLO on 465, persona-163 style: `250-mail`, both AUTH lines, a coremail
/// token, and STARTTLS listed inside implicit TLS.
const EHLO_163: &str = "250-mail\r\n250-PIPELINING\r\n250-AUTH LOGIN PLAIN XOAUTH2\r\n250-AUTH=LOGIN PLAIN XOAUTH2\r\n250-coremail 1Uxr2xKj7kG0xkI17xGrU7I0s8FY2U3Uj8Cz28x1UUUUU7Ic2I0Y2UrM5pRRUCa0xDrUUUUj\r\n250-STARTTLS\r\n250-ID\r\n250 8BITMIME\r\n";

fn config(tls: ClientTls, creds: Option<Credentials>) -> ClientConfig {
    ClientConfig {
        helo_name: "relay.test".into(),
        tls,
        credentials: creds,
    }
}

#[test]
fn n123_nonstandard_ehlo_keywords_are_parsed() {
    let mut c = ClientSession::new(config(ClientTls::None, None));
    assert_eq!(
        sent(
            c.handle_reply(reply(
                "220 163.com Anti-spam GT for Coremail System (163com[20141201])\r\n"
            ))
            .unwrap()
        ),
        "EHLO relay.test\r\n"
    );
    assert_eq!(c.handle_reply(reply(EHLO_163)).unwrap(), ClientEvent::Ready);
    let caps = c.capabilities();
    assert_eq!(caps.domain, "mail");
    assert_eq!(
        caps.auth_mechanisms(),
        [Mechanism::Login, Mechanism::Plain, Mechanism::XOAuth2]
    );
    assert!(caps.pipelining() && caps.eightbitmime() && !caps.smtputf8());
}

#[test]
fn n124_no_starttls_inside_implicit_tls_and_auth_plain_with_initial_response() {
    let creds = Credentials::new("me@163.com", "CODE");
    let mut c = ClientSession::new(config(ClientTls::Implicit, Some(creds.clone())));
    c.handle_reply(reply("220 163.com ready\r\n")).unwrap();
    let out = sent(c.handle_reply(reply(EHLO_163)).unwrap());
    assert!(out.starts_with("AUTH PLAIN "), "{out}");
    let ir = out.trim_end().rsplit(' ').next().unwrap();
    assert_eq!(
        smtp_wire::SaslData::decode_base64(ir).unwrap(),
        creds.to_plain()
    );
    assert_eq!(
        c.handle_reply(reply("235 Authentication successful\r\n"))
            .unwrap(),
        ClientEvent::Ready
    );
}

#[test]
fn n124_starttls_required_is_sent_then_ehlo_again() {
    let mut c = ClientSession::new(config(ClientTls::StartTls, None));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    assert_eq!(
        sent(c.handle_reply(reply(EHLO_163)).unwrap()),
        "STARTTLS\r\n"
    );
    assert_eq!(
        c.handle_reply(reply("220 Ready to start TLS\r\n")).unwrap(),
        ClientEvent::UpgradeTls
    );
    assert_eq!(wire(&c.tls_established().unwrap()), "EHLO relay.test\r\n");
    // The server lists STARTTLS again after the handshake (163 does): not sent twice.
    assert_eq!(c.handle_reply(reply(EHLO_163)).unwrap(), ClientEvent::Ready);
    assert!(c.tls_active());
}

#[test]
fn n124_starttls_required_but_not_offered() {
    let mut c = ClientSession::new(config(ClientTls::StartTls, None));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    assert_eq!(
        c.handle_reply(reply("250-x\r\n250 PIPELINING\r\n")),
        Err(ClientError::TlsNotOffered)
    );
}

#[test]
fn opportunistic_tls_upgrades_when_offered_and_goes_plain_when_not() {
    let mut c = ClientSession::new(config(ClientTls::Opportunistic, None));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    assert_eq!(
        sent(c.handle_reply(reply(EHLO_163)).unwrap()),
        "STARTTLS\r\n"
    );
    assert_eq!(
        c.handle_reply(reply("220 go ahead\r\n")).unwrap(),
        ClientEvent::UpgradeTls
    );

    let mut c = ClientSession::new(config(ClientTls::Opportunistic, None));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    assert_eq!(
        c.handle_reply(reply("250-x\r\n250 PIPELINING\r\n"))
            .unwrap(),
        ClientEvent::Ready
    );
    assert!(!c.tls_active());
}

#[test]
fn opportunistic_tls_never_sends_credentials_in_plaintext() {
    let creds = Credentials::new("me@163.com", "CODE");
    let mut c = ClientSession::new(config(ClientTls::Opportunistic, Some(creds)));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    assert_eq!(
        c.handle_reply(reply("250-x\r\n250 AUTH PLAIN LOGIN\r\n")),
        Err(ClientError::AuthWithoutTls)
    );
}

#[test]
fn n125_login_prompts_with_unusual_text() {
    let creds = Credentials::new("me@163.com", "CODE");
    let mut c = ClientSession::new(config(ClientTls::Implicit, Some(creds)));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    let out = sent(
        c.handle_reply(reply("250-x\r\n250 AUTH LOGIN\r\n"))
            .unwrap(),
    );
    assert_eq!(out, "AUTH LOGIN\r\n");
    // Prompts that are not "Username:" / "Password:": the order is what counts.
    assert_eq!(
        sent(c.handle_reply(reply("334 dXNlcm5hbWU6\r\n")).unwrap()),
        "bWVAMTYzLmNvbQ==\r\n"
    );
    assert_eq!(
        sent(c.handle_reply(reply("334 something else\r\n")).unwrap()),
        "Q09ERQ==\r\n"
    );
    assert_eq!(
        c.handle_reply(reply("235 ok\r\n")).unwrap(),
        ClientEvent::Ready
    );
}

#[test]
fn n125_auth_lines_are_marked_secret() {
    let creds = Credentials::new("me@163.com", "CODE");
    let mut c = ClientSession::new(config(ClientTls::Implicit, Some(creds)));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    let ClientEvent::Send(out) = c
        .handle_reply(reply("250-x\r\n250 AUTH LOGIN\r\n"))
        .unwrap()
    else {
        panic!()
    };
    assert!(
        !out[0].is_secret(),
        "AUTH LOGIN without a response is not secret"
    );
    let ClientEvent::Send(out) = c.handle_reply(reply("334 VXNlcm5hbWU6\r\n")).unwrap() else {
        panic!()
    };
    assert!(out[0].is_secret());
}

#[test]
fn long_credentials_go_as_a_continuation_not_an_initial_response() {
    let creds = Credentials::new("me@163.com", "x".repeat(600));
    let mut c = ClientSession::new(config(ClientTls::Implicit, Some(creds.clone())));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    assert_eq!(
        sent(
            c.handle_reply(reply("250-x\r\n250 AUTH PLAIN\r\n"))
                .unwrap()
        ),
        "AUTH PLAIN\r\n"
    );
    let out = sent(c.handle_reply(reply("334 \r\n")).unwrap());
    assert_eq!(
        smtp_wire::SaslData::decode_base64(out.trim_end()).unwrap(),
        creds.to_plain()
    );
}

#[test]
fn auth_failure_keeps_the_servers_reply() {
    let creds = Credentials::new("me@163.com", "WRONG");
    let mut c = ClientSession::new(config(ClientTls::Implicit, Some(creds)));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    c.handle_reply(reply("250-x\r\n250 AUTH PLAIN\r\n"))
        .unwrap();
    let err = c
        .handle_reply(reply("535 Error: authentication failed\r\n"))
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::AuthFailed(reply("535 Error: authentication failed\r\n"))
    );
    assert!(!err.is_transient());
}

#[test]
fn n126_odd_success_texts_are_judged_by_code() {
    let mut c = ClientSession::new(config(ClientTls::None, None));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    c.handle_reply(reply("250 x\r\n")).unwrap();
    let from = ReversePath::Mailbox(smtp_wire::Mailbox::parse("me@163.com").unwrap());
    let to = ForwardPath::Mailbox(smtp_wire::Mailbox::parse("you@qq.com").unwrap());
    c.mail(from, MailParams::default()).unwrap();
    c.rcpt(to, RcptParams::default()).unwrap();
    c.data().unwrap();
    assert_eq!(
        c.handle_reply(reply("250 Mail OK\r\n")).unwrap(),
        ClientEvent::Mail(reply("250 Mail OK\r\n"))
    );
    assert!(matches!(
        c.handle_reply(reply("250 OK.\r\n")).unwrap(),
        ClientEvent::Rcpt { index: 0, .. }
    ));
    let ClientEvent::Data(r) = c
        .handle_reply(reply("354 End data with <CR><LF>.<CR><LF>.\r\n"))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.code, 354);
    c.data_sent().unwrap();
    let ClientEvent::Message(r) = c.handle_reply(reply("250 OK: queued as.\r\n")).unwrap() else {
        panic!()
    };
    assert!(r.is_positive());
    assert_eq!(r.text(), "OK: queued as.");
}

#[test]
fn pipelined_envelope_replies_come_back_tagged_in_order() {
    let mut c = ClientSession::new(config(ClientTls::None, None));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    c.handle_reply(reply("250-x\r\n250 PIPELINING\r\n"))
        .unwrap();
    assert!(c.can_pipeline());
    let mb = |s: &str| smtp_wire::Mailbox::parse(s).unwrap();
    let mut out = vec![
        c.mail(
            ReversePath::Mailbox(mb("a@x.example")),
            MailParams::default(),
        )
        .unwrap(),
    ];
    for r in ["b@y.example", "c@y.example"] {
        out.push(
            c.rcpt(ForwardPath::Mailbox(mb(r)), RcptParams::default())
                .unwrap(),
        );
    }
    out.push(c.data().unwrap());
    assert_eq!(
        wire(&out),
        "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n"
    );
    assert_eq!(c.outstanding(), 4);
    assert!(matches!(
        c.handle_reply(reply("250 ok\r\n")).unwrap(),
        ClientEvent::Mail(_)
    ));
    assert!(matches!(
        c.handle_reply(reply("550 Invalid User\r\n")).unwrap(),
        ClientEvent::Rcpt { index: 0, reply } if reply.code == 550
    ));
    assert!(matches!(
        c.handle_reply(reply("250 ok\r\n")).unwrap(),
        ClientEvent::Rcpt { index: 1, .. }
    ));
    assert!(matches!(
        c.handle_reply(reply("354 go\r\n")).unwrap(),
        ClientEvent::Data(_)
    ));
    assert_eq!(
        c.handle_reply(reply("250 extra\r\n")),
        Err(ClientError::UnexpectedReply(reply("250 extra\r\n")))
    );
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let mut c = ClientSession::new(config(ClientTls::None, None));
    c.handle_reply(reply("220 x\r\n")).unwrap();
    assert_eq!(
        sent(
            c.handle_reply(reply("502 5.5.1 command not implemented\r\n"))
                .unwrap()
        ),
        "HELO relay.test\r\n"
    );
    assert_eq!(
        c.handle_reply(reply("250 x\r\n")).unwrap(),
        ClientEvent::Ready
    );
    assert!(!c.can_pipeline());
}

#[test]
fn n127_greeting_421_is_a_transient_error() {
    let mut c = ClientSession::new(config(ClientTls::None, None));
    let err = c
        .handle_reply(reply("421 HL:ICC 220.181.12.17 too many connections\r\n"))
        .unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("HL:ICC"));
}

#[test]
fn commands_before_ready_are_refused() {
    let mut c = ClientSession::new(config(ClientTls::None, None));
    assert_eq!(c.data(), Err(ClientError::NotReady));
    assert_eq!(c.quit(), Err(ClientError::NotReady));
}

#[test]
fn n130_multiline_and_empty_text_replies() {
    let r = reply("250-first\r\n250-\r\n250 last\r\n");
    assert_eq!(r.lines, ["first", "", "last"]);
    assert_eq!(reply("334 \r\n").lines, [""]);
    let quit = Command::Quit;
    assert_eq!(quit.to_bytes(), b"QUIT\r\n");
}
