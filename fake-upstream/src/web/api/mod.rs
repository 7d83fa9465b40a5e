//! The routes: the page at `/`, the JSON API under `/api/v1/`, the event stream. Errors are
//! JSON too: `{"status": 404, "error": "no message _____wAbc on 163"}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value, json};

use super::index::{Change, Entry, Filter, Index};

mod control;
mod messages;
use super::{RelayView, Server, view};
use crate::faults::{fault_text, parse_duration, parse_fault};
use control::*;
use messages::*;

/// The page: one file, no build step, no request leaves the machine.
const PAGE: &str = include_str!("../page.html");

/// The longest `wait=` a search may ask for.
pub const WAIT_MAX: Duration = Duration::from_secs(300);

/// The most messages one page of a search returns.
pub const LIMIT_MAX: usize = 1000;

/// What every route shares.
pub struct State {
    pub servers: Vec<Server>,
    pub relay: Option<Arc<dyn RelayView>>,
    pub index: Arc<Index>,
    pub token: Option<String>,
    /// Messages above this many octets are not decoded (headers and the raw download only).
    pub view_max: u64,
}

type St = AxState<Arc<State>>;

/// An error as the API answers it.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"status": self.status.as_u16(), "error": self.message})),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl State {
    /// The server named `name`, or the first (the main upstream) when none is named.
    fn server(&self, name: Option<&str>) -> ApiResult<&Server> {
        match name {
            None => self
                .servers
                .first()
                .ok_or_else(|| ApiError::not_found("no server is shown")),
            Some(n) => self
                .servers
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(n))
                .ok_or_else(|| {
                    let names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
                    ApiError::not_found(format!(
                        "no server {n:?} (there are: {})",
                        names.join(", ")
                    ))
                }),
        }
    }

    fn entry(&self, server: Option<&str>, id: &str) -> ApiResult<Arc<Entry>> {
        self.index.get(server, id).ok_or_else(|| {
            ApiError::not_found(match server {
                Some(s) => format!("no message {id} on {s}"),
                None => format!("no message {id}"),
            })
        })
    }

    fn relay(&self) -> ApiResult<Arc<dyn RelayView>> {
        self.relay.clone().ok_or_else(|| {
            ApiError::not_found(
                "no relay stands in front of this fake (it is shown by `smtp-relay up`)",
            )
        })
    }
}

/// `?server=NAME`: which server a route is about (default: the first).
#[derive(Deserialize)]
pub(super) struct On {
    server: Option<String>,
}

/// Every route, behind the guard.
pub fn router(state: Arc<State>) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/api/v1/health", get(health))
        .route("/api/v1/servers", get(servers))
        .route("/api/v1/messages", get(messages).delete(delete_all))
        .route("/api/v1/messages/{id}", get(message).delete(delete_one))
        .route("/api/v1/messages/{id}/raw", get(raw))
        .route("/api/v1/messages/{id}/html", get(html))
        .route("/api/v1/messages/{id}/attachments/{n}", get(attachment))
        .route("/api/v1/messages/{id}/transcript", get(transcript))
        .route("/api/v1/events", get(events))
        .route(
            "/api/v1/faults",
            get(faults).post(add_fault).delete(clear_faults),
        )
        .route("/api/v1/faults/{index}", delete(remove_fault))
        .route("/api/v1/limits", get(limits).put(set_limits))
        .route("/api/v1/accounts", get(accounts))
        .route("/api/v1/load/{run}", get(load_tally))
        .route("/api/v1/relay/records", get(relay_records))
        .route("/api/v1/relay/log", get(relay_log))
        .route("/api/v1/relay/metrics", get(relay_metrics))
        .fallback(|| async { ApiError::not_found("no such path: see the README's API section") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The token, the Host (on loopback, against DNS rebinding) and JSON for changes (against
/// cross-site forms).
async fn guard(st: St, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if let Some(token) = &st.token {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let query = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        if bearer != Some(token.as_str()) && query != Some(token.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "a token is wanted: Authorization: Bearer TOKEN, or ?token=TOKEN (printed at start)",
            )
            .into_response();
        }
    } else {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("Host {host:?} is not a loopback name: this page answers only on 127.0.0.1, localhost and [::1]"),
            )
            .into_response();
        }
    }
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH) {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "changes are taken as JSON only (Content-Type: application/json)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// `127.0.0.1:8025`, `localhost`, `[::1]:8025`: a name only this machine answers to.
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-src 'self'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn health(st: St) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "servers": st.servers.len(),
        "messages": st.index.len(),
        "relay": st.relay.is_some(),
    }))
}

async fn servers(st: St) -> Json<Value> {
    let list: Vec<Value> = st
        .servers
        .iter()
        .map(|s| {
            let h = &s.handle;
            json!({
                "name": s.name,
                "persona": h.persona_name(),
                "smtp": h.addr().to_string(),
                "smtps": h.tls_addr().map(|a| a.to_string()),
                "received": h.received_count(),
                "open_connections": h.open_connections(),
                "quotas": h.quotas_on(),
                "data_dir": h.data_dir(),
                "ca": h.ca_path(),
            })
        })
        .collect();
    Json(json!({"servers": list, "relay": st.relay.is_some()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_pass_without_a_token() {
        for ok in [
            "127.0.0.1:8025",
            "localhost:8025",
            "LOCALHOST",
            "[::1]:8025",
            "127.9.9.9",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:8025",
            "",
            "10.0.0.1:8025",
            "[2001:db8::1]:80",
            "localhost.evil.example",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
        assert_eq!(percent("报告 1.pdf"), "%E6%8A%A5%E5%91%8A%201.pdf");
    }
}
