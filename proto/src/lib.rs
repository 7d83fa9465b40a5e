//! `smtp-wire`: the SMTP protocol without I/O, shared by the relay, the fake upstream, the
//! scenario runner and the load generator.
//!
//! Nothing here touches a socket, a file or a clock: functions take bytes and return values,
//! and the session machines take parsed input and return what to send or decide next. The
//! crate's `Cargo.toml` has no tokio and no rustls, so the compiler keeps it that way.
//!
//! # Layout
//! - [`address`]: RFC 5321 mailboxes, reverse and forward paths, the lenient forms real
//!   clients send, length limits, errors that name what is wrong.
//! - [`params`]: ESMTP parameters of MAIL and RCPT (SIZE, BODY, SMTPUTF8, RET, ENVID, AUTH,
//!   NOTIFY, ORCPT), unknown ones kept for a 555.
//! - [`command`]: the typed [`Command`], `parse` from a line and `encode` to the wire form;
//!   [`CommandError`] says which reply each refusal produces.
//! - [`reply`]: [`Reply`] with multi-line parse and encode, EHLO [`Capabilities`].
//! - [`catalogue`]: the kinds of reply a server session generates, their standard texts, and
//!   the overrides a persona gives.
//! - [`auth`]: SASL mechanism names, PLAIN and LOGIN messages, continuation lines, redacted
//!   secrets.
//! - [`line`]: bounded CRLF line framing with a documented bare CR/LF policy.
//! - [`data`]: the streaming DATA decoder (end detection, unstuffing, size limit, smuggling
//!   policy) and encoder (normalisation, stuffing).
//! - [`server`]: the server session machine (RFC 5321 sequencing, RFC 4954 AUTH).
//! - [`connection`]: a server connection without I/O (bytes in, events out) around the
//!   session: framing, DATA decoding, BDAT chunks, STARTTLS input discard.
//! - [`client`]: the client session machine for the upstream side.
//! - [`client_connection`]: the client's byte side without I/O (bytes in, replies out):
//!   bounded reply-line framing and multi-line assembly, for every reader of replies.
//! - [`proxy`]: the PROXY protocol header (v1 and v2) a load balancer sends first.
//!
//! # Example
//! ```
//! use smtp_wire::Command;
//!
//! // Foxmail's space after the colon is accepted, and the canonical form goes upstream.
//! let cmd = Command::parse(b"mail from: <Alice@example.com> SIZE=1000").unwrap();
//! assert_eq!(cmd.to_string(), "MAIL FROM:<Alice@example.com> SIZE=1000");
//!
//! // A bad address gets a precise reply that names the problem.
//! let err = Command::parse(b"RCPT TO:<chengli>").unwrap_err();
//! assert_eq!(
//!     err.reply().to_string(),
//!     "501 5.1.3 Bad recipient address syntax: no @ in address (expected local-part@domain)"
//! );
//! ```

pub mod address;
pub mod auth;
pub mod catalogue;
pub mod client;
pub mod client_connection;
pub mod command;
pub mod connection;
pub mod data;
pub mod line;
pub mod params;
pub mod proxy;
pub mod reply;
pub mod server;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
pub use auth::{AuthResponse, Credentials, Mechanism, SaslData};
pub use catalogue::{ReplyBook, ReplyKind};
pub use client::{ClientConfig, ClientError, ClientEvent, ClientSession, ClientTls, Outgoing};
pub use client_connection::{ClientConnection, ReplyReadError};
pub use command::{Command, CommandError, Verb};
pub use connection::{Event, ServerConnection};
pub use data::{BareLineEnding, ChunkScan, DataDecoder, DataEncoder, DataOutcome, DataProgress};
pub use line::{Decoded, LineDecoder, LineEndings, LineError};
pub use params::{Body, MailParams, Notify, Param, ParamError, RcptParams, Ret};
pub use reply::{Capabilities, Extension, Reply, ReplyError, ReplyParser, Severity};
pub use server::{
    Decision, Envelope, Input, ServerConfig, ServerSession, Step, Transport, Verdict,
};
