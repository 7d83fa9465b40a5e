//! Playing a scenario's steps: what the client sends, the replies it expects (patterns,
//! alternatives), the fakes' clocks and faults changed between steps.

use super::*;

/// `*` matches any run of characters (line breaks included); everything else is literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

pub(super) fn show_expect(e: &ExpectReply) -> String {
    if !e.or.is_empty() {
        return e
            .lines
            .iter()
            .chain(&e.or)
            .map(|(CodePattern(c), t)| match t {
                Some(t) => format!("{c} {t}"),
                None => c.clone(),
            })
            .collect::<Vec<_>>()
            .join(" or ");
    }
    e.lines
        .iter()
        .enumerate()
        .map(|(i, (CodePattern(c), t))| {
            let sep = if i + 1 == e.lines.len() { ' ' } else { '-' };
            match t {
                Some(t) => format!("{c}{sep}{t}"),
                None => c.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Whether `reply` is what `e` describes: one pattern matches the code and the whole text
/// (lines joined with a line break); several must match line by line.
pub fn reply_matches(e: &ExpectReply, reply: &Reply) -> bool {
    let lines = wire_lines(reply);
    let one = |(code, text): &crate::scenario::ReplyLinePattern| {
        code.matches(reply.code) && text.as_ref().is_none_or(|t| glob(t, &lines.join("\n")))
    };
    if e.or.iter().any(one) {
        return true;
    }
    match e.lines.as_slice() {
        [(code, text)] => {
            code.matches(reply.code) && text.as_ref().is_none_or(|t| glob(t, &lines.join("\n")))
        }
        many => {
            many.len() == lines.len()
                && many.iter().zip(&lines).all(|((code, text), line)| {
                    code.matches(reply.code) && text.as_ref().is_none_or(|t| glob(t, line))
                })
        }
    }
}

pub(super) async fn drive(sc: &Scenario, env: &Env, c: &mut Client) -> Result<(), String> {
    // A `within` waiting for the next step that talks to the relay.
    let mut within: Option<(Duration, usize)> = None;
    for step in &sc.steps {
        c.at_line = step.line;
        c.at_step = format!("{:?}", step.item).chars().take(80).collect();
        let at = |e: String| format!("line {}: {e}", step.line);
        if let Step::Within(d) = step.item {
            within = Some((d, step.line));
            continue;
        }
        let deadline = match step.item {
            Step::Send(_) | Step::Bdat { .. } | Step::Flush => None,
            _ => within.take(),
        };
        if !matches!(step.item, Step::Send(_) | Step::Bdat { .. }) {
            c.flush().await.map_err(at)?;
        }
        // After a close that a `drain` saw, what would talk to the relay is skipped.
        if c.closed_seen
            && c.conn.is_none()
            && matches!(
                step.item,
                Step::Auth { .. }
                    | Step::StartTls
                    | Step::Tls
                    | Step::Message(_)
                    | Step::GeneratedMessage(_)
                    | Step::BdatMessage { .. }
                    | Step::Quit
            )
        {
            c.note(format!(
                "* line {}: skipped, the relay had closed the connection",
                step.line
            ));
            continue;
        }
        let run = async { play(env, c, &step.item).await.map_err(at) };
        match deadline {
            None => run.await?,
            Some((limit, from)) => match tokio::time::timeout(limit, run).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(at(format!(
                        "not done within {} (`within` at line {from})",
                        crate::scenario::format_duration(limit)
                    )));
                }
            },
        }
    }
    c.flush()
        .await
        .map_err(|e| format!("at the end of the steps: {e}"))
}

/// One step, played: the client's bytes, a reply awaited and matched, a connection, TLS,
/// AUTH, a message, the fakes' clocks. An error says what went wrong, without the line.
async fn play(env: &Env, c: &mut Client, item: &Step) -> Result<(), String> {
    match item {
        Step::Within(_) => {}
        Step::Connect { tls } => connect(env, c, *tls).await?,
        Step::Send(bytes) => {
            c.command_sent(bytes);
            c.pending.extend_from_slice(bytes)
        }
        Step::Bdat { content, last } => c.bdat_chunk(content, *last),
        Step::BdatMessage { message, chunk } => bdat_message(env, c, message, *chunk).await?,
        Step::Flush => {}
        Step::Expect(e) => {
            let reply = c
                .read_reply()
                .await
                .map_err(|err| format!("expected {}, but {err}", show_expect(e)))?;
            if !reply_matches(e, &reply) {
                return Err(format!(
                    "expected {}, got {}",
                    show_expect(e),
                    reply.to_string().replace("\r\n", " / ")
                ));
            }
        }
        Step::Close => c.expect_close().await?,
        Step::Sleep(d) => tokio::time::sleep(*d).await,
        Step::AdvanceClock(d) => {
            for (_, fake) in &env.fakes {
                fake.advance_clock(*d);
            }
            c.note(format!(
                "* the upstream's clock moves {} ahead",
                crate::scenario::format_duration(*d)
            ));
        }
        Step::StartTls => {
            c.pending.extend_from_slice(b"STARTTLS\r\n");
            c.flush().await?;
            let r = c.read_reply().await?;
            if r.code != 220 {
                return Err(format!("expected 220 to STARTTLS, got {r}"));
            }
            c.handshake().await?;
        }
        Step::Tls => c.handshake().await?,
        Step::Auth {
            mechanism,
            user,
            secret,
        } => auth(c, mechanism, user, secret).await?,
        Step::Message(file) => message_file(env, c, file).await?,
        Step::GeneratedMessage(size) => {
            let content = generated_message(*size);
            c.pending.extend_from_slice(&stuff(&content));
            let n = c.events.len();
            c.flush().await?;
            c.events.truncate(n);
            c.note(format!("C: <generated message: {size} octets>"));
        }
        Step::Drain => c.drain().await?,
        Step::Shutdown => match &env.relay {
            Some(relay) => {
                relay.begin_shutdown();
                c.note("* the relay is told to shut down".into());
            }
            None => {
                return Err("shutdown needs smtp-relay (not an external relay)".into());
            }
        },
        Step::Quit => {
            c.pending.extend_from_slice(b"QUIT\r\n");
            c.flush().await?;
            let r = c.read_reply().await?;
            if r.code != 221 {
                return Err(format!("expected 221 to QUIT, got {r}"));
            }
            c.expect_close().await?;
        }
    }
    Ok(())
}

/// A new connection to the relay (the earlier one held open), implicit TLS when asked.
async fn connect(env: &Env, c: &mut Client, tls: bool) -> Result<(), String> {
    let addr = if tls {
        env.relay_tls_addr
            .ok_or_else(|| "this relay has no implicit-TLS listener".to_string())?
    } else {
        env.relay_addr
    };
    let tcp = tokio::time::timeout(STEP_WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if let Some(old) = c.conn.take() {
        c.held.push(old);
        c.note("* the earlier connection stays open".into());
    }
    c.conn = Some(Conn {
        io: Box::new(tcp),
        replies: ClientConnection::keeping_bare_line_ends(MAX_REPLY_LINE),
        eof: false,
    });
    c.connected();
    c.note(format!(
        "* connected to the relay{}",
        if tls { " (implicit TLS)" } else { "" }
    ));
    if tls {
        c.handshake().await?;
    }
    Ok(())
}

/// AUTH PLAIN in one line, or AUTH LOGIN in its three; the secrets redacted in the
/// transcript.
async fn auth(c: &mut Client, mechanism: &str, user: &str, secret: &str) -> Result<(), String> {
    let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
    let conn = c.conn()?;
    if mechanism == "plain" {
        let mut raw = vec![0u8];
        raw.extend_from_slice(user.as_bytes());
        raw.push(0);
        raw.extend_from_slice(secret.as_bytes());
        let line = format!("AUTH PLAIN {}\r\n", b64(&raw));
        write(conn, line.as_bytes()).await?;
        c.note("C: AUTH PLAIN <redacted>".into());
    } else {
        write(conn, b"AUTH LOGIN\r\n").await?;
        c.note("C: AUTH LOGIN".into());
        for (i, part) in [user, secret].iter().enumerate() {
            let r = c.read_reply().await?;
            if r.code != 334 {
                return Err(format!(
                    "AUTH LOGIN: expected 334 before the {}, got {r}",
                    if i == 0 { "user name" } else { "password" }
                ));
            }
            let conn = c.conn()?;
            write(conn, format!("{}\r\n", b64(part.as_bytes())).as_bytes()).await?;
            c.note("C: <redacted>".into());
        }
    }
    Ok(())
}

/// A message file's content (the scenario's messages/ first, then its own folder).
fn read_message(env: &Env, file: &Path) -> Result<Vec<u8>, String> {
    let path = if file.is_absolute() {
        file.to_path_buf()
    } else if env.messages_dir.join(file).exists() {
        env.messages_dir.join(file)
    } else {
        env.scenario_dir.join(file)
    };
    std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// A whole message in BDAT chunks (CRLF line ends, not dot-stuffed), in one write, noted as
/// one line.
async fn bdat_message(
    env: &Env,
    c: &mut Client,
    message: &MessageSource,
    chunk: Option<usize>,
) -> Result<(), String> {
    let (content, what) = match message {
        MessageSource::File(file) => (
            read_message(env, file)?,
            format!("message {}", file.display()),
        ),
        MessageSource::Generated(size) => (generated_message(*size), "generated message".into()),
    };
    let mut wire = Vec::with_capacity(content.len() + content.len() / 32);
    let mut encoder = smtp_wire::DataEncoder::for_chunks();
    encoder.encode(&content, &mut wire);
    encoder.finish(&mut wire);
    let pieces: Vec<&[u8]> = match chunk {
        Some(n) if !wire.is_empty() => wire.chunks(n).collect(),
        _ => vec![&wire[..]],
    };
    let n = pieces.len();
    for (i, piece) in pieces.iter().enumerate() {
        c.bdat_chunk(piece, i + 1 == n);
    }
    let at = c.events.len();
    c.flush().await?;
    c.events.truncate(at);
    c.note(format!(
        "C: <{what}: {} octets in {n} BDAT chunk{}{}>",
        wire.len(),
        if n == 1 { "" } else { "s" },
        chunk.map(|k| format!(" of {k}")).unwrap_or_default()
    ));
    Ok(())
}

/// A message from a file (the scenario's messages/ first), dot-stuffed, noted as one line.
async fn message_file(env: &Env, c: &mut Client, file: &Path) -> Result<(), String> {
    let content = read_message(env, file)?;
    let wire = stuff(&content);
    c.pending.extend_from_slice(&wire);
    let n = c.events.len();
    c.flush().await?;
    // One transcript line for the whole message, not one per line.
    c.events.truncate(n);
    c.note(format!(
        "C: <message {}: {} octets>",
        file.display(),
        content.len()
    ));
    Ok(())
}
