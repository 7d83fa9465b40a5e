//! Byte-exact persona checks over real sockets: the 163 banner, EHLO lines, AUTH prompts and
//! each error text of persona-163 section 10, and QQ's quirks. Transcripts are snapshotted
//! (insta) under the top-level `snapshots/`.

mod common;

use common::{Client, b64, config, normalize, start};

macro_rules! snapshot {
    ($name:expr, $value:expr) => {
        insta::with_settings!({
            snapshot_path => "../../snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!($name, $value);
        });
    };
}

async fn login(c: &mut fake_upstream::testing::Client, user: &str, code: &str) -> String {
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 dXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64(user)).await, "334 UGFzc3dvcmQ6");
    c.cmd(&b64(code)).await
}

#[tokio::test]
async fn session_163_happy_path_and_unknown_user() {
    let h = start(config("163", "happy163")).await;
    let mut c = Client::connect(&h).await;
    assert_eq!(
        c.reply().await.to_string(),
        "220 163.com Anti-spam GT for Coremail System (163com[20141201])"
    );
    let ehlo = c.cmd("EHLO client.example").await;
    let token_free = normalize(&ehlo);
    assert_eq!(
        token_free,
        "250-mail\n250-AUTH LOGIN PLAIN XOAUTH2\n250-AUTH=LOGIN PLAIN XOAUTH2\n250-coremail <token>\n250-STARTTLS\n250-ID\n250 8BITMIME\n"
    );
    assert_eq!(
        login(&mut c, "alice@163.com", "ALICEAUTHCODE163").await,
        "235 Authentication successful"
    );
    assert_eq!(c.cmd("MAIL FROM:<alice@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:<nobody@163.com>").await, "550 Invalid User");
    assert_eq!(c.cmd("RCPT TO:<bob@163.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO: <friend@qq.com>").await, "250 Mail OK");
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.send_raw(b"From: alice@163.com\r\nTo: bob@163.com\r\nSubject: hello\r\n\r\nHi Bob.\r\n..a dot line\r\n.\r\n")
        .await;
    let queued = c.reply().await.to_string();
    assert!(
        queued.starts_with("250 Mail OK queued as gzga-smtp-mtada-g0-3,_____w"),
        "{queued}"
    );
    assert_eq!(c.cmd("QUIT").await, "221 Bye");
    assert!(c.closed().await);

    let got = h
        .wait_for(1, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got[0].rcpt_to, ["bob@163.com", "friend@qq.com"]);
    assert_eq!(got[0].auth.as_deref(), Some("alice@163.com"));
    assert_eq!(
        got[0].content.as_slice(),
        b"From: alice@163.com\r\nTo: bob@163.com\r\nSubject: hello\r\n\r\nHi Bob.\r\n.a dot line\r\n"
    );
    // The delivered copy on disk, with the persona's headers, maps back to the message.
    let eml = std::fs::read(&got[0].files[0]).unwrap();
    assert!(
        eml.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=163.com;\r\n")
    );
    assert_eq!(got[0].layout.original(&eml), got[0].content.as_slice());
    assert!(got[0].files[0].with_extension("json").exists());
    assert!(
        got[0].files[0]
            .to_string_lossy()
            .contains("mailboxes/bob@163.com/")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn error_catalogue_163_section_10() {
    let h = start(config("163", "errors163")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    assert_eq!(c.cmd("HELO client.example").await, "250 OK");
    // MAIL without AUTH: local sender, then foreign sender.
    let local = c.cmd("MAIL FROM:<alice@163.com>").await;
    assert!(
        local.starts_with("553 authentication is required,163 gzga-smtp-mtada-g0-3,_____w"),
        "{local}"
    );
    let foreign = c.cmd("MAIL FROM:<someone@example.com>").await;
    assert!(
        foreign.starts_with("553 Local user only,163 gzga-smtp-mtada-g0-3,"),
        "{foreign}"
    );
    assert_eq!(c.cmd("HELP").await, "502 Error: command not implemented");
    assert_eq!(c.cmd("XYZZY").await, "502 Error: command not implemented");
    assert_eq!(c.cmd("DATA now").await, "500 Error: bad syntax");
    // AUTH LOGIN after HELO, wrong code.
    assert_eq!(
        login(&mut c, "alice@163.com", "WRONG").await,
        "535 Error: authentication failed"
    );
    // An account without SMTP access.
    assert_eq!(
        login(&mut c, "carol@163.com", "CAROLAUTHCODE163").await,
        "550 User has no permission"
    );
    // AUTH PLAIN without initial response: "334 " exactly.
    c.send("AUTH PLAIN").await;
    assert_eq!(c.reply().await.to_bytes(), b"334 \r\n");
    assert_eq!(
        c.cmd(&b64("\0alice@163.com\0ALICEAUTHCODE163")).await,
        "235 Authentication successful"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<bob@163.com>").await,
        "553 Mail from must equal authorized user"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<>").await,
        "553 Requested action not taken: NULL sender is not allowed"
    );
    // Header From not the envelope sender: DT:SUM after the data.
    assert_eq!(c.cmd("MAIL FROM:alice@163.com").await, "250 Mail OK");
    assert_eq!(c.cmd("RCPT TO:bob@163.com").await, "250 Mail OK");
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.send_raw(b"From: boss@company.com\r\nSubject: hi\r\n\r\nx\r\n.\r\n")
        .await;
    let sum = c.reply().await.to_string();
    assert!(
        sum.starts_with("554 DT:SUM 163 gzga-smtp-mtada-g0-3,"),
        "{sum}"
    );
    // Spam: the client IP is echoed.
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    c.cmd("DATA").await;
    c.send_raw(b"From: alice@163.com\r\nSubject: test\r\n\r\nx\r\n.\r\n")
        .await;
    let spm = c.reply().await.to_string();
    assert!(
        spm.starts_with("554 DT:SPM 163 gzga-smtp-mtada-g0-3,_____w"),
        "{spm}"
    );
    assert!(spm.contains(",please see http://mail.163.com/help/help_spam_16.htm?ip=127.0.0.1&hostid=gzga-smtp-mtada-g0-3&time="), "{spm}");
    assert_eq!(c.cmd("QUIT").await, "221 Bye");
    h.shutdown().await;
    assert!(h_received_none(&h));
    let transcripts = h_transcripts(&h);
    snapshot!("163_error_catalogue", normalize(&transcripts[0].text()));
}

fn h_received_none(h: &fake_upstream::Handle) -> bool {
    h.received().is_empty()
}

fn h_transcripts(h: &fake_upstream::Handle) -> Vec<fake_upstream::Transcript> {
    h.transcripts()
}

#[tokio::test]
async fn transcript_163_is_snapshotted_with_secrets_redacted() {
    let h = start(config("163", "snap163")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            b64("\0alice@163.com\0ALICEAUTHCODE163")
        ))
        .await,
        "235 Authentication successful"
    );
    c.cmd("MAIL FROM:<alice@163.com>").await;
    c.cmd("RCPT TO:<bob@163.com>").await;
    c.cmd("DATA").await;
    c.send_raw(b"From: alice@163.com\r\nSubject: snapshot\r\n\r\nbody\r\n.\r\n")
        .await;
    c.reply().await;
    c.cmd("QUIT").await;
    c.closed().await;
    let t = h.transcripts();
    let text = t[0].text();
    assert!(!text.contains("ALICEAUTHCODE163"));
    assert!(!text.contains(&b64("\0alice@163.com\0ALICEAUTHCODE163")));
    snapshot!("163_session", normalize(&text));
    h.shutdown().await;
}

#[tokio::test]
async fn qq_quirks() {
    let h = start(config("qq", "qq")).await;
    let mut c = Client::connect(&h).await;
    assert_eq!(
        c.reply().await.to_string(),
        "220 newxmesmtplogicsvrsza5.qq.com XMail Esmtp QQ Mail Server."
    );
    // HELO answered with an EHLO-style multi-line reply.
    assert_eq!(
        c.cmd("HELO x").await,
        "250-newxmesmtplogicsvrsza9.qq.com-9.21.152.27-23666742\r\n250-SIZE 73400320\r\n250 OK"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<alice@qq.com>").await,
        "503 Error: need EHLO and AUTH first !"
    );
    // On the plain listener AUTH fails after the password, and the connection is closed.
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice@qq.com")).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd(&b64("ALICEAUTHCODE163")).await,
        "530 Login fail. A secure connection is requiered(such as ssl). More information at http://service.mail.qq.com/cgi-bin/help?id=28"
    );
    assert!(c.closed().await);

    // Over implicit TLS: the happy path and QQ's texts.
    let mut c = Client::connect_tls(&h).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO x").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("250-AUTH=LOGIN\r\n"), "{ehlo}");
    assert_eq!(
        c.cmd(&format!(
            "AUTH PLAIN {}",
            b64("\0alice@qq.com\0ALICEAUTHCODE163")
        ))
        .await,
        "235 Authentication successful"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<bob@qq.com>").await,
        "501 mail from address must be same as authorization user"
    );
    assert_eq!(c.cmd("MAIL FROM:<alice@qq.com>").await, "250 OK.");
    assert_eq!(c.cmd("RCPT TO:<bob@qq.com>").await, "250 OK");
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>.");
    c.send_raw(b"Subject: hi\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.reply().await.to_string(), "250 OK: queued as.");
    // An unknown local mailbox is refused after the data, not at RCPT.
    c.cmd("MAIL FROM:<alice@qq.com>").await;
    assert_eq!(c.cmd("RCPT TO:<nobody@qq.com>").await, "250 OK");
    c.cmd("DATA").await;
    c.send_raw(b"Subject: hi\r\n\r\nx\r\n.\r\n").await;
    assert_eq!(c.reply().await.to_string(), "550 Mailbox not found");
    assert_eq!(c.cmd("QUIT").await, "221 Bye.");
    assert_eq!(h.received().len(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn starttls_on_163_discards_pipelined_plaintext_and_keeps_the_quirk() {
    let h = start(config("163", "starttls163")).await;
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    // STARTTLS with a pipelined RSET: the RSET must never be answered.
    c.send_raw(b"STARTTLS\r\nRSET\r\n").await;
    assert_eq!(c.reply().await.to_string(), "220 Ready to start TLS");
    drop(c);
    // A clean STARTTLS: inside TLS, 163 still lists STARTTLS (the quirk), and a new EHLO is
    // needed.
    let mut c = Client::connect(&h).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    c.starttls(h.ca_pem()).await;
    // RFC 3207 4.2: everything before the handshake is forgotten, EHLO comes first.
    assert_eq!(
        c.cmd("MAIL FROM:<alice@163.com>").await,
        "503 Error: bad sequence of commands"
    );
    let ehlo = c.cmd("EHLO x").await;
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    c.cmd("QUIT").await;
    h.shutdown().await;
    let t = h.transcripts();
    let injected = t
        .iter()
        .find(|t| t.text().contains("plaintext discarded"))
        .expect("the session with the injected RSET");
    assert!(!injected.text().contains("C: RSET"), "{}", injected.text());
}
