//! An upstream's settings: where it is, how its TLS is trusted, its credentials, its
//! timeouts per phase.

use super::*;

/// How the connection to the upstream is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plaintext (only for trusted networks and tests).
    None,
    /// STARTTLS, required: an upstream that does not offer it is an error.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// How long each phase may take. The defaults are RFC 5321 4.5.3.2's client timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect and the TLS handshake (not in the RFC).
    pub connect: Duration,
    /// The 220 greeting.
    pub greeting: Duration,
    /// EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT replies.
    pub command: Duration,
    /// The reply to DATA (354).
    pub data_init: Duration,
    /// Each write of message data.
    pub data_block: Duration,
    /// The final reply after the end of data.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_end: Duration::from_secs(600),
        }
    }
}

/// Where and how to reach one upstream.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// How errors and logs name it, e.g. `smtp.163.com:465`.
    pub name: String,
    /// `host:port` to connect to (IPv6 in brackets); every address the host resolves to is
    /// tried ([`crate::upstream_addr`]).
    pub addr: String,
    /// The name its certificate must carry.
    pub server_name: String,
    pub tls: TlsMode,
    /// How strictly the upstream is checked; `tls_config`'s verifier applies it.
    pub tls_policy: TlsPolicy,
    /// Required unless `tls` is `None`: built by [`crate::upstream_tls`] for `tls_policy`.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    /// Where this upstream is configured (`[[routes]] "lab" in relay.toml`), for the fix a
    /// TLS failure suggests.
    pub config_at: String,
    /// Our name in EHLO.
    pub helo_name: String,
    /// AUTH with these after the secured EHLO.
    pub credentials: Option<Credentials>,
    pub timeouts: Timeouts,
    /// Record `C:`/`S:` lines (off for load runs and relays without transcripts: no
    /// allocation per command).
    pub transcript: bool,
    /// Send the content in BDAT chunks of (at least) this many octets when the upstream
    /// offers CHUNKING (RFC 3030: no dot-stuffing, no terminator scan on its side); `None`:
    /// always DATA.
    pub bdat: Option<usize>,
}

/// The chunk size the relay uses towards an upstream that offers CHUNKING.
pub const BDAT_CHUNK: usize = 256 * 1024;

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("tls_policy", &self.tls_policy)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}
