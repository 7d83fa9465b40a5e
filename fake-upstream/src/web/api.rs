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
use super::{RelayView, Server, view};
use crate::faults::{fault_text, parse_duration, parse_fault};

/// The page: one file, no build step, no request leaves the machine.
const PAGE: &str = include_str!("page.html");

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

#[derive(Deserialize)]
struct Search {
    server: Option<String>,
    to: Option<String>,
    from: Option<String>,
    subject: Option<String>,
    q: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
    /// Wait this long (`10s`) for a message that matches when none does yet.
    wait: Option<String>,
}

async fn messages(st: St, Query(s): Query<Search>) -> ApiResult<Json<super::index::Page>> {
    let filter = Filter::new(s.server, s.to, s.from, s.subject, s.q);
    let limit = s.limit.unwrap_or(50).min(LIMIT_MAX);
    let offset = s.offset.unwrap_or(0);
    let wait = match &s.wait {
        None => None,
        Some(w) => {
            let d = parse_duration(w).map_err(ApiError::bad)?;
            if d > WAIT_MAX {
                return Err(ApiError::bad(format!(
                    "wait={w}: at most {}s",
                    WAIT_MAX.as_secs()
                )));
            }
            Some(d)
        }
    };
    let Some(wait) = wait else {
        return Ok(Json(st.index.search(&filter, offset, limit)));
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let added = st.index.added.notified();
        let page = st.index.search(&filter, offset, limit);
        if page.total > 0 {
            return Ok(Json(page));
        }
        if tokio::time::timeout_at(deadline, added).await.is_err() {
            return Err(ApiError::not_found(format!(
                "no message matched within {}",
                s.wait.as_deref().unwrap_or_default()
            )));
        }
    }
}

#[derive(Deserialize)]
struct On {
    server: Option<String>,
}

async fn message(
    st: St,
    Path(id): Path<String>,
    Query(on): Query<On>,
) -> ApiResult<Json<view::View>> {
    let e = st.entry(on.server.as_deref(), &id)?;
    Ok(Json(view::view(&e, st.view_max).await))
}

async fn delete_one(
    st: St,
    Path(id): Path<String>,
    Query(on): Query<On>,
) -> ApiResult<Json<Value>> {
    let e = st.entry(on.server.as_deref(), &id)?;
    forget(&st, &e).await;
    Ok(Json(json!({"deleted": 1})))
}

/// Deletes a message: from its server's memory with its files, or only its files when it
/// came from an earlier run's mailboxes.
async fn forget(st: &State, e: &Entry) {
    let server = st.servers.iter().find(|s| s.name == e.server);
    let remembered = match server {
        Some(s) => s.handle.delete(&e.id).await,
        None => false,
    };
    if !remembered {
        super::index::remove_files(&e.received).await;
    }
    st.index.remove(&e.server, &e.id);
}

async fn delete_all(st: St, Query(on): Query<On>) -> ApiResult<Json<Value>> {
    let mut n = 0;
    match on.server {
        Some(name) => {
            st.server(Some(&name))?;
            let filter = Filter::new(Some(name), None, None, None, None);
            let all = st.index.search(&filter, 0, usize::MAX).messages;
            for e in all {
                forget(&st, &e).await;
                n += 1;
            }
        }
        None => {
            for s in &st.servers {
                s.handle.delete_all().await;
            }
            for e in st.index.clear() {
                // Those the servers did not remember (an earlier run's) are deleted here;
                // deleting again what a server deleted is harmless.
                super::index::remove_files(&e.received).await;
                n += 1;
            }
        }
    }
    Ok(Json(json!({"deleted": n})))
}

#[derive(Deserialize)]
struct RawQuery {
    server: Option<String>,
    /// The DATA phase as it came off the wire (before dot-unstuffing), not the mailbox copy.
    data: Option<bool>,
    /// As a file to save (`<id>.eml`).
    download: Option<bool>,
    /// At most this many octets (the page shows the start of a large message).
    limit: Option<u64>,
}

async fn raw(st: St, Path(id): Path<String>, Query(q): Query<RawQuery>) -> ApiResult<Response> {
    let e = st.entry(q.server.as_deref(), &id)?;
    let path = if q.data.unwrap_or(false) {
        Some(e.received.raw_file.clone().ok_or_else(|| {
            ApiError::not_found("the raw DATA phase of this message was not kept")
        })?)
    } else {
        e.received.files.first().cloned()
    };
    let limit = q.limit.unwrap_or(u64::MAX);
    let body = match path {
        Some(p) => {
            let f = tokio::fs::File::open(&p)
                .await
                .map_err(|err| ApiError::not_found(format!("{}: {err}", p.display())))?;
            use tokio::io::AsyncReadExt;
            Body::from_stream(tokio_util::io::ReaderStream::new(f.take(limit)))
        }
        None if !e.received.content.is_empty() => {
            let c = &e.received.content;
            Body::from(c[..c.len().min(limit as usize)].to_vec())
        }
        None => {
            return Err(ApiError::not_found(
                "the server kept no copy of this message",
            ));
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if q.download.unwrap_or(false) {
        let name = format!(
            "attachment; filename=\"{}.eml\"",
            crate::store::file_stem(&e.id)
        );
        if let Ok(v) = HeaderValue::from_str(&name) {
            headers.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok((headers, body).into_response())
}

/// The headers that keep a message's own HTML harmless: no script, no request anywhere (a
/// tracking pixel included), no form, shown only inside the page's sandboxed frame.
const SANDBOX: &str =
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'";

async fn html(st: St, Path(id): Path<String>, Query(on): Query<On>) -> ApiResult<Response> {
    let e = st.entry(on.server.as_deref(), &id)?;
    if view::source_len(&e).await > st.view_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the message is too large to show here: download its raw source",
        ));
    }
    let bytes = view::source(&e)
        .await
        .ok_or_else(|| ApiError::not_found("the server kept no copy of this message"))?;
    let html = tokio::task::spawn_blocking(move || view::html(&bytes))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::not_found("the message has no HTML body"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, SANDBOX),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response())
}

async fn attachment(
    st: St,
    Path((id, n)): Path<(String, u32)>,
    Query(on): Query<On>,
) -> ApiResult<Response> {
    let e = st.entry(on.server.as_deref(), &id)?;
    if view::source_len(&e).await > st.view_max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the message is too large to take apart here: download its raw source",
        ));
    }
    let bytes = view::source(&e)
        .await
        .ok_or_else(|| ApiError::not_found("the server kept no copy of this message"))?;
    let (name, ctype, data) = tokio::task::spawn_blocking(move || view::attachment(&bytes, n))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| ApiError::not_found(format!("the message has no attachment {n}")))?;
    let name = name.unwrap_or_else(|| format!("attachment-{n}"));
    // Saved, never shown in place: the type is the message's word, not ours to trust.
    let safe: String = name
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let ascii: String = safe
        .chars()
        .map(|c| if c.is_ascii() { c } else { '_' })
        .collect();
    let disposition = format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        percent(&safe)
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&ctype) {
        headers.insert("x-attachment-type", v);
    }
    Ok((headers, data).into_response())
}

/// RFC 5987 percent-encoding of a file name.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The session that delivered a message as the fake heard it (`C:`/`S:` lines with their
/// times, in milliseconds from the session's first line) and, in `up`, the relay's two-hop
/// transcript of it.
async fn transcript(
    st: St,
    Path(id): Path<String>,
    Query(on): Query<On>,
) -> ApiResult<Json<Value>> {
    let e = st.entry(on.server.as_deref(), &id)?;
    let server = st.server(Some(&e.server))?;
    let upstream = server.handle.transcript(e.received.session).map(|t| {
        let first = t.times.first().copied();
        let lines: Vec<Value> = t
            .lines
            .iter()
            .zip(&t.times)
            .map(|(l, at)| {
                let ms = first.map_or(0.0, |f| at.duration_since(f).as_secs_f64() * 1000.0);
                json!({"ms": (ms * 10.0).round() / 10.0, "line": l})
            })
            .collect();
        let data: Vec<Value> = t
            .data
            .iter()
            .map(|d| {
                json!({"after_line": d.line, "octets": d.octets, "bare_cr": d.bare_cr,
                       "bare_lf": d.bare_lf, "nul": d.nul, "eight_bit": d.eight_bit})
            })
            .collect();
        json!({"session": t.id, "client": t.client.map(|c| c.to_string()), "open": t.open,
               "truncated": t.truncated, "lines": lines, "data": data})
    });
    let relay = match &st.relay {
        Some(r) => {
            let (r, e) = (r.clone(), e.clone());
            let head = match view::source(&e).await {
                Some(b) => super::index::head_of(&b).to_vec(),
                None => Vec::new(),
            };
            tokio::task::spawn_blocking(move || {
                let lines = r.transcript(&e.received, &head);
                let record = r.message(&e.received, &head);
                let log = r.log_for(&e.received, &head);
                json!({"lines": lines, "record": record, "log": log})
            })
            .await
            .ok()
        }
        None => None,
    };
    Ok(Json(json!({
        "id": e.id,
        "server": e.server,
        "upstream": upstream,
        "upstream_note": (!server.handle.keeps_transcripts()).then_some(
            "this server records no transcripts (its persona keeps none; --keep keeps them)"
        ),
        "relay": relay,
    })))
}

/// Server-sent events: `message` (a new message, as the list shows it), `deleted`,
/// `cleared`, `faults` (a server's faults changed), `resync` (the stream fell behind: list
/// again).
async fn events(
    st: St,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let rx = st.index.changes.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(Change::Added(e)) => Event::default()
                .event("message")
                .id(e.seq.to_string())
                .json_data(&*e)
                .unwrap_or_default(),
            Ok(Change::Deleted { server, id }) => Event::default()
                .event("deleted")
                .json_data(json!({"server": server, "id": id}))
                .unwrap_or_default(),
            Ok(Change::Cleared) => Event::default().event("cleared").data("{}"),
            Ok(Change::Faults { server }) => Event::default()
                .event("faults")
                .json_data(json!({"server": server}))
                .unwrap_or_default(),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("resync").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn faults_json(s: &Server) -> Value {
    let list: Vec<Value> = s
        .handle
        .faults()
        .into_iter()
        .enumerate()
        .map(|(i, (f, seen))| json!({"index": i, "text": fault_text(&f), "seen": seen, "fault": f}))
        .collect();
    json!({"server": s.name, "faults": list})
}

async fn faults(st: St, Query(on): Query<On>) -> ApiResult<Json<Value>> {
    Ok(Json(faults_json(st.server(on.server.as_deref())?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFault {
    server: Option<String>,
    /// In the scenario syntax: `RCPT bob@163.com: 451 4.7.1 busy, twice`.
    fault: String,
}

async fn add_fault(
    st: St,
    body: Result<Json<NewFault>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(req) = body.map_err(|e| ApiError::bad(e.body_text()))?;
    let s = st.server(req.server.as_deref())?;
    let fault = parse_fault(&req.fault).map_err(ApiError::bad)?;
    let index = s.handle.add_fault(fault);
    let _ = st.index.changes.send(Change::Faults {
        server: s.name.clone(),
    });
    let mut all = faults_json(s);
    all["added"] = json!(index);
    Ok((StatusCode::CREATED, Json(all)))
}

async fn remove_fault(
    st: St,
    Path(index): Path<usize>,
    Query(on): Query<On>,
) -> ApiResult<Json<Value>> {
    let s = st.server(on.server.as_deref())?;
    if !s.handle.remove_fault(index) {
        return Err(ApiError::not_found(format!(
            "{} has no fault {index}",
            s.name
        )));
    }
    let _ = st.index.changes.send(Change::Faults {
        server: s.name.clone(),
    });
    Ok(Json(faults_json(s)))
}

async fn clear_faults(st: St, Query(on): Query<On>) -> ApiResult<Json<Value>> {
    let s = st.server(on.server.as_deref())?;
    s.handle.clear_faults();
    let _ = st.index.changes.send(Change::Faults {
        server: s.name.clone(),
    });
    Ok(Json(faults_json(s)))
}

fn limits_json(s: &Server) -> Value {
    json!({"server": s.name, "quotas": s.handle.quotas_on(), "limits": s.handle.limits()})
}

async fn limits(st: St, Query(on): Query<On>) -> ApiResult<Json<Value>> {
    Ok(Json(limits_json(st.server(on.server.as_deref())?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitChange {
    server: Option<String>,
    /// Every quota and rate limit on (as configured at start) or off.
    quotas: Option<bool>,
    /// One limit by key: `{"sender_per_15min": "none"}`, `{"max_recipients": "5"}`.
    #[serde(default)]
    set: std::collections::BTreeMap<String, Value>,
}

async fn set_limits(
    st: St,
    body: Result<Json<LimitChange>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body.map_err(|e| ApiError::bad(e.body_text()))?;
    let s = st.server(req.server.as_deref())?;
    if let Some(on) = req.quotas {
        s.handle.set_quotas(on);
    }
    for (key, value) in &req.set {
        let v = match value {
            Value::String(v) => v.clone(),
            Value::Null => "none".into(),
            other => other.to_string(),
        };
        s.handle.set_limit(key, &v).map_err(ApiError::bad)?;
    }
    Ok(Json(limits_json(s)))
}

async fn accounts(st: St) -> Json<Value> {
    let list: Vec<Value> = st
        .servers
        .iter()
        .flat_map(|s| {
            s.handle.users().iter().map(
                |u| json!({"server": s.name, "address": u.address, "code": u.code, "smtp": u.smtp}),
            )
        })
        .collect();
    Json(json!({"accounts": list}))
}

/// What a server received of a load run (`smtp-relay load --run-id`): the integrity count
/// across every generator of the run.
async fn load_tally(
    st: St,
    Path(run): Path<String>,
    Query(on): Query<On>,
) -> ApiResult<Json<Value>> {
    let s = st.server(on.server.as_deref())?;
    let id = u64::from_str_radix(run.trim_start_matches("0x"), 16)
        .map_err(|_| ApiError::bad(format!("{run:?}: a run id is up to 16 hex digits")))?;
    if !s.handle.tallies_load() {
        return Err(ApiError::not_found(format!(
            "{} does not tally load runs (fake-upstream --tally-load; smtp-relay up does)",
            s.name
        )));
    }
    let t = s.handle.load_tally(id).ok_or_else(|| {
        ApiError::not_found(format!("{} has no message of run {id:016x}", s.name))
    })?;
    Ok(Json(
        json!({"server": s.name, "run": format!("{id:016x}"), "tally": t}),
    ))
}

#[derive(Deserialize)]
struct Count {
    limit: Option<usize>,
    lines: Option<usize>,
}

async fn relay_records(st: St, Query(c): Query<Count>) -> ApiResult<Json<Value>> {
    let r = st.relay()?;
    let limit = c.limit.unwrap_or(50).min(LIMIT_MAX);
    let records = tokio::task::spawn_blocking(move || r.records(limit))
        .await
        .unwrap_or_default();
    Ok(Json(json!({"records": records})))
}

async fn relay_log(st: St, Query(c): Query<Count>) -> ApiResult<Json<Value>> {
    let r = st.relay()?;
    let n = c.lines.unwrap_or(200).min(10_000);
    let lines = tokio::task::spawn_blocking(move || r.log(n))
        .await
        .unwrap_or_default();
    Ok(Json(json!({"lines": lines})))
}

async fn relay_metrics(st: St) -> ApiResult<Response> {
    let r = st.relay()?;
    let text = tokio::task::spawn_blocking(move || r.metrics())
        .await
        .unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
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
