//! smtp-relay: an SMTP relay with its own conformance and load harness.
//!
//! # Layout
//! - [`cli`]: the command line (clap) and [`cli::run`], which the binary calls, so tests
//!   exercise the same path as users.
//! - [`client_tls`]: TLS from mail clients: the handshake, its failure told with a hint.
//! - [`auth_guard`]: failed AUTHs counted across sessions, per client and per upstream.
//! - [`check`]: `smtp-relay check`, which shows what the protocol crate makes of command lines.
//! - [`load`]: `smtp-relay load`, the load generator (HdrHistogram, open and closed loop).
//! - [`local_ca`]: `up`'s certificate for mail clients, from a name-constrained, short-lived CA.
//! - [`log`]: structured logs in `log/relay.log` (human or JSON lines).
//! - [`metrics`]: `--metrics ADDR`, the Prometheus text endpoint.
//! - [`pace`]: how long to wait for a client: idle, line, data-rate and session limits.
//! - [`queue`]: store-and-forward's durable queue (group-committed, crash-safe).
//! - [`relay`]: the relay, by type: `config` (settings, the routes by [`route::RouteId`]),
//!   `admission` (per-IP slots, trusted networks, the PROXY header), `session` (a client session's loop and
//!   transcript), `auth` (local users or the upstream's verdict), `envelope` (MAIL and RCPT to
//!   each route's destination, pipelined groups), `message` (DATA, the content, the queue's
//!   commit, the end of data), `leg` (a transaction's destinations: a live upstream or the
//!   queue, one type), `outcome` (the reply rule: one, all, none or some took it), `pool`
//!   (upstream sessions kept for the next client), `spool` (the message on its way to disk,
//!   its record and summary).
//! - [`route`]: the routes table (recipient domain -> upstream).
//! - [`dsn`]: RFC 3464 delivery status notifications for mixed outcomes.
//! - [`scenario`]: the scenario format (`parse`, `text`, `faults`), the runner (`run/`: `env`
//!   the fakes and the relay under test, `upstreams` shared ones, `client`, `drive` the steps,
//!   `checks`, `normalize`), `smtp-relay scenarios` (`cli`), reports, baselines, mutants.
//! - [`serve`]: `smtp-relay serve --config relay.toml`, the relay for real use.
//! - [`spool`]: spool retention by age and total size.
//! - [`up`]: `smtp-relay up`, the relay and a fake 163 in one process, for offline work.
//! - [`users`]: the relay's own users (auth mode `users`), bcrypt hashes.
//! - [`upstream`]: the relay's connection to an upstream server, driving
//!   `smtp_wire::ClientSession`: `config`, `connect` (addresses, TLS, EHLO, AUTH, each phase
//!   timed), `error` (by phase; replies sorted into verdicts and errors), the session's
//!   commands (pipelined envelope, streamed body), and `send` (the one sender of a whole
//!   message, used by the queue, the bounces and the load generator).
//! - [`upstream_tls`]: how an upstream is trusted: the TLS policy per route (verify,
//!   fingerprint, encrypt, may, none), its certificate verifier, failures as sentences.
//! - [`upstream_addr`]: every address an upstream's name resolves to, tried in turn.
//! - [`check_tls`]: `smtp-relay check-tls HOST:PORT`, what a server's TLS offers and how to pin it.
//!
//! The protocol itself lives in the `smtp-wire` crate (`proto/`, with `ServerConnection` and
//! `ClientConnection`); the tokio glue both servers share (the session driver, the TLS
//! accept, the per-IP count) in `smtp-net` (`net/`); the fake upstream in `fake-upstream/`.

pub mod auth_guard;
pub mod check;
pub mod check_tls;
pub mod cli;
pub mod client_tls;
pub mod dsn;
pub mod load;
pub mod local_ca;
pub mod log;
pub mod metrics;
pub mod pace;
pub mod queue;
pub mod relay;
pub mod route;
pub mod scenario;
pub mod serve;
pub mod spool;
pub mod up;
pub mod upstream;
pub mod upstream_addr;
pub mod upstream_tls;
pub mod users;

/// FNV-1a, 64 bits: a cheap hash for the load generator's integrity check (enough to tell a
/// corrupted body), the spool's subdirectories and the queue's retry jitter.
pub use fake_upstream::loadstamp::fnv64;
