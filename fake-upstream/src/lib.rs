//! fake-upstream: an offline smtp.163.com (and smtp.qq.com, and a sink) for developing and
//! testing mail relays without a network. It speaks each persona's exact bytes, serves real
//! TLS from a CA it generates, keeps every accepted message on disk, and can be scripted to
//! misbehave.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fake_upstream::Error> {
//! use fake_upstream::{Config, FakeUpstream, Persona};
//! let handle = FakeUpstream::start(Config::new(Persona::load("163")?, "/tmp/fake")).await?;
//! println!("plain+STARTTLS on {}, TLS on {:?}", handle.addr(), handle.tls_addr());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`persona`]: personas as data (TOML: banner, EHLO lines, reply texts, rules, limits).
//! - [`config`]: listeners, data directory, users and their authorization codes, faults.
//! - [`faults`]: scripted, deterministic misbehaviour per session stage.
//! - [`tls`]: the CA and the server certificate (rcgen), rustls configurations.
//! - [`store`]: mailboxes on disk, delivered-copy headers, generated ids.
//! - [`server`]: listeners and connection admission (`mod`), a session under `smtp-net`'s
//!   shared driver with the scripted faults (`session`), the persona's policy (`policy`), the
//!   transcripts and raw DATA phases (`transcript`), the [`Handle`] (`handle`).
//! - [`web`]: the web page and the HTTP API (messages, transcripts, faults at run time).
//! - [`cli`]: the `fake-upstream` command line.
//! - [`testing`]: a raw SMTP client and helpers for tests against any SMTP server.
//! - [`loadstamp`]: the load generator's integrity stamp, read and tallied per run.
//! - [`dates`]: RFC 5322 dates found in text, for the transcript normalisers.

pub mod cli;
pub mod config;
pub mod dates;
pub mod error;
pub mod faults;
pub mod loadstamp;
pub mod persona;
pub mod server;
pub mod store;
pub mod testing;
pub mod tls;
pub mod web;

pub use config::{Config, Observer, User};
pub use error::Error;
pub use faults::{DropWhen, Fault, Stage};
pub use persona::Persona;
pub use server::{DataPhase, FakeUpstream, Handle, Transcript};
pub use smtp_wire;
pub use store::Received;
