//! The persona's policy: what 163 (or qq, or the sink) answers to AUTH, MAIL, RCPT and the
//! message (its rules, quotas, bans, error catalogue), and how it keeps what it accepted.

use super::*;

impl Session {
    /// A persona text; one that carries a transaction id gets a fresh one (163 gives every
    /// error its own, persona-163 4.3), and the time now.
    pub(super) fn text(&mut self, template: &str) -> Verdict {
        if template.contains("{transid}") || template.contains("{suffix}") {
            let n = self.shared.next_message.fetch_add(1, Ordering::Relaxed);
            self.vars.transid = store::transid(&mut self.rng, n);
            self.vars.ts = chrono::Utc::now().timestamp();
        }
        Verdict::Reply(self.shared.config.persona.text(template, &self.vars))
    }

    /// What this listener does with an unknown local recipient.
    pub(super) fn unknown_recipient_rule(&self) -> UnknownRecipient {
        let rules = &self.shared.config.persona.rules;
        match rules.unknown_recipient_implicit_tls {
            Some(rule) if self.implicit_tls => rule,
            _ => rules.unknown_recipient,
        }
    }

    pub(super) fn refuse(&self, kind: ReplyKind) -> Verdict {
        Verdict::Reply(self.conn.session().reply(kind))
    }

    pub(super) fn user(&self, address: &str) -> Option<&User> {
        self.shared
            .config
            .users
            .iter()
            .find(|u| u.address.eq_ignore_ascii_case(address))
    }

    /// The persona's policy for one decision.
    pub(super) async fn policy(&mut self, d: Decision) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let texts = &persona.texts;
        match d {
            Decision::Authenticate(c) => {
                if persona.rules.plaintext_auth == PlaintextAuth::RefuseAfterPassword && !self.tls {
                    self.close_after_write = true;
                    return self.text(&texts.plaintext_auth_refused);
                }
                if persona.rules.auth == AuthRule::Any {
                    return Verdict::Accept;
                }
                let account = c.username.to_lowercase();
                let barred = self
                    .shared
                    .state()
                    .account_bans
                    .get(&account)
                    .is_some_and(|until| *until > self.shared.now());
                if barred {
                    return self.text(&texts.auth_account_banned);
                }
                match self.user(&c.username) {
                    Some(u) if u.code == c.secret && !u.smtp => {
                        self.text(&texts.auth_no_permission)
                    }
                    Some(u) if u.code == c.secret => {
                        let mut st = self.shared.state();
                        st.auth_failures.remove(&self.peer.ip());
                        st.account_failures.remove(&account);
                        Verdict::Accept
                    }
                    _ => self.auth_failure(&account),
                }
            }
            Decision::Mail { from, .. } => self.mail_policy(&from),
            Decision::Rcpt { to, .. } => self.rcpt_policy(&to),
            Decision::BeginData => Verdict::Accept,
            Decision::Deliver(env) => self.deliver(env).await,
        }
    }

    pub(super) fn auth_failure(&mut self, account: &str) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let ip = self.peer.ip();
        let now = self.shared.now();
        let mut st = self.shared.state();
        let limits = self.shared.limits();
        let ban = Duration::from_secs(limits.ban_minutes * 60);
        // Bounded: names an attacker makes up do not grow these maps without end.
        if st.account_failures.len() >= 10_000 {
            st.account_failures.clear();
        }
        if st.account_bans.len() >= 10_000 {
            st.account_bans.retain(|_, until| *until > now);
        }
        let per_account = st.account_failures.entry(account.to_string()).or_insert(0);
        *per_account += 1;
        let account_barred = limits
            .auth_failures_per_account
            .is_some_and(|max| *per_account >= max);
        if account_barred {
            st.account_failures.remove(account);
            st.account_bans.insert(account.to_string(), now + ban);
        }
        let failures = st.auth_failures.entry(ip).or_insert(0);
        *failures += 1;
        if let Some(max) = limits.auth_failures_before_ban
            && *failures >= max
        {
            st.auth_failures.remove(&ip);
            st.bans.insert(ip, now + ban);
            drop(st);
            self.close_after_write = true;
            return self.text(&persona.texts.auth_ip_banned);
        }
        drop(st);
        if account_barred {
            return self.text(&persona.texts.auth_account_banned);
        }
        self.refuse(ReplyKind::AuthFailed)
    }

    pub(super) fn mail_policy(&mut self, from: &ReversePath) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let texts = &persona.texts;
        let authed = self.conn.session().authenticated().map(str::to_string);
        let is_user = |m: &smtp_wire::Mailbox| {
            authed
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(&m.to_string()))
        };
        match persona.rules.sender {
            SenderRule::Any => {}
            SenderRule::Coremail => match (authed.is_some(), from) {
                (false, ReversePath::Mailbox(m)) if persona.is_local(&m.domain().to_string()) => {
                    return self.text(&texts.mail_auth_required_local);
                }
                (false, _) => return self.text(&texts.mail_auth_required_foreign),
                (true, ReversePath::Null) => return self.text(&texts.mail_null_sender),
                (true, ReversePath::Mailbox(m)) if !is_user(m) => {
                    return self.text(&texts.mail_not_user);
                }
                _ => {}
            },
            SenderRule::Qq => match (authed.is_some(), from) {
                (false, _) => return self.text(&texts.mail_auth_required_local),
                (true, ReversePath::Mailbox(m)) if is_user(m) => {}
                (true, _) => return self.text(&texts.mail_not_user),
            },
        }
        let limits = self.shared.limits();
        if limits
            .messages_per_connection
            .is_some_and(|max| self.messages_here >= max)
        {
            return self.text(&texts.too_many_messages);
        }
        if limits.sender_per_15min.is_none() && limits.sender_per_day.is_none() {
            return Verdict::Accept;
        }
        let sender = from.to_string().to_lowercase();
        let (last_15, last_day) = self.sent_counts(&sender, |_| 1);
        if limits.sender_per_15min.is_some_and(|max| last_15 >= max) {
            return self.text(&texts.sender_quota_15min);
        }
        if limits.sender_per_day.is_some_and(|max| last_day >= max) {
            return self.text(&texts.sender_quota_day);
        }
        Verdict::Accept
    }

    /// (last 15 minutes, last day) sums of `f` over this sender's accepted messages.
    pub(super) fn sent_counts(&self, sender: &str, f: impl Fn(u32) -> u32) -> (u32, u32) {
        let now = self.shared.now();
        let mut st = self.shared.state();
        let Some(log) = st.sent.get_mut(sender) else {
            return (0, 0);
        };
        while log
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(86_400))
        {
            log.pop_front();
        }
        let day = log.iter().map(|(_, n)| f(*n)).sum();
        let quarter = log
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= Duration::from_secs(900))
            .map(|(_, n)| f(*n))
            .sum();
        (quarter, day)
    }

    pub(super) fn rcpt_policy(&mut self, to: &ForwardPath) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let texts = &persona.texts;
        let envelope = self.conn.session().envelope();
        let limits = self.shared.limits();
        if envelope.rcpts.len() >= limits.max_recipients {
            return self.text(&texts.rcpt_too_many);
        }
        if self.unknown_recipient_rule() == UnknownRecipient::Rcpt && self.is_unknown_local(to) {
            return self.text(&texts.rcpt_unknown_user);
        }
        if limits.recipients_per_15min.is_none() && limits.recipients_per_day.is_none() {
            return Verdict::Accept;
        }
        let sender = envelope
            .from
            .as_ref()
            .map(|f| f.to_string().to_lowercase())
            .unwrap_or_default();
        let pending = envelope.rcpts.len() as u32;
        let (last_15, last_day) = self.sent_counts(&sender, |n| n);
        if limits
            .recipients_per_15min
            .is_some_and(|max| last_15 + pending >= max)
        {
            return self.text(&texts.rcpt_quota_15min);
        }
        if limits
            .recipients_per_day
            .is_some_and(|max| last_day + pending >= max)
        {
            return self.text(&texts.rcpt_quota_day);
        }
        Verdict::Accept
    }

    pub(super) fn is_unknown_local(&self, to: &ForwardPath) -> bool {
        match to.mailbox() {
            Some(m) => {
                self.shared.config.persona.is_local(&m.domain().to_string())
                    && self.user(&m.to_string()).is_none()
            }
            None => false,
        }
    }

    pub(super) async fn deliver(&mut self, env: smtp_wire::Envelope) -> Verdict {
        let shared = self.shared.clone();
        let persona = &shared.config.persona;
        let texts = &persona.texts;
        let message = std::mem::take(&mut self.message);
        let raw_file = self.save_raw().await;
        if self.unknown_recipient_rule() == UnknownRecipient::EndOfData
            && env.rcpts.iter().any(|(r, _)| self.is_unknown_local(r))
        {
            return self.text(&texts.rcpt_unknown_user);
        }
        let sender = env
            .from
            .as_ref()
            .and_then(|f| f.mailbox())
            .map(|m| m.to_string())
            .unwrap_or_default();
        if let Some(refusal) = self.content_refusal(&message, &sender) {
            return refusal;
        }

        let n = self.shared.next_message.fetch_add(1, Ordering::Relaxed);
        let mut vars = self.vars.clone();
        vars.transid = store::transid(&mut self.rng, n);
        vars.ts = chrono::Utc::now().timestamp();
        let reply = persona.text(&texts.message_accepted, &vars);
        let helo = self.conn.session().helo().unwrap_or("unknown").to_string();
        let (eml, layout) = store::delivered_copy(
            persona.delivered.headers,
            &message,
            &Trace {
                helo: &helo,
                hostid: &vars.hostid,
                transid: &vars.transid,
                client_ip: &vars.ip,
                sender: &sender,
                domain: persona
                    .local_domains
                    .first()
                    .map(String::as_str)
                    .unwrap_or(""),
            },
        );
        if let Some(observer) = &shared.config.observer {
            (observer.0)(&message);
        }
        if shared.config.tally_load
            && let Some(stamp) = crate::loadstamp::read(&message)
        {
            shared
                .load
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(&stamp);
        }
        let mut received = Received {
            id: vars.transid.clone(),
            mail_from: env
                .from
                .as_ref()
                .map(|f| f.to_string())
                .unwrap_or_else(|| "<>".into()),
            rcpt_to: env.rcpts.iter().map(|(r, _)| path_text(r)).collect(),
            client: self.peer,
            session: self.transcript.id,
            helo: self.conn.session().helo().map(str::to_string),
            tls: self.tls,
            auth: self.conn.session().authenticated().map(str::to_string),
            size: env.size,
            reply: reply.to_string(),
            received_at: chrono::Utc::now().to_rfc3339(),
            files: Vec::<PathBuf>::new(),
            raw_file,
            layout,
            content: Arc::new(if persona.rules.keep_messages {
                message
            } else {
                Vec::new()
            }),
        };
        if persona.rules.keep_messages
            && let Err(e) =
                store::write_message(&self.shared.config.data_dir, &mut received, &eml).await
        {
            self.note(&format!("* storage error: {e}"));
            return Verdict::Reply(Reply::plain(
                451,
                "Requested action aborted: local error in processing",
            ));
        }
        self.messages_here += 1;
        self.keep(received);
        Verdict::Reply(reply)
    }

    /// What the persona refuses in the content itself: a From header that is not the sender
    /// (163's `554 DT:SUM`), spam words or subjects.
    pub(super) fn content_refusal(&mut self, message: &[u8], sender: &str) -> Option<Verdict> {
        let persona = &self.shared.config.persona;
        let texts = &persona.texts;
        if persona.rules.header_from_must_match {
            let from = store::header_value(message, "From").map(|v| store::header_address(&v));
            if !from.is_some_and(|f| f.eq_ignore_ascii_case(sender)) {
                let text = texts.header_from_mismatch.clone();
                return Some(self.text(&text));
            }
        }
        let spam = persona
            .rules
            .spam_words
            .iter()
            .any(|w| memchr::memmem::find(message, w.as_bytes()).is_some())
            || (!persona.rules.spam_subjects.is_empty() && {
                let subject = decoded_subject(message);
                persona
                    .rules
                    .spam_subjects
                    .iter()
                    .any(|w| contains_word(&subject, w))
            });
        if spam {
            let text = texts.spam.clone();
            return Some(self.text(&text));
        }
        None
    }

    /// An accepted message into the fake's record (the history, and the sender's quota
    /// counts when the persona has quotas); waiters are told.
    pub(super) fn keep(&mut self, received: Received) {
        let limits = self.shared.limits();
        let quotas = limits.sender_per_15min.is_some()
            || limits.sender_per_day.is_some()
            || limits.recipients_per_15min.is_some()
            || limits.recipients_per_day.is_some();
        let now = self.shared.now();
        {
            let mut st = self.shared.state();
            if quotas {
                st.sent
                    .entry(received.mail_from.to_lowercase())
                    .or_default()
                    .push_back((now, received.rcpt_to.len() as u32));
            }
            if st.received.len() >= self.shared.config.history.max(1) {
                st.received.pop_front();
            }
            // A copy for the page's list only when a page listens (a load run's sink has none).
            if self.shared.arrivals.receiver_count() > 0 {
                let _ = self.shared.arrivals.send(received.clone());
            }
            st.received.push_back(received);
            st.received_total += 1;
        }
        self.shared.received_notify.notify_waiters();
    }
}

/// The Subject as a reader sees it: RFC 2047 encoded words decoded (`=?GB2312?B?...?=` as
/// Foxmail sends them), by mail-parser; the raw header when it has none.
pub(super) fn decoded_subject(message: &[u8]) -> String {
    let head_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4);
    mail_parser::MessageParser::default()
        .parse_headers(&message[..head_end])
        .and_then(|m| m.subject().map(str::to_string))
        .or_else(|| store::header_value(message, "Subject"))
        .unwrap_or_default()
}

/// Whether `text` contains `word` (case-insensitive): as a whole word when `word` is ASCII
/// letters and digits ("test" in "Test mail", not in "attestation"), anywhere otherwise
/// ("测试" in "功能测试").
pub(super) fn contains_word(text: &str, word: &str) -> bool {
    let (text, word) = (text.to_lowercase(), word.to_lowercase());
    if word.is_empty() {
        return false;
    }
    if !word.chars().all(|c| c.is_ascii_alphanumeric()) {
        return text.contains(&word);
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
    text.match_indices(&word).any(|(i, w)| {
        !alnum(text[..i].chars().next_back()) && !alnum(text[i + w.len()..].chars().next())
    })
}

pub(super) fn path_text(p: &ForwardPath) -> String {
    match p {
        ForwardPath::Postmaster(s) => s.clone(),
        ForwardPath::Mailbox(m) => m.to_string(),
    }
}
