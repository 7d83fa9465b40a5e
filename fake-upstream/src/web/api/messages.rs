//! The message routes: the list and its search (and its wait), one message decoded, its raw
//! source, HTML body, attachments and transcript, deletes, the event stream.

use super::*;

#[derive(Deserialize)]
pub(super) struct Search {
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

pub(super) async fn messages(
    st: St,
    Query(s): Query<Search>,
) -> ApiResult<Json<crate::web::index::Page>> {
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

pub(super) async fn message(
    st: St,
    Path(id): Path<String>,
    Query(on): Query<On>,
) -> ApiResult<Json<view::View>> {
    let e = st.entry(on.server.as_deref(), &id)?;
    Ok(Json(view::view(&e, st.view_max).await))
}

pub(super) async fn delete_one(
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
pub(super) async fn forget(st: &State, e: &Entry) {
    let server = st.servers.iter().find(|s| s.name == e.server);
    let remembered = match server {
        Some(s) => s.handle.delete(&e.id).await,
        None => false,
    };
    if !remembered {
        crate::web::index::remove_files(&e.received).await;
    }
    st.index.remove(&e.server, &e.id);
}

pub(super) async fn delete_all(st: St, Query(on): Query<On>) -> ApiResult<Json<Value>> {
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
                crate::web::index::remove_files(&e.received).await;
                n += 1;
            }
        }
    }
    Ok(Json(json!({"deleted": n})))
}

#[derive(Deserialize)]
pub(super) struct RawQuery {
    server: Option<String>,
    /// The DATA phase as it came off the wire (before dot-unstuffing), not the mailbox copy.
    data: Option<bool>,
    /// As a file to save (`<id>.eml`).
    download: Option<bool>,
    /// At most this many octets (the page shows the start of a large message).
    limit: Option<u64>,
}

pub(super) async fn raw(
    st: St,
    Path(id): Path<String>,
    Query(q): Query<RawQuery>,
) -> ApiResult<Response> {
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
pub(super) const SANDBOX: &str =
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'";

pub(super) async fn html(
    st: St,
    Path(id): Path<String>,
    Query(on): Query<On>,
) -> ApiResult<Response> {
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

pub(super) async fn attachment(
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
pub(super) fn percent(s: &str) -> String {
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
pub(super) async fn transcript(
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
                Some(b) => crate::web::index::head_of(&b).to_vec(),
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
pub(super) async fn events(
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
