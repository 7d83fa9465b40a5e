//! Configuration of a fake upstream: persona, listeners, data directory, users, limits, faults.
//! Built in code (tests, the relay's `up`) or read from a TOML file (`--config`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use smtp_wire::BareLineEnding;

use crate::error::Error;
use crate::faults::Fault;
use crate::persona::{Limits, Persona};
use crate::tls::TlsFiles;

/// A mailbox user with an authorization code (授权码).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub address: String,
    pub code: String,
    /// SMTP enabled for this account; when false, AUTH gets the persona's
    /// `auth_no_permission` reply (163: `550 User has no permission`).
    #[serde(default = "yes")]
    pub smtp: bool,
}

fn yes() -> bool {
    true
}

impl User {
    pub fn new(address: &str, code: &str) -> User {
        User {
            address: address.to_string(),
            code: code.to_string(),
            smtp: true,
        }
    }

    /// Parses `ADDR:CODE` as given to `--user`.
    pub fn parse_flag(s: &str) -> Result<User, Error> {
        match s.rsplit_once(':') {
            Some((a, c)) if a.contains('@') && !c.is_empty() => Ok(User::new(a, c)),
            _ => Err(Error::config(
                format!("--user {s}"),
                "expected ADDRESS:CODE, e.g. alice@163.com:ALICEAUTHCODE16",
            )),
        }
    }
}

/// The demo accounts of a persona's first local domain: `alice@` and `bob@`, with fixed
/// authorization codes, and `carol@` whose SMTP access is off.
pub fn demo_users(persona: &Persona) -> Vec<User> {
    let Some(domain) = persona.local_domains.first() else {
        return Vec::new();
    };
    vec![
        User::new(&format!("alice@{domain}"), "ALICEAUTHCODE163"),
        User::new(&format!("bob@{domain}"), "BOBAUTHCODE16300"),
        User {
            smtp: false,
            ..User::new(&format!("carol@{domain}"), "CAROLAUTHCODE163")
        },
    ]
}

/// Everything a fake upstream needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub persona: Persona,
    /// Plain listener with STARTTLS (like port 25). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Implicit TLS listener (like 465/994); `None` for none.
    pub listen_tls: Option<SocketAddr>,
    /// Mailboxes, raw DATA, transcripts and (by default) the TLS files go here.
    pub data_dir: PathBuf,
    pub users: Vec<User>,
    /// TLS files to use; `None`: `ca.pem`, `cert.pem`, `key.pem` in `data_dir`, generated on
    /// first start.
    pub tls_files: Option<TlsFiles>,
    pub faults: Vec<Fault>,
    /// Seed for probabilistic faults and generated ids: random for each start unless set
    /// (then runs repeat exactly; ids repeat too, so use a fresh data directory).
    pub seed: u64,
    /// Bare CR/LF in received DATA: normalised by default (what 163 appears to do).
    pub bare_line_endings: BareLineEnding,
    /// Record session transcripts (kept in memory for the handle). Off for the sink by
    /// default: a load run should not pay for them.
    pub transcripts: bool,
    /// With `transcripts`: also write one file per session under `data_dir/transcripts/`.
    pub write_transcripts: bool,
    /// How many accepted messages the handle remembers (the oldest are forgotten first; the
    /// count goes on).
    pub history: usize,
    /// Told of every accepted message as it is accepted (its content after dot-unstuffing),
    /// e.g. by a load generator checking integrity and end-to-end latency.
    pub observer: Option<Observer>,
    /// Tally the load generator's stamped messages per run (`GET /api/v1/load/<run>`): the
    /// content of each message is kept long enough to hash its body.
    pub tally_load: bool,
}

/// What an observer is called with: an accepted message's content.
pub type ObserverFn = dyn Fn(&[u8]) + Send + Sync;

/// A callback for each accepted message.
#[derive(Clone)]
pub struct Observer(pub std::sync::Arc<ObserverFn>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl Config {
    /// A persona's defaults: loopback on port 0 (both listeners), its demo users.
    pub fn new(persona: Persona, data_dir: impl Into<PathBuf>) -> Config {
        let users = demo_users(&persona);
        let transcripts = persona.rules.keep_messages;
        Config {
            persona,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            listen_tls: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            data_dir: data_dir.into(),
            users,
            tls_files: None,
            faults: Vec::new(),
            seed: fastrand::u64(..),
            bare_line_endings: BareLineEnding::Normalize,
            transcripts,
            write_transcripts: transcripts,
            history: 100_000,
            observer: None,
            tally_load: false,
        }
    }

    /// `--no-limits`: quotas and rate limits off.
    pub fn no_limits(mut self) -> Config {
        self.persona.limits.without_quotas();
        self
    }

    pub fn with_fault(mut self, fault: Fault) -> Config {
        self.faults.push(fault);
        self
    }

    pub fn with_users(mut self, users: Vec<User>) -> Config {
        self.users = users;
        self
    }

    /// Reads a config file on top of defaults.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses config text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, Error> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| Error::config(origin, e.to_string()))?;
        let mut persona = Persona::load(file.persona.as_deref().unwrap_or("163"))?;
        if let Some(era) = file.era {
            if !persona.ehlo.contains_key(&era) {
                return Err(Error::config(
                    origin,
                    format!("era: persona {} has no era {era:?}", persona.name),
                ));
            }
            persona.era = era;
        }
        if file.pipelining.is_some() {
            persona.pipelining = file.pipelining;
        }
        if let Some(limits) = file.limits {
            persona.limits = limits;
        }
        persona.apply_overrides(&file.texts, &file.replies, origin)?;
        let mut config = Config::new(
            persona,
            file.data_dir
                .unwrap_or_else(|| PathBuf::from("./fake-upstream-data")),
        );
        config.listen = file
            .listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1025)));
        config.listen_tls = Some(
            file.listen_tls
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1465))),
        );
        if let Some(users) = file.users {
            config.users = users;
        }
        if let Some(tls) = file.tls {
            config.tls_files = Some(TlsFiles {
                ca: tls.ca,
                cert: tls.cert,
                key: tls.key,
            });
        }
        for (i, f) in file.faults.iter().enumerate() {
            f.check(origin, i)?;
        }
        config.faults = file.faults;
        if let Some(seed) = file.seed {
            config.seed = seed;
        }
        if file.no_limits {
            config = config.no_limits();
        }
        Ok(config)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    persona: Option<String>,
    era: Option<String>,
    pipelining: Option<bool>,
    listen: Option<SocketAddr>,
    listen_tls: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    no_limits: bool,
    seed: Option<u64>,
    users: Option<Vec<User>>,
    /// Replaces the persona's limits whole (missing keys: no limit).
    limits: Option<Limits>,
    /// Overrides of the persona's policy texts, by key (e.g. `rcpt_unknown_user`).
    #[serde(default)]
    texts: std::collections::BTreeMap<String, String>,
    /// Overrides of the protocol replies, by ReplyKind name.
    #[serde(default)]
    replies: std::collections::BTreeMap<String, String>,
    tls: Option<FileTls>,
    #[serde(default)]
    faults: Vec<Fault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_config_with_users_and_faults() {
        let c = Config::from_toml(
            r#"
            persona = "163"
            era = "A"
            listen = "127.0.0.1:0"
            no_limits = true
            [[users]]
            address = "x@163.com"
            code = "XCODE"
            [[faults]]
            stage = "rcpt"
            address = "bob@163.com"
            first = 2
            reply = "451 later"
            "#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.persona.era, "A");
        assert_eq!(c.users, [User::new("x@163.com", "XCODE")]);
        assert_eq!(c.persona.limits.sender_per_15min, None);
        assert_eq!(c.faults.len(), 1);
    }

    #[test]
    fn errors_name_file_key_and_expectation() {
        let e = Config::from_toml("listen = \"nowhere\"", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.toml: ") && e.contains("listen"), "{e}");
        let e = Config::from_toml("colour = 1", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = Config::from_toml("era = \"Z\"", "c.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "c.toml: era: persona 163 has no era \"Z\"");
        let e = Config::from_toml("[[faults]]\nstage = \"mail\"\nreply = \"oops\"", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("c.toml: faults[0].reply: expected a reply"),
            "{e}"
        );
    }

    #[test]
    fn texts_and_replies_can_be_overridden() {
        let c = Config::from_toml(
            "[texts]\nrcpt_unknown_user = \"550 User not found\"\n[replies]\nmail_ok = \"250 OK\"",
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.persona.texts.rcpt_unknown_user, "550 User not found");
        assert_eq!(c.persona.replies["mail_ok"], "250 OK");
        let e = Config::from_toml("[texts]\nnope = \"550 x\"", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml: texts.nope: unknown text; expected one of"),
            "{e}"
        );
        let e = Config::from_toml("[texts]\nspam = \"spam!\"", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml: texts.spam: expected a reply"), "{e}");
    }

    #[test]
    fn user_flag() {
        assert_eq!(
            User::parse_flag("a@163.com:CODE").unwrap(),
            User::new("a@163.com", "CODE")
        );
        assert!(User::parse_flag("nocode").is_err());
    }
}
