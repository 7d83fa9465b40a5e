//! The control routes: faults and limits at run time, accounts, load tallies, the relay's
//! view in `up`.

use super::*;

pub(super) fn faults_json(s: &Server) -> Value {
    let list: Vec<Value> = s
        .handle
        .faults()
        .into_iter()
        .enumerate()
        .map(|(i, (f, seen))| json!({"index": i, "text": fault_text(&f), "seen": seen, "fault": f}))
        .collect();
    json!({"server": s.name, "faults": list})
}

pub(super) async fn faults(st: St, Query(on): Query<On>) -> ApiResult<Json<Value>> {
    Ok(Json(faults_json(st.server(on.server.as_deref())?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewFault {
    server: Option<String>,
    /// In the scenario syntax: `RCPT bob@163.com: 451 4.7.1 busy, twice`.
    fault: String,
}

pub(super) async fn add_fault(
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

pub(super) async fn remove_fault(
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

pub(super) async fn clear_faults(st: St, Query(on): Query<On>) -> ApiResult<Json<Value>> {
    let s = st.server(on.server.as_deref())?;
    s.handle.clear_faults();
    let _ = st.index.changes.send(Change::Faults {
        server: s.name.clone(),
    });
    Ok(Json(faults_json(s)))
}

pub(super) fn limits_json(s: &Server) -> Value {
    json!({"server": s.name, "quotas": s.handle.quotas_on(), "limits": s.handle.limits()})
}

pub(super) async fn limits(st: St, Query(on): Query<On>) -> ApiResult<Json<Value>> {
    Ok(Json(limits_json(st.server(on.server.as_deref())?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitChange {
    server: Option<String>,
    /// Every quota and rate limit on (as configured at start) or off.
    quotas: Option<bool>,
    /// One limit by key: `{"sender_per_15min": "none"}`, `{"max_recipients": "5"}`.
    #[serde(default)]
    set: std::collections::BTreeMap<String, Value>,
}

pub(super) async fn set_limits(
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

pub(super) async fn accounts(st: St) -> Json<Value> {
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
pub(super) async fn load_tally(
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
pub(super) struct Count {
    limit: Option<usize>,
    lines: Option<usize>,
}

pub(super) async fn relay_records(st: St, Query(c): Query<Count>) -> ApiResult<Json<Value>> {
    let r = st.relay()?;
    let limit = c.limit.unwrap_or(50).min(LIMIT_MAX);
    let records = tokio::task::spawn_blocking(move || r.records(limit))
        .await
        .unwrap_or_default();
    Ok(Json(json!({"records": records})))
}

pub(super) async fn relay_log(st: St, Query(c): Query<Count>) -> ApiResult<Json<Value>> {
    let r = st.relay()?;
    let n = c.lines.unwrap_or(200).min(10_000);
    let lines = tokio::task::spawn_blocking(move || r.log(n))
        .await
        .unwrap_or_default();
    Ok(Json(json!({"lines": lines})))
}

pub(super) async fn relay_metrics(st: St) -> ApiResult<Response> {
    let r = st.relay()?;
    let text = tokio::task::spawn_blocking(move || r.metrics())
        .await
        .unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
