//! Personas as data: a TOML file holds the banner, the EHLO lines (quirks included), the reply
//! texts, the policy rules, the limits and the delivered-copy headers. `163`, `qq` and `sink`
//! ship in the crate (`personas/`); any other file can be given by path.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use smtp_wire::{Capabilities, Extension, Mechanism, Reply, ReplyBook, ReplyKind, ServerConfig};

use crate::error::Error;

const BUILTIN: [(&str, &str); 4] = [
    ("163", include_str!("../personas/163.toml")),
    ("qq", include_str!("../personas/qq.toml")),
    ("qq-mx", include_str!("../personas/qq-mx.toml")),
    ("sink", include_str!("../personas/sink.toml")),
];

/// The names of the shipped personas.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _)| *n)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Persona {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Domains whose mailboxes this server holds (its users live there).
    pub local_domains: Vec<String>,
    /// The server's name in standard replies.
    pub hostname: String,
    /// `{hostid}` in templates: the queue-id host part.
    #[serde(default)]
    pub hostid: String,
    /// The whole greeting line, code included.
    pub banner: String,
    /// The EHLO reply's first line (after `250-`).
    pub ehlo_first_line: String,
    /// Which entry of `ehlo` to use.
    pub era: String,
    /// Force a PIPELINING line in (true) or out (false) of the era's lines.
    #[serde(default)]
    pub pipelining: Option<bool>,
    /// EHLO keywords left out of the era's lines (`8BITMIME`, `SMTPUTF8`): a server that does
    /// not offer them, and refuses their parameters as such a server does.
    #[serde(default)]
    pub without: Vec<String>,
    pub starttls_after_tls: bool,
    pub enhanced_status_codes: bool,
    pub auth_after_helo: bool,
    /// EHLO keyword lines by era, in order, templated.
    pub ehlo: BTreeMap<String, Vec<String>>,
    /// Overrides of the protocol machine's replies, by ReplyKind name, templated.
    #[serde(default)]
    pub replies: BTreeMap<String, String>,
    #[serde(default)]
    pub texts: Texts,
    pub rules: Rules,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub delivered: Delivered,
}

/// The persona's own policy replies (templated).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Texts {
    pub auth_no_permission: String,
    pub auth_ip_banned: String,
    /// AUTH for an account that failed too often (from any address), while it is barred.
    pub auth_account_banned: String,
    /// For personas whose plain listener refuses AUTH: said after the password, then close.
    pub plaintext_auth_refused: String,
    pub mail_auth_required_local: String,
    pub mail_auth_required_foreign: String,
    pub mail_not_user: String,
    pub mail_null_sender: String,
    pub rcpt_unknown_user: String,
    pub rcpt_too_many: String,
    pub too_many_messages: String,
    pub sender_quota_15min: String,
    pub sender_quota_day: String,
    pub rcpt_quota_15min: String,
    pub rcpt_quota_day: String,
    pub too_many_connections: String,
    pub spam: String,
    pub header_from_mismatch: String,
    pub message_accepted: String,
}

impl Default for Texts {
    fn default() -> Self {
        let s = |t: &str| t.to_string();
        Texts {
            auth_no_permission: s("535 5.7.8 Authentication credentials invalid"),
            auth_ip_banned: s("421 4.7.0 Too many authentication failures from {ip}"),
            auth_account_banned: s("454 4.7.0 Too many authentication failures for this account"),
            plaintext_auth_refused: s("538 5.7.11 Encryption required"),
            mail_auth_required_local: s("530 5.7.0 Authentication required"),
            mail_auth_required_foreign: s("530 5.7.0 Authentication required"),
            mail_not_user: s("553 5.7.1 Sender address not owned by authenticated user"),
            mail_null_sender: s("550 5.7.1 Null sender not allowed"),
            rcpt_unknown_user: s("550 5.1.1 User unknown"),
            rcpt_too_many: s("452 4.5.3 Too many recipients"),
            too_many_messages: s("451 4.7.0 Too many messages on this connection"),
            sender_quota_15min: s("451 4.7.1 Sender rate limit"),
            sender_quota_day: s("451 4.7.1 Sender daily quota"),
            rcpt_quota_15min: s("451 4.7.1 Recipient rate limit"),
            rcpt_quota_day: s("451 4.7.1 Recipient daily quota"),
            too_many_connections: s("421 4.7.0 Too many connections from {ip}"),
            spam: s("554 5.7.1 Message refused as spam"),
            header_from_mismatch: s("554 5.7.1 Header From does not match the sender"),
            message_accepted: s("250 2.0.0 OK queued as {transid}"),
        }
    }
}

/// How AUTH credentials are judged.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthRule {
    /// Against the configured users and their authorization codes.
    Users,
    /// Anything is accepted (sink).
    Any,
}

/// Which senders MAIL FROM accepts.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SenderRule {
    /// 163: AUTH first (553 texts), the sender must be the authenticated user, no null sender.
    Coremail,
    /// QQ: AUTH first (503), the sender must be the authenticated user (501).
    Qq,
    /// Anyone.
    Any,
}

/// When a local recipient that is not a configured user is refused.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownRecipient {
    Rcpt,
    EndOfData,
    Accept,
}

/// AUTH on the plaintext listener.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PlaintextAuth {
    Allow,
    /// Ask for the password, then refuse with `texts.plaintext_auth_refused` and close (QQ
    /// on 587).
    RefuseAfterPassword,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub auth: AuthRule,
    pub sender: SenderRule,
    pub unknown_recipient: UnknownRecipient,
    /// On the implicit-TLS listener (the submission port, 465) instead of `unknown_recipient`,
    /// when it differs there (163: every recipient 250 at RCPT, persona-163 10.6).
    #[serde(default)]
    pub unknown_recipient_implicit_tls: Option<UnknownRecipient>,
    pub plaintext_auth: PlaintextAuth,
    /// Refuse a message whose header From is not the envelope sender (163's DT:SUM).
    pub header_from_must_match: bool,
    /// Text anywhere in the message that makes it spam.
    #[serde(default)]
    pub spam_words: Vec<String>,
    /// Words that make a message spam when its (decoded) Subject contains them: ASCII words
    /// whole, others anywhere; case-insensitive.
    #[serde(default)]
    pub spam_subjects: Vec<String>,
    /// Write accepted messages to the mailbox directory.
    pub keep_messages: bool,
}

impl Rules {
    /// Whether the policy reads the message (header From, spam words and subjects).
    pub fn inspects_content(&self) -> bool {
        self.header_from_must_match || !self.spam_words.is_empty() || !self.spam_subjects.is_empty()
    }
}

/// Limits, with the persona's codes in `texts`. `None`: no limit.
#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub messages_per_connection: Option<u32>,
    pub sender_per_15min: Option<u32>,
    pub sender_per_day: Option<u32>,
    pub recipients_per_15min: Option<u32>,
    pub recipients_per_day: Option<u32>,
    pub connections_per_ip: Option<u32>,
    pub auth_failures_before_ban: Option<u32>,
    /// Failed AUTHs for one account, from any address, before the account is barred from
    /// AUTH for `ban_minutes` (`texts.auth_account_banned`).
    pub auth_failures_per_account: Option<u32>,
    pub ban_minutes: u64,
    pub idle_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            messages_per_connection: None,
            sender_per_15min: None,
            sender_per_day: None,
            recipients_per_15min: None,
            recipients_per_day: None,
            connections_per_ip: None,
            auth_failures_before_ban: None,
            auth_failures_per_account: None,
            ban_minutes: 15,
            idle_timeout_secs: 300,
        }
    }
}

impl Limits {
    /// Sets one limit by its key (`max_recipients = 3`, `sender_per_15min = none`): for a
    /// scenario's `upstream-limit:` and run-time changes, without a whole persona file.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let count = |v: &str| -> Result<Option<u32>, String> {
            if v.eq_ignore_ascii_case("none") {
                return Ok(None);
            }
            v.parse::<u32>()
                .map(Some)
                .map_err(|_| format!("{key}: {v:?} is not a count (or none)"))
        };
        let number = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{key}: {v:?} is not a number"))
        };
        match key {
            "max_message_size" => self.max_message_size = number(value)?,
            "max_recipients" => self.max_recipients = number(value)? as usize,
            "messages_per_connection" => self.messages_per_connection = count(value)?,
            "sender_per_15min" => self.sender_per_15min = count(value)?,
            "sender_per_day" => self.sender_per_day = count(value)?,
            "recipients_per_15min" => self.recipients_per_15min = count(value)?,
            "recipients_per_day" => self.recipients_per_day = count(value)?,
            "connections_per_ip" => self.connections_per_ip = count(value)?,
            "auth_failures_before_ban" => self.auth_failures_before_ban = count(value)?,
            "auth_failures_per_account" => self.auth_failures_per_account = count(value)?,
            "ban_minutes" => self.ban_minutes = number(value)?,
            "idle_timeout_secs" => self.idle_timeout_secs = number(value)?,
            _ => {
                return Err(format!(
                    "{key:?} is not a limit (max_message_size, max_recipients, messages_per_connection, sender_per_15min, sender_per_day, recipients_per_15min, recipients_per_day, connections_per_ip, auth_failures_before_ban, auth_failures_per_account, ban_minutes, idle_timeout_secs)"
                ));
            }
        }
        Ok(())
    }

    /// `--no-limits`: every quota and rate limit off (message size and recipients per
    /// message stay: they are properties of a message, not of a rate).
    pub fn without_quotas(&mut self) {
        self.messages_per_connection = None;
        self.sender_per_15min = None;
        self.sender_per_day = None;
        self.recipients_per_15min = None;
        self.recipients_per_day = None;
        self.connections_per_ip = None;
        self.auth_failures_before_ban = None;
        self.auth_failures_per_account = None;
    }
}

/// Headers added to the delivered copy.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivered {
    pub headers: HeaderStyle,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeaderStyle {
    #[default]
    None,
    /// persona-163 section 7: Received and a DKIM-Signature stub prepended, X-CM-* appended.
    Coremail,
}

/// Values for the `{...}` placeholders of a persona's texts.
#[derive(Clone, Debug, Default)]
pub struct Vars {
    pub hostid: String,
    pub transid: String,
    pub ts: i64,
    pub ip: String,
    pub coremail: String,
}

impl Vars {
    pub fn expand(&self, template: &str) -> String {
        if !template.contains('{') {
            return template.to_string();
        }
        template
            .replace("{suffix}", "{hostid},{transid} {ts}")
            .replace("{hostid}", &self.hostid)
            .replace("{transid}", &self.transid)
            .replace("{ts}", &self.ts.to_string())
            .replace("{ip}", &self.ip)
            .replace("{coremail}", &self.coremail)
    }
}

/// Parses `"550 Invalid User"` or multi-line `"250-a\n250 b"` into a reply.
pub fn parse_reply(text: &str) -> Option<Reply> {
    let mut wire = text.replace('\n', "\r\n");
    wire.push_str("\r\n");
    Reply::parse(wire.as_bytes()).ok()
}

impl Persona {
    /// A shipped persona by name, or a TOML file by path.
    pub fn load(name_or_path: &str) -> Result<Persona, Error> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Persona::parse(text, &format!("built-in persona {name_or_path}"));
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            let names: Vec<_> = builtin_names().collect();
            return Err(Error::config(
                name_or_path,
                format!(
                    "no such persona: expected one of {} or a path to a persona TOML file",
                    names.join(", ")
                ),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Persona::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a persona file; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Persona, Error> {
        let persona: Persona =
            toml::from_str(text).map_err(|e| Error::config(origin, e.to_string()))?;
        persona.check(origin)?;
        Ok(persona)
    }

    /// Applies `[texts]` and `[replies]` overrides from a config file, then checks the result.
    pub fn apply_overrides(
        &mut self,
        texts: &BTreeMap<String, String>,
        replies: &BTreeMap<String, String>,
        origin: &str,
    ) -> Result<(), Error> {
        for (k, v) in texts {
            self.texts
                .set(k, v.clone())
                .map_err(|e| Error::config(origin, format!("texts.{k}: {e}")))?;
        }
        for (k, v) in replies {
            self.replies.insert(k.clone(), v.clone());
        }
        self.check(origin)
    }

    fn check(&self, origin: &str) -> Result<(), Error> {
        let bad = |key: String, what: &str| Error::config(origin, format!("{key}: {what}"));
        let probe = Vars {
            hostid: "h".into(),
            transid: "t".into(),
            ts: 0,
            ip: "127.0.0.1".into(),
            coremail: "c".into(),
        };
        let expect_reply =
            "expected a reply such as \"550 Invalid User\" (a code from 200 to 599, then text)";
        if parse_reply(&probe.expand(&self.banner)).is_none() {
            return Err(bad("banner".into(), expect_reply));
        }
        for (key, text) in &self.replies {
            if ReplyKind::from_name(key).is_none() {
                let names: Vec<_> = ReplyKind::ALL.iter().map(|k| k.name()).collect();
                return Err(bad(
                    format!("replies.{key}"),
                    &format!("unknown reply kind; expected one of {}", names.join(", ")),
                ));
            }
            if parse_reply(&probe.expand(text)).is_none() {
                return Err(bad(format!("replies.{key}"), expect_reply));
            }
        }
        for (key, text) in self.texts.entries() {
            if parse_reply(&probe.expand(text)).is_none() {
                return Err(bad(format!("texts.{key}"), expect_reply));
            }
        }
        if !self.ehlo.contains_key(&self.era) {
            let eras: Vec<_> = self.ehlo.keys().cloned().collect();
            return Err(bad(
                "era".into(),
                &format!(
                    "no [ehlo] entry {:?}; expected one of {}",
                    self.era,
                    eras.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The EHLO keyword lines in force (era, PIPELINING switch), templated.
    pub fn ehlo_lines(&self, vars: &Vars) -> Vec<String> {
        let mut lines: Vec<String> = self.ehlo[&self.era]
            .iter()
            .map(|l| vars.expand(l))
            .collect();
        let has = |ls: &Vec<String>| ls.iter().any(|l| l.eq_ignore_ascii_case("PIPELINING"));
        match self.pipelining {
            Some(true) if !has(&lines) => lines.insert(0, "PIPELINING".into()),
            Some(false) => lines.retain(|l| !l.eq_ignore_ascii_case("PIPELINING")),
            _ => {}
        }
        lines.retain(|l| {
            let keyword = l.split([' ', '=']).next().unwrap_or("");
            !self.without.iter().any(|w| w.eq_ignore_ascii_case(keyword))
        });
        lines
    }

    /// A reply from `texts`, templated.
    pub fn text(&self, template: &str, vars: &Vars) -> Reply {
        parse_reply(&vars.expand(template)).unwrap_or_else(|| {
            // Checked at load; a template that expands badly still answers something valid.
            Reply::plain(451, "Requested action aborted: local error in processing")
        })
    }

    /// The protocol session's configuration for one connection of this persona.
    pub fn server_config(&self, vars: &Vars, starttls: bool) -> ServerConfig {
        let lines = self.ehlo_lines(vars);
        let caps = Capabilities::from_ehlo(&Reply {
            code: 250,
            enhanced: None,
            lines: std::iter::once(self.ehlo_first_line.clone())
                .chain(lines.iter().cloned())
                .collect(),
        });
        let mut replies = ReplyBook::new();
        if let Some(banner) = parse_reply(&vars.expand(&self.banner)) {
            replies.set(ReplyKind::Greeting, banner);
        }
        for (key, text) in &self.replies {
            if let (Some(kind), Some(reply)) =
                (ReplyKind::from_name(key), parse_reply(&vars.expand(text)))
            {
                replies.set(kind, reply);
            }
        }
        let auth_mechanisms: Vec<Mechanism> = caps
            .auth_mechanisms()
            .into_iter()
            .filter(|m| matches!(m, Mechanism::Plain | Mechanism::Login | Mechanism::XOAuth2))
            .collect();
        let ehlo_lines = if starttls {
            lines
        } else {
            lines
                .into_iter()
                .filter(|l| !l.eq_ignore_ascii_case("STARTTLS"))
                .collect()
        };
        ServerConfig {
            hostname: self.hostname.clone(),
            greeting: String::new(),
            max_message_size: self.limits.max_message_size,
            // One more than the persona's limit, so that its own reply (RP:RCL) is given.
            max_recipients: self.limits.max_recipients.saturating_add(1),
            // The persona's own limits decide, as above.
            max_rcpt_commands: usize::MAX,
            max_errors: 20,
            // The persona's ban decides; the session never closes first.
            max_auth_failures: u32::MAX,
            pipelining: caps.pipelining(),
            eight_bit_mime: caps.eightbitmime(),
            smtputf8: caps.smtputf8(),
            chunking: caps.chunking(),
            binarymime: caps.chunking()
                && caps.extensions.contains(&smtp_wire::Extension::BinaryMime),
            dsn: caps.dsn(),
            starttls: starttls && caps.starttls(),
            auth_mechanisms,
            auth_requires_tls: false,
            auth_required: false,
            auth_after_helo: self.auth_after_helo,
            enhanced_status_codes: self.enhanced_status_codes,
            ehlo_lines: Some(ehlo_lines),
            ehlo_first_line: Some(self.ehlo_first_line.clone()),
            starttls_after_tls: self.starttls_after_tls,
            replies,
        }
    }

    /// Whether the banner, EHLO lines or replies hold `{...}` placeholders (then the session
    /// configuration is built per connection).
    pub fn has_templates(&self) -> bool {
        self.banner.contains('{')
            || self.ehlo[&self.era].iter().any(|l| l.contains('{'))
            || self.replies.values().any(|r| r.contains('{'))
    }

    /// Whether `domain` is one of this server's own.
    pub fn is_local(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Whether the offered extensions include `ext`.
    pub fn offers(&self, ext: &Extension) -> bool {
        self.ehlo[&self.era]
            .iter()
            .any(|l| &Extension::parse(l) == ext)
    }
}

impl Texts {
    /// Replaces one text by its key (`rcpt_unknown_user`, ...), for config-file overrides.
    pub fn set(&mut self, key: &str, value: String) -> Result<(), String> {
        let slot = match key {
            "auth_no_permission" => &mut self.auth_no_permission,
            "auth_ip_banned" => &mut self.auth_ip_banned,
            "auth_account_banned" => &mut self.auth_account_banned,
            "plaintext_auth_refused" => &mut self.plaintext_auth_refused,
            "mail_auth_required_local" => &mut self.mail_auth_required_local,
            "mail_auth_required_foreign" => &mut self.mail_auth_required_foreign,
            "mail_not_user" => &mut self.mail_not_user,
            "mail_null_sender" => &mut self.mail_null_sender,
            "rcpt_unknown_user" => &mut self.rcpt_unknown_user,
            "rcpt_too_many" => &mut self.rcpt_too_many,
            "too_many_messages" => &mut self.too_many_messages,
            "sender_quota_15min" => &mut self.sender_quota_15min,
            "sender_quota_day" => &mut self.sender_quota_day,
            "rcpt_quota_15min" => &mut self.rcpt_quota_15min,
            "rcpt_quota_day" => &mut self.rcpt_quota_day,
            "too_many_connections" => &mut self.too_many_connections,
            "spam" => &mut self.spam,
            "header_from_mismatch" => &mut self.header_from_mismatch,
            "message_accepted" => &mut self.message_accepted,
            _ => {
                let names: Vec<_> = self.entries().iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "unknown text; expected one of {}",
                    names.join(", ")
                ));
            }
        };
        *slot = value;
        Ok(())
    }

    fn entries(&self) -> [(&'static str, &str); 19] {
        [
            ("auth_no_permission", &self.auth_no_permission),
            ("auth_ip_banned", &self.auth_ip_banned),
            ("auth_account_banned", &self.auth_account_banned),
            ("plaintext_auth_refused", &self.plaintext_auth_refused),
            ("mail_auth_required_local", &self.mail_auth_required_local),
            (
                "mail_auth_required_foreign",
                &self.mail_auth_required_foreign,
            ),
            ("mail_not_user", &self.mail_not_user),
            ("mail_null_sender", &self.mail_null_sender),
            ("rcpt_unknown_user", &self.rcpt_unknown_user),
            ("rcpt_too_many", &self.rcpt_too_many),
            ("too_many_messages", &self.too_many_messages),
            ("sender_quota_15min", &self.sender_quota_15min),
            ("sender_quota_day", &self.sender_quota_day),
            ("rcpt_quota_15min", &self.rcpt_quota_15min),
            ("rcpt_quota_day", &self.rcpt_quota_day),
            ("too_many_connections", &self.too_many_connections),
            ("spam", &self.spam),
            ("header_from_mismatch", &self.header_from_mismatch),
            ("message_accepted", &self.message_accepted),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_personas_load() {
        for name in builtin_names() {
            let p = Persona::load(name).unwrap();
            assert_eq!(p.name, name);
        }
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let text = include_str!("../personas/163.toml").replace(
            "rcpt_unknown_user = \"550 Invalid User\"",
            "rcpt_unknown_user = \"Invalid User\"",
        );
        let e = Persona::parse(&text, "my.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("my.toml: texts.rcpt_unknown_user: expected a reply"),
            "{e}"
        );
        let e = Persona::parse("name = 3", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml: "), "{e}");
        assert!(e.contains("name"), "{e}");
        let text = include_str!("../personas/163.toml")
            .replace("[replies]", "[replies]\nnope = \"250 x\"");
        let e = Persona::parse(&text, "p.toml").unwrap_err().to_string();
        assert!(e.contains("replies.nope: unknown reply kind"), "{e}");
    }

    #[test]
    fn era_and_pipelining_switch() {
        let mut p = Persona::load("163").unwrap();
        let vars = Vars::default();
        assert!(!p.ehlo_lines(&vars).contains(&"PIPELINING".to_string()));
        p.pipelining = Some(true);
        assert_eq!(p.ehlo_lines(&vars)[0], "PIPELINING");
        p.era = "A".into();
        p.pipelining = Some(false);
        assert!(!p.ehlo_lines(&vars).iter().any(|l| l == "PIPELINING"));
    }

    #[test]
    fn templates_expand() {
        let v = Vars {
            hostid: "smtp14".into(),
            transid: "EsCowABHTDWOq8tdrd74HA--.185S2".into(),
            ts: 1573628815,
            ip: "61.141.75.133".into(),
            coremail: String::new(),
        };
        let p = Persona::load("163").unwrap();
        assert_eq!(
            p.text(&p.texts.spam, &v).to_string(),
            "554 DT:SPM 163 smtp14,EsCowABHTDWOq8tdrd74HA--.185S2 1573628815,please see http://mail.163.com/help/help_spam_16.htm?ip=61.141.75.133&hostid=smtp14&time=1573628815"
        );
    }
}
