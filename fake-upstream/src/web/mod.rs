//! The fake's web page and HTTP API (axum, on the tokio runtime the servers run on): every
//! message as it arrives, searched, decoded, with its raw source and the transcript of the
//! session that delivered it; the personas' limits and scripted faults, changed at run time;
//! the accounts. `smtp-relay up` adds the relay's own view ([`RelayView`]).
//!
//! - [`index`]: the list of messages, fed live from each server.
//! - [`view`]: one message decoded for reading.
//! - [`api`]: the routes (`/api/v1/...`, documented in the README) and the page (`/`).
//!
//! Never an open door: on a loopback address it answers only requests whose `Host` names a
//! loopback address (a web page elsewhere cannot reach it through DNS rebinding) and takes
//! changes only as JSON (a form on another site cannot post one); bound anywhere else it
//! wants a token (`Authorization: Bearer T`, or `?token=T` for the page and its event stream).

pub mod api;
pub mod index;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::Error;
use crate::server::Handle;
use crate::store::Received;

/// The default address: Mailpit's and MailHog's port, on loopback.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8025";

/// What the relay in front of the fake can tell about a message (implemented by
/// `smtp-relay up`); calls may read files, the API makes them off the async threads.
pub trait RelayView: Send + Sync + 'static {
    /// The relay's record of the message the fake accepted as `received` (its spool record:
    /// envelope, client, each upstream's outcome, the bounce if any), as JSON.
    fn message(&self, received: &Received, content_head: &[u8]) -> Option<serde_json::Value>;
    /// The relay's two-hop transcript of the session that delivered it (client side and
    /// upstream side in time order, AUTH redacted).
    fn transcript(&self, received: &Received, content_head: &[u8]) -> Option<Vec<String>>;
    /// The relay's log lines about that message.
    fn log_for(&self, _received: &Received, _content_head: &[u8]) -> Vec<String> {
        Vec::new()
    }
    /// The latest spool records, newest first.
    fn records(&self, limit: usize) -> Vec<serde_json::Value>;
    /// The last lines of the relay's log.
    fn log(&self, lines: usize) -> Vec<String>;
    /// The relay's counters in the Prometheus text format.
    fn metrics(&self) -> String;
}

/// A server the page shows, by name.
#[derive(Clone)]
pub struct Server {
    /// What the page calls it (`163`, `qq-mx`).
    pub name: String,
    pub handle: Handle,
}

/// How to start the page.
#[derive(Clone)]
pub struct WebConfig {
    pub listen: SocketAddr,
    /// Wanted on every request when set; required (one is made up when `None`) on an address
    /// that is not loopback.
    pub token: Option<String>,
    pub servers: Vec<Server>,
    pub relay: Option<Arc<dyn RelayView>>,
    /// Messages above this many octets are shown by their headers only ([`view::VIEW_MAX`]).
    pub view_max: u64,
}

impl WebConfig {
    pub fn new(listen: SocketAddr, servers: Vec<Server>) -> WebConfig {
        WebConfig {
            listen,
            token: None,
            servers,
            relay: None,
            view_max: view::VIEW_MAX,
        }
    }
}

/// The running page.
pub struct Web {
    addr: SocketAddr,
    token: Option<String>,
    index: Arc<index::Index>,
    task: tokio::task::JoinHandle<()>,
}

impl Web {
    /// Binds, starts following the servers, and serves until [`Web::shutdown`].
    pub async fn start(config: WebConfig) -> Result<Web, Error> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let token = match (&config.token, addr.ip().is_loopback()) {
            (Some(t), _) => Some(t.clone()),
            (None, true) => None,
            (None, false) => Some(new_token()),
        };
        let index = index::Index::new();
        for s in &config.servers {
            index.follow(s.name.clone(), s.handle.clone());
        }
        let state = Arc::new(api::State {
            servers: config.servers,
            relay: config.relay,
            index: index.clone(),
            token: token.clone(),
            view_max: config.view_max,
        });
        let app = api::router(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Web {
            addr,
            token,
            index,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, with the token when one is needed.
    pub fn url(&self) -> String {
        let host = match self.addr {
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            SocketAddr::V4(a) => a.to_string(),
        };
        match &self.token {
            Some(t) => format!("http://{host}/?token={t}"),
            None => format!("http://{host}/"),
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// How many messages the page lists.
    pub fn messages(&self) -> usize {
        self.index.len()
    }

    /// Stops serving (open event streams end).
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 128 bits from the system's secure random source (rustls' ring provider), as hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
