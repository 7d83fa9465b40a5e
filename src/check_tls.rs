//! `smtp-relay check-tls HOST:PORT`: connects to an SMTP server the way the relay would (every
//! address the name resolves to, STARTTLS or implicit TLS), and prints what the server offers
//! (greeting, EHLO before and after TLS, TLS version and cipher), the certificates it presents
//! (names, issuer, dates, CA flag, key, SHA-256 of the certificate and of its key), whether each
//! TLS policy would accept them, and the lines of config that would make the relay deliver
//! there. Its exit status says the same: 0 when the certificate verifies (bundled roots or
//! `--ca`) at every address that answered, 1 when the server answered but did not verify, 2 when
//! nothing answered.
//!
//! [`check`] does the work and takes the clock as an argument; [`Report`] renders it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::upstream::{Phase, Timeouts, TlsInfo, TlsMode, Upstream, UpstreamConfig, UpstreamError};
use crate::upstream_addr::{FailedAddresses, bare_host};
use crate::upstream_tls::{
    CertSummary, PolicyVerifier, Rejection, Seen, TlsPolicy, Trust, client_config, day, names_match,
};

/// The most addresses of one name checked (a name with more is unusual; each costs a timeout).
const MAX_ADDRESSES: usize = 16;

/// `smtp-relay check-tls`'s arguments.
#[derive(Debug, clap::Args)]
pub struct CheckTlsArgs {
    /// The server, `HOST:PORT` (`[::1]:25` for an IPv6 address). Port 465 means implicit
    /// TLS, any other STARTTLS, unless --implicit or --starttls says otherwise.
    pub target: String,
    /// Ask for STARTTLS after EHLO (the default unless the port is 465).
    #[arg(long, conflicts_with = "implicit")]
    pub starttls: bool,
    /// TLS from the first byte (the default on port 465).
    #[arg(long)]
    pub implicit: bool,
    /// The name the certificate must carry (default: the host of TARGET). The relay's
    /// `server_name`.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Also verify against the CA (or self-signed server certificate) in this PEM file, as
    /// `ca = "FILE"` on a route would.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Write the certificates the server presented (PEM) to this file, for `ca = "FILE"`.
    #[arg(long, value_name = "PEM")]
    pub save: Option<PathBuf>,
    /// The name we give in EHLO.
    #[arg(long, default_value = "localhost", value_name = "NAME")]
    pub helo: String,
    /// How long each step (connect, greeting, each reply, the TLS handshake) may take.
    #[arg(long, default_value = "10s", value_parser = crate::scenario::parse_duration)]
    pub timeout: Duration,
}

/// What to check, resolved from the arguments.
#[derive(Clone, Debug)]
pub struct Options {
    /// `host:port`, IPv6 in brackets.
    pub target: String,
    pub tls: TlsMode,
    /// The name the certificate must carry.
    pub server_name: String,
    /// A `ca` file to verify against: how to name it, and its PEM text.
    pub ca: Option<(String, String)>,
    pub helo: String,
    pub timeout: Duration,
}

impl Options {
    /// Checks the arguments: a port, a usable TLS server name, a readable `--ca`.
    pub fn from_args(args: &CheckTlsArgs) -> Result<Options, String> {
        let target = args.target.trim().to_string();
        let (host, port) = split_target(&target)?;
        let tls = if args.implicit {
            TlsMode::Implicit
        } else if args.starttls || port != 465 {
            TlsMode::StartTls
        } else {
            TlsMode::Implicit
        };
        let server_name = args
            .server_name
            .clone()
            .unwrap_or_else(|| bare_host(&host).to_string());
        server_name_of(&server_name)?;
        let ca = match &args.ca {
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| format!("--ca {}: {e}", path.display()))?;
                let label = path.display().to_string();
                Trust::ca_pem(&label, &pem)?;
                Some((label, pem))
            }
            None => None,
        };
        Ok(Options {
            target,
            tls,
            server_name,
            ca,
            helo: args.helo.clone(),
            timeout: args.timeout,
        })
    }
}

/// `host:port` split, with a clear error when the port is missing.
fn split_target(target: &str) -> Result<(String, u16), String> {
    let missing = || format!("{target:?}: expected HOST:PORT, e.g. smtp.163.com:465 or [::1]:25");
    let (host, port) = target.rsplit_once(':').ok_or_else(missing)?;
    // `::1:25` is ambiguous; an IPv6 address needs its brackets.
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(missing());
    }
    let host = bare_host(host);
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{target:?}: {port:?} is not a port number"))?;
    if host.is_empty() {
        return Err(format!("{target:?}: no host"));
    }
    Ok((host.to_string(), port))
}

fn server_name_of(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(bare_host(name).to_string())
        .map_err(|_| format!("{name:?} is not a DNS name or an IP address (--server-name)"))
}

/// `tls_policy = "verify"`'s verdict on the presented certificate, with one set of roots.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The `ca` file verified against; `None` for the bundled public roots.
    pub ca: Option<String>,
    pub result: Result<(), Rejection>,
}

impl Verdict {
    fn label(&self) -> String {
        match &self.ca {
            None => "tls_policy = \"verify\" with the bundled public roots".into(),
            Some(f) => format!("tls_policy = \"verify\" with ca = \"{f}\""),
        }
    }
}

/// What happened at one address.
#[derive(Clone, Debug)]
pub struct AddressReport {
    pub addr: SocketAddr,
    /// The session (`* `, `C:` and `S:` lines), or why there was none.
    pub session: Result<Vec<String>, String>,
    /// A TCP connection was made (whatever followed).
    pub connected: bool,
    /// What the server's last EHLO offered.
    pub offers: Vec<String>,
    /// Negotiated TLS, when it was.
    pub tls: Option<TlsInfo>,
    /// The certificates presented, the server's own first.
    pub chain: Vec<CertificateDer<'static>>,
    pub verdicts: Vec<Verdict>,
    /// Whether the certificate carries the server name.
    pub name_ok: Option<bool>,
}

impl AddressReport {
    /// The server answered (a greeting came, whatever followed).
    pub fn answered(&self) -> bool {
        self.connected
    }

    /// TLS was negotiated and a `verify` verdict accepted the certificate.
    pub fn verified(&self) -> bool {
        self.tls.is_some() && self.verdicts.iter().any(|v| v.result.is_ok())
    }
}

/// Everything `check-tls` found.
#[derive(Clone, Debug)]
pub struct Report {
    pub options: Options,
    /// The name did not resolve.
    pub resolve_error: Option<String>,
    /// Every address, in the order the relay would try them.
    pub addresses: Vec<AddressReport>,
    /// More addresses than were checked.
    pub skipped: usize,
    /// The moment the verdicts were made for (dates are judged at it).
    pub now: UnixTime,
}

/// The outcome as an exit status: 0 verified at every address that answered, 1 answered but
/// not verified (or no TLS), 2 nothing answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Verified,
    NotVerified,
    Unreachable,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Verified => 0,
            Outcome::NotVerified => 1,
            Outcome::Unreachable => 2,
        }
    }
}

impl Report {
    pub fn outcome(&self) -> Outcome {
        let answered: Vec<&AddressReport> =
            self.addresses.iter().filter(|a| a.answered()).collect();
        if answered.is_empty() {
            Outcome::Unreachable
        } else if answered.iter().all(|a| a.verified()) {
            Outcome::Verified
        } else {
            Outcome::NotVerified
        }
    }

    /// The certificates presented at the first address that presented any.
    pub fn chain(&self) -> Option<&[CertificateDer<'static>]> {
        self.addresses
            .iter()
            .find(|a| !a.chain.is_empty())
            .map(|a| a.chain.as_slice())
    }

    /// The report as text, for a person.
    pub fn render(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let how = match o.tls {
            TlsMode::Implicit => "implicit TLS",
            TlsMode::StartTls => "STARTTLS",
            TlsMode::None => "no TLS",
        };
        let _ = writeln!(
            s,
            "check-tls {} ({how}; the certificate must carry {})",
            o.target, o.server_name
        );
        if let Some(e) = &self.resolve_error {
            let _ = writeln!(s, "  {e}");
            return s;
        }
        let list: Vec<String> = self.addresses.iter().map(|a| a.addr.to_string()).collect();
        let _ = writeln!(
            s,
            "addresses, in the order the relay tries them: {}{}",
            list.join(", "),
            if self.skipped > 0 {
                format!(" (and {} more, not checked)", self.skipped)
            } else {
                String::new()
            }
        );
        // The lines to write are shown once, for the first address that presented certificates.
        let first_chain = self.addresses.iter().position(|a| !a.chain.is_empty());
        for (i, a) in self.addresses.iter().enumerate() {
            self.render_address(&mut s, a, first_chain == Some(i));
        }
        let _ = writeln!(
            s,
            "\n{}",
            match self.outcome() {
                Outcome::Verified =>
                    "verdict: verified (exit 0): tls_policy = \"verify\" delivers here",
                Outcome::NotVerified =>
                    "verdict: the server answered, its certificate is not verified (exit 1)",
                Outcome::Unreachable => "verdict: no address answered (exit 2)",
            }
        );
        s
    }
}

impl Report {
    /// One address: its session, what it offers, TLS, the certificates, the verdicts and,
    /// when `advise`, the lines to write.
    fn render_address(&self, s: &mut String, a: &AddressReport, advise: bool) {
        let o = &self.options;
        let _ = writeln!(s, "\n{}", a.addr);
        match &a.session {
            Ok(lines) => {
                for l in lines {
                    let _ = writeln!(s, "  {l}");
                }
            }
            Err(e) => {
                let _ = writeln!(s, "  failed: {e}");
            }
        }
        if !a.offers.is_empty() {
            let _ = writeln!(s, "  offers: {}", a.offers.join(", "));
        }
        match a.tls {
            Some(info) => {
                let _ = writeln!(s, "  TLS: {info}");
            }
            None if a.session.is_ok() => {
                let failed = a.session.as_ref().is_ok_and(|lines| {
                    lines
                        .iter()
                        .any(|l| l.starts_with("* plaintext: TLS failed"))
                });
                let _ = writeln!(
                    s,
                    "  TLS: {} (only tls_policy = \"may\" or \"none\" would deliver here)",
                    if failed {
                        "the handshake failed, see above; the session went on in plaintext"
                    } else {
                        "none: STARTTLS is not offered"
                    }
                );
            }
            None => {}
        }
        if a.chain.is_empty() {
            return;
        }
        let _ = writeln!(s, "  certificates presented: {}", a.chain.len());
        for (i, der) in a.chain.iter().enumerate() {
            render_cert(s, i, der, self.now);
        }
        let _ = writeln!(s, "  verdicts:");
        if let Some(ok) = a.name_ok {
            let _ = writeln!(
                s,
                "    name {}: {}",
                o.server_name,
                if ok {
                    "carried by the certificate"
                } else {
                    "NOT carried by the certificate"
                }
            );
        }
        for v in &a.verdicts {
            match &v.result {
                Ok(()) => {
                    let _ = writeln!(s, "    {}: accepted", v.label());
                }
                Err(r) => {
                    let _ = writeln!(s, "    {}: refused: {}", v.label(), r.short());
                }
            }
        }
        if advise {
            s.push_str(&advice(a, o));
        }
    }
}

fn render_cert(s: &mut String, i: usize, der: &CertificateDer<'_>, now: UnixTime) {
    let Some(c) = CertSummary::parse(der) else {
        let _ = writeln!(s, "  [{i}] (not an X.509 certificate)");
        return;
    };
    let now = now.as_secs() as i64;
    let validity = if now > c.not_after {
        "EXPIRED"
    } else if now < c.not_before {
        "NOT YET VALID"
    } else {
        "valid now"
    };
    let _ = writeln!(s, "  [{i}] {}", c.subject);
    let _ = writeln!(s, "      names:      {}", c.names.join(", "));
    let _ = writeln!(
        s,
        "      issuer:     {}",
        if c.self_signed {
            format!("{} (self-signed)", c.issuer)
        } else {
            c.issuer.clone()
        }
    );
    let _ = writeln!(
        s,
        "      valid:      {} to {} ({validity})",
        day(c.not_before),
        day(c.not_after)
    );
    let _ = writeln!(
        s,
        "      CA flag:    {}",
        if c.ca { "CA:TRUE" } else { "CA:FALSE" }
    );
    let _ = writeln!(s, "      key:        {}", c.key);
    let _ = writeln!(s, "      sha256:     {}", c.sha256);
    let _ = writeln!(s, "      key sha256: {}", c.sha256_key);
}

/// The config lines that would make the relay deliver to this server.
fn advice(a: &AddressReport, o: &Options) -> String {
    let mut s = String::new();
    let Some(c) = a.chain.first().and_then(|d| CertSummary::parse(d)) else {
        return s;
    };
    let verified_by = a.verdicts.iter().find(|v| v.result.is_ok()).map(|v| &v.ca);
    let tls_line = match o.tls {
        TlsMode::Implicit => "tls = \"implicit\"",
        _ => "tls = \"starttls\"",
    };
    let _ = writeln!(s, "  to deliver here, on the route (or [upstream]):");
    let _ = writeln!(s, "    {tls_line}");
    if a.name_ok == Some(false) {
        let _ = writeln!(
            s,
            "    server_name = \"{}\"   # a name the certificate carries; {} is not",
            c.names
                .first()
                .map(|n| n.trim_end_matches(" (CN only)"))
                .unwrap_or_default(),
            o.server_name
        );
    }
    match verified_by {
        Some(None) => {
            let _ = writeln!(
                s,
                "    # nothing else: tls_policy = \"verify\" (the default) accepts it"
            );
        }
        Some(Some(file)) => {
            let _ = writeln!(s, "    ca = \"{file}\"");
        }
        None => {
            let _ = writeln!(
                s,
                "    # if, checked from a network you trust, this is your server's certificate:"
            );
            let _ = writeln!(s, "    tls_policy = \"fingerprint\"");
            let _ = writeln!(
                s,
                "    fingerprints = [\"{}\"]   # its key: survives a renewal that keeps the key",
                c.sha256_key
            );
            let _ = writeln!(
                s,
                "    # or the certificate itself: fingerprints = [\"{}\"]",
                c.sha256
            );
            if c.self_signed {
                let _ = writeln!(
                    s,
                    "    # or keep tls_policy = \"verify\" with ca = \"FILE\", FILE holding this certificate (--save FILE writes it)"
                );
            } else {
                let _ = writeln!(
                    s,
                    "    # or keep tls_policy = \"verify\" with ca = \"FILE\", FILE holding the certificate of {}",
                    c.issuer
                );
            }
        }
    }
    s
}

/// Connects to every address of `options.target` and judges what each presents, as of `now`.
pub async fn check(options: &Options, now: UnixTime) -> Report {
    let mut report = Report {
        options: options.clone(),
        resolve_error: None,
        addresses: Vec::new(),
        skipped: 0,
        now,
    };
    let addrs = match crate::upstream_addr::resolve(&options.target, options.timeout).await {
        Ok(a) => a,
        Err(e) => {
            report.resolve_error = Some(e.to_string());
            return report;
        }
    };
    let mut addrs = crate::upstream_addr::order(addrs, &FailedAddresses::default(), Instant::now());
    if addrs.len() > MAX_ADDRESSES {
        report.skipped = addrs.len() - MAX_ADDRESSES;
        addrs.truncate(MAX_ADDRESSES);
    }
    for addr in addrs {
        report
            .addresses
            .push(check_address(options, addr, now).await);
    }
    report
}

async fn check_address(o: &Options, addr: SocketAddr, now: UnixTime) -> AddressReport {
    let mut report = AddressReport {
        addr,
        session: Err(String::new()),
        connected: false,
        offers: Vec::new(),
        tls: None,
        chain: Vec::new(),
        verdicts: Vec::new(),
        name_ok: None,
    };
    // Opportunistic for STARTTLS, so that a server without it is still described; the
    // certificate is recorded and judged below, not during the handshake.
    let policy = if o.tls == TlsMode::StartTls {
        TlsPolicy::May
    } else {
        TlsPolicy::Encrypt
    };
    let seen = Seen::default();
    let verifier = match PolicyVerifier::new(policy, Trust::Unchecked) {
        Ok(v) => v.recording(seen.clone()),
        Err(e) => {
            report.session = Err(e);
            return report;
        }
    };
    let t = o.timeout;
    let config = UpstreamConfig {
        name: addr.to_string(),
        addr: addr.to_string(),
        server_name: o.server_name.clone(),
        tls: o.tls,
        tls_policy: policy,
        tls_config: Some(client_config(verifier)),
        config_at: String::new(),
        helo_name: o.helo.clone(),
        credentials: None,
        timeouts: Timeouts {
            connect: t,
            greeting: t,
            command: t,
            data_init: t,
            data_block: t,
            data_end: t,
        },
        transcript: true,
        bdat: None,
    };
    match Upstream::connect(&config).await {
        Ok(up) => {
            let tls = up.tls_info();
            // The relay's note names the policy check-tls connected with; the verdicts below
            // are what counts, so the line says what was negotiated instead.
            let lines = up
                .transcript()
                .iter()
                .map(|l| match (l.strip_prefix("* TLS handshake done ("), tls) {
                    (Some(rest), Some(info)) => {
                        let how = rest.split(',').next().unwrap_or_default();
                        format!(
                            "* TLS handshake done ({how}, {info}; the certificate is judged below)"
                        )
                    }
                    _ => l.clone(),
                })
                .collect();
            report.session = Ok(lines);
            report.connected = true;
            report.offers = up
                .capabilities()
                .extensions
                .iter()
                .map(|e| e.to_string())
                .collect();
            report.tls = tls;
            up.quit().await;
        }
        Err(e) => {
            report.connected = !matches!(e, UpstreamError::Connect { .. });
            let hint = match (&e, o.tls) {
                (
                    UpstreamError::Timeout {
                        phase: Phase::Greeting,
                        ..
                    },
                    TlsMode::StartTls,
                ) => " (a port that speaks TLS from the first byte waits for us: try --implicit)",
                _ => "",
            };
            report.session = Err(format!("{e}{hint}"));
        }
    }
    report.chain = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    judge_chain(o, &mut report, now);
    report
}

/// Whether the certificate presented carries the name, and `verify`'s verdict with the
/// bundled roots and with `--ca`, as of `now`.
fn judge_chain(o: &Options, report: &mut AddressReport, now: UnixTime) {
    let Some((end_entity, intermediates)) = report.chain.split_first() else {
        return;
    };
    // `from_args` checked the name.
    let Ok(name) = server_name_of(&o.server_name) else {
        return;
    };
    report.name_ok = Some(names_match(end_entity, &name));
    let mut trusts = vec![(None, Trust::PublicRoots)];
    if let Some((label, pem)) = &o.ca
        && let Ok(trust) = Trust::ca_pem(label, pem)
    {
        trusts.push((Some(label.clone()), trust));
    }
    for (ca, trust) in trusts {
        let result = PolicyVerifier::new(TlsPolicy::Verify, trust)
            .map_err(|e| Rejection {
                problem: crate::upstream_tls::CertProblem::Other(e),
                cert: None,
                trust: crate::upstream_tls::TrustSource::Unchecked,
            })
            .and_then(|v| v.judge(end_entity, intermediates, &name, now));
        report.verdicts.push(Verdict { ca, result });
    }
}

/// The certificates as PEM, the server's own first.
pub fn pem(chain: &[CertificateDer<'_>]) -> String {
    let mut s = String::new();
    for der in chain {
        s.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        for line in b64.as_bytes().chunks(64) {
            s.push_str(std::str::from_utf8(line).unwrap_or_default());
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
    }
    s
}

/// `smtp-relay check-tls`.
pub async fn run(args: CheckTlsArgs) -> ExitCode {
    let options = match Options::from_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("smtp-relay check-tls: {e}");
            return ExitCode::from(2);
        }
    };
    let report = check(&options, UnixTime::now()).await;
    print!("{}", report.render());
    if let Some(path) = &args.save {
        match report.chain() {
            Some(chain) => match std::fs::write(path, pem(chain)) {
                Ok(()) => println!(
                    "wrote the {} certificate(s) presented to {} (for ca = \"{}\")",
                    chain.len(),
                    path.display(),
                    path.display()
                ),
                Err(e) => {
                    eprintln!("smtp-relay check-tls: --save {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            },
            None => eprintln!(
                "smtp-relay check-tls: --save {}: no certificate was presented, nothing written",
                path.display()
            ),
        }
    }
    ExitCode::from(report.outcome().code())
}

#[cfg(test)]
mod tests;
