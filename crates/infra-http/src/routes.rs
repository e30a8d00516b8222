//! The API: routing and handlers.
//!
//! | method | path | what |
//! |---|---|---|
//! | POST | `/put` | JSON `{"key", "value"}` (`data` accepted for `value`: the Go client sends it) |
//! | GET, HEAD | `/read?key=K` | raw value bytes; 404 when absent |
//! | GET, HEAD | `/readrange?start=A&end=B[&limit=N]` | JSON object key -> value, ascending, inclusive, streamed |
//! | POST | `/batchput` | JSON object of string pairs (at least one, keys distinct), applied atomically |
//! | POST, DELETE | `/delete?key=K` | idempotent delete |
//! | GET, HEAD | `/health-check` | `OK` (liveness) |
//! | GET, HEAD | `/readyz` | readiness: 200 `{"ready":true}` or 503 with reasons ([`crate::replication::ready`]) |
//! | PUT, GET, HEAD, DELETE | `/v1/kv/{key}` | raw bytes; the key percent-encoded in the path (binary-safe) |
//! | GET, HEAD | `/v1/kv?start&end&limit&cursor&encoding` | a page of a listing, streamed, with a cursor to continue |
//! | GET, HEAD | `/v1/status` | role, LSN, keys, segments, disk and garbage bytes, durability, recovery |
//! | GET, HEAD | `/metrics` | Prometheus text |
//! | POST | `/v1/admin/compact` | run a compaction now; 409 while one runs |
//! | GET, HEAD, POST | `/v1/replication/{state,apply,snapshot}` | internal, see [`crate::replication`] |
//!
//! Every write answers with its LSN in the `x-kv-lsn` header and a JSON body `{"lsn": N}`. Errors are JSON
//! `{"error": "..."}` with the status chosen in [`crate::error`].
//!
//! On a follower, writes are forwarded to the leader ([`crate::replication::follower`]). Any read may
//! name a minimum LSN (`min_lsn` query parameter or `x-kv-min-lsn` header, e.g. the LSN a write returned):
//! it then waits until this node has applied that LSN, up to `max_wait_ms` (query; default and cap set by
//! the server), and answers 503 if it has not, or at once while a follower refuses its leader's history.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{header, HeaderMap, Method, Request, Response, StatusCode};
use kv_app::AppError;
use kv_domain::{Key, KeyRange, Lsn, WriteBatch};
use serde::Deserialize;

use crate::body::read_body;
use crate::error::{full, ApiError, Body};
use crate::json::StringPairs;
use crate::server::ServerState;
use crate::stream::ChannelBody;

/// Entries fetched from the engine per step of a streamed range.
const PAGE: usize = 256;
/// A streamed response sends what it has once it holds this many bytes (and at the end of each page), so
/// the chunks queued for one response are about this size rather than a whole page each.
const CHUNK_BYTES: usize = 64 * 1024;
/// Default and maximum page size of the `/v1/kv` listing.
const LISTING_DEFAULT: usize = 1000;
const LISTING_MAX: usize = 10_000;

/// The routes, as (metric label, allowed methods). Kept in one table so the router, the 405 `Allow` header
/// and the OpenAPI test agree. Every route that serves GET serves HEAD too (RFC 9110 §9.3.2): the same
/// status and headers, no body (hyper drops the body of a HEAD response; a streamed one is not produced).
pub const ROUTES: [(&str, &[&str]); 15] = [
    ("/put", &["POST"]),
    ("/read", &["GET", "HEAD"]),
    ("/readrange", &["GET", "HEAD"]),
    ("/batchput", &["POST"]),
    ("/delete", &["POST", "DELETE"]),
    ("/health-check", &["GET", "HEAD"]),
    ("/readyz", &["GET", "HEAD"]),
    ("/v1/kv/{key}", &["PUT", "GET", "HEAD", "DELETE"]),
    ("/v1/kv", &["GET", "HEAD"]),
    ("/v1/status", &["GET", "HEAD"]),
    ("/metrics", &["GET", "HEAD"]),
    ("/v1/admin/compact", &["POST"]),
    ("/v1/replication/state", &["GET", "HEAD"]),
    ("/v1/replication/apply", &["POST"]),
    ("/v1/replication/snapshot", &["POST"]),
];

/// Every status each route can answer, whatever the method: what its handlers return, what the error
/// mapping of [`crate::error`] gives for the errors they can meet, 405 for a method not in [`ROUTES`], 503 when
/// a handler that waits runs past the request timeout, and on a follower what forwarding adds (503 leader
/// unreachable, 504 outcome unknown) besides relaying the leader's answer. The OpenAPI test checks that
/// `docs/openapi.yaml` documents exactly these per path; the metrics give each status its own series.
/// (Synchronous handlers, such as `/health-check`, finish on their first poll: the timeout cannot fire.)
pub const ROUTE_STATUSES: [(&str, &[u16]); 15] = [
    ("/put", &[200, 400, 405, 413, 415, 500, 503, 504, 507]),
    ("/read", &[200, 400, 404, 405, 500, 503]),
    ("/readrange", &[200, 400, 405, 500, 503]),
    ("/batchput", &[200, 400, 405, 413, 415, 500, 503, 504, 507]),
    ("/delete", &[200, 400, 405, 413, 500, 503, 504, 507]),
    ("/health-check", &[200, 405]),
    ("/readyz", &[200, 405, 503]),
    (
        "/v1/kv/{key}",
        &[200, 400, 404, 405, 413, 500, 503, 504, 507],
    ),
    ("/v1/kv", &[200, 400, 405, 500, 503]),
    ("/v1/status", &[200, 405]),
    ("/metrics", &[200, 405]),
    ("/v1/admin/compact", &[200, 405, 409, 500, 503, 507]),
    ("/v1/replication/state", &[200, 401, 405]),
    (
        "/v1/replication/apply",
        &[200, 400, 401, 405, 409, 413, 500, 503, 507],
    ),
    (
        "/v1/replication/snapshot",
        &[200, 400, 401, 405, 409, 413, 500, 503, 507],
    ),
];

/// The route a path belongs to (its metric label), if any.
pub fn route_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/v1/kv/") {
        return Some("/v1/kv/{key}");
    }
    ROUTES.iter().map(|(r, _)| *r).find(|r| *r == path)
}

/// Handles one request.
pub async fn handle(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> (&'static str, Response<Body>) {
    let path = req.uri().path().to_string();
    let Some(route) = route_of(&path) else {
        return (
            "other",
            ApiError::not_found(format!("no route for {} {path}", req.method())).into_response(),
        );
    };
    let allowed = ROUTES
        .iter()
        .find(|(r, _)| *r == route)
        .map_or(&[][..], |(_, m)| *m);
    if !allowed.contains(&req.method().as_str()) {
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} does not accept {}; use {}",
                route,
                req.method(),
                allowed.join(", ")
            ),
        )
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&allowed.join(", ")) {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return (route, resp);
    }
    let is_write = matches!(route, "/put" | "/batchput" | "/delete")
        || (route == "/v1/kv/{key}" && matches!(*req.method(), Method::PUT | Method::DELETE));
    if is_write {
        if let Some(node) = state.replication.follower() {
            return (
                route,
                forward(&state, node, req)
                    .await
                    .unwrap_or_else(ApiError::into_response),
            );
        }
        if let Some(refused) = state.replication.check_forwarded_history(req.headers()) {
            return (route, refused);
        }
    }
    if matches!(*req.method(), Method::GET | Method::HEAD)
        && matches!(route, "/read" | "/readrange" | "/v1/kv" | "/v1/kv/{key}")
    {
        if let Err(e) = wait_min_lsn(&state, &req).await {
            return (route, e.into_response());
        }
    }
    let result = match route {
        "/put" => put_json(&state, req).await,
        "/read" => read(&state, &req),
        "/readrange" => read_range(&state, &req),
        "/batchput" => batch_put(&state, req).await,
        "/delete" => delete(&state, &req).await,
        "/health-check" => Ok(text(StatusCode::OK, "OK")),
        "/readyz" => Ok(crate::replication::ready::respond(
            &state.service.engine().status(),
            &state.replication,
        )
        .await),
        "/v1/kv/{key}" => raw_kv(&state, req, &path).await,
        "/v1/kv" => listing(&state, &req),
        "/v1/status" => status(&state),
        "/metrics" => Ok(metrics(&state)),
        "/v1/admin/compact" => compact(&state).await,
        "/v1/replication/state" | "/v1/replication/apply" | "/v1/replication/snapshot" => {
            crate::replication::handle(&state.replication, req, state.max_body_bytes)
                .await
                .map(|v| json(&state, &v))
        }
        _ => Err(ApiError::not_found(format!("no route for {path}"))),
    };
    (route, result.unwrap_or_else(ApiError::into_response))
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(state: &ServerState, value: &serde_json::Value) -> Response<Body> {
    let body = value.to_string();
    state.metrics.add_bytes_out(body.len());
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn lsn_response(
    state: &ServerState,
    status: StatusCode,
    body: serde_json::Value,
    lsn: Lsn,
) -> Response<Body> {
    let mut resp = json(state, &body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("x-kv-lsn", header::HeaderValue::from(lsn.0));
    resp
}

/// The answer to a write that the engine acknowledged at `lsn` (`payload`: its key and value bytes). On a
/// leader with followers it wakes the shippers and, with synchronous acknowledgement, waits for the
/// configured number of followers: if they do not confirm within the timeout the answer is 504 with the
/// LSN (the write is durable on the leader and will still replicate; only the replication is unconfirmed).
async fn written(state: &ServerState, lsn: Lsn, payload: usize) -> Response<Body> {
    if let Some(hub) = state.replication.hub() {
        hub.record_write(lsn, payload);
        if let Err(have) = hub.wait_acks(lsn).await {
            let policy = hub.ack_policy();
            let message = format!(
                "write committed on the leader at LSN {lsn} but only {have} of the {} required followers confirmed it within {} ms; it is durable here and replication continues",
                policy.followers,
                policy.timeout.as_millis()
            );
            return lsn_response(
                state,
                StatusCode::GATEWAY_TIMEOUT,
                serde_json::json!({ "error": message, "lsn": lsn.0, "committed": true, "replicated": have }),
                lsn,
            );
        }
    }
    lsn_response(
        state,
        StatusCode::OK,
        serde_json::json!({ "lsn": lsn.0 }),
        lsn,
    )
}

/// Forwards a client write from a follower to its leader.
async fn forward(
    state: &ServerState,
    node: &crate::replication::FollowerNode,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let bytes = read_body(&parts.headers, body, state.max_body_bytes).await?;
    state.metrics.add_bytes_in(bytes.len());
    node.forward(parts.method, &path, &parts.headers, bytes)
        .await
}

/// Waits until this node has applied the request's minimum LSN, if it names one.
async fn wait_min_lsn(state: &ServerState, req: &Request<Incoming>) -> Result<(), ApiError> {
    // The common read names no minimum: skip parsing its query a second time.
    let named = req.uri().query().is_some_and(|q| q.contains("min_lsn"))
        || req
            .headers()
            .contains_key(crate::replication::MIN_LSN_HEADER);
    if !named {
        return Ok(());
    }
    let params = query(req.uri())?;
    let number = |v: &[u8], what: &str| {
        std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request(format!("{what} must be a non-negative integer")))
    };
    let min = match (
        params.get("min_lsn"),
        req.headers().get(crate::replication::MIN_LSN_HEADER),
    ) {
        (Some(v), _) => number(v, "min_lsn")?,
        (None, Some(h)) => number(h.as_bytes(), crate::replication::MIN_LSN_HEADER)?,
        (None, None) => return Ok(()),
    };
    // LSNs of two histories cannot be compared: while this follower refuses its leader, no answer.
    if let Some(node) = state.replication.follower() {
        if let Some(reason) = node.current_refusal().await {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{reason}; a min_lsn read cannot be answered meanwhile"),
            ));
        }
    }
    let cap = state.replication.max_read_wait;
    let wait = match params.get("max_wait_ms") {
        Some(v) => std::time::Duration::from_millis(number(v, "max_wait_ms")?).min(cap),
        None => cap,
    };
    let engine = state.service.engine();
    let applied = match state.replication.follower() {
        Some(node) => node.replica.state().applied.0,
        None => engine.last_lsn().0,
    };
    if applied >= min {
        return Ok(());
    }
    let reached = match state.replication.follower() {
        Some(node) => node.wait_applied(min, wait).await,
        None => {
            // A leader has every LSN it handed out; a higher one may still be in flight on another request.
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let now = engine.last_lsn().0;
                if now >= min {
                    break Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    break Err(now);
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    };
    reached.map_err(|applied| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node has applied up to LSN {applied}; the requested min_lsn {min} was not reached within {} ms",
                wait.as_millis()
            ),
        )
    })
}

/// Decodes `%XX` escapes strictly (a `%` not followed by two hex digits is an error); with `plus_is_space`,
/// `+` means a space (query strings, as Go's `url.ParseQuery` reads them).
pub fn percent_decode(s: &str, plus_is_space: bool) -> Result<Vec<u8>, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(hex.ok_or_else(|| {
                    ApiError::bad_request(format!("invalid percent-encoding at byte {i} of {s:?}"))
                })?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Query parameters, decoded; the first occurrence of a name wins (as in Go's `Query().Get`).
fn query(req_uri: &hyper::Uri) -> Result<BTreeMap<String, Vec<u8>>, ApiError> {
    let mut params = BTreeMap::new();
    for pair in req_uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8(percent_decode(name, true)?)
            .map_err(|_| ApiError::bad_request("parameter names must be UTF-8"))?;
        let value = percent_decode(value, true)?;
        params.entry(name).or_insert(value);
    }
    Ok(params)
}

fn required<'a>(params: &'a BTreeMap<String, Vec<u8>>, name: &str) -> Result<&'a [u8], ApiError> {
    match params.get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(ApiError::bad_request(format!(
            "query parameter {name:?} must not be empty"
        ))),
        None => Err(ApiError::bad_request(format!(
            "missing query parameter {name:?}"
        ))),
    }
}

fn limit_param(
    params: &BTreeMap<String, Vec<u8>>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(default),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0 && n <= max)
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be an integer from 1 to {max}"))
            }),
    }
}

/// Rejects bodies whose declared content type cannot be JSON. No header, `application/json`, `text/plain` and
/// curl's default for `-d` (`application/x-www-form-urlencoded`) are accepted, so existing clients keep working.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if ct.is_empty()
        || ct == "application/json"
        || ct.ends_with("+json")
        || ct == "text/plain"
        || ct == "application/x-www-form-urlencoded"
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("expected a JSON body, got Content-Type {ct}"),
        ))
    }
}

async fn json_body(state: &ServerState, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let (parts, body) = req.into_parts();
    check_json_content_type(&parts.headers)?;
    let bytes = read_body(&parts.headers, body, state.max_body_bytes).await?;
    state.metrics.add_bytes_in(bytes.len());
    Ok(bytes)
}

/// Runs a write. When the durability mode makes writes wait for an fsync, it runs on the blocking pool so
/// the async workers stay free; otherwise a write is one `pwrite` (microseconds) and runs inline, which
/// is cheaper than the hop to another thread.
async fn run_write<T: Send + 'static>(
    state: &ServerState,
    f: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, ApiError> {
    if state.inline_writes {
        return f().map_err(ApiError::from);
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("request task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

#[derive(Deserialize)]
struct PutRequest {
    key: String,
    value: Option<String>,
    data: Option<String>,
}

async fn put_json(state: &ServerState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bytes = json_body(state, req).await?;
    let body: PutRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let value = match (body.value, body.data) {
        (Some(v), None) | (None, Some(v)) => v,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either \"value\" or \"data\", not both",
            ))
        }
        (None, None) => return Err(ApiError::bad_request("missing field \"value\"")),
    };
    let service = state.service.clone();
    let payload = body.key.len() + value.len();
    let lsn = run_write(state, move || {
        service.put(body.key.as_bytes(), value.as_bytes())
    })
    .await?;
    Ok(written(state, lsn, payload).await)
}

fn read(state: &ServerState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let params = query(req.uri())?;
    let key = required(&params, "key")?;
    // A read is one keydir lookup and one positional read of (usually cached) bytes: run it inline.
    Ok(value_response(state, state.service.read(key)?))
}

/// A value as raw bytes.
fn value_response(state: &ServerState, value: kv_domain::Value) -> Response<Body> {
    state.metrics.add_bytes_out(value.len());
    let mut resp = Response::new(full(value.into_bytes()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// A streamed JSON response.
fn streamed_json(body: ChannelBody) -> Response<Body> {
    let mut resp = Response::new(body.boxed());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn batch_put(
    state: &ServerState,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let bytes = json_body(state, req).await?;
    let StringPairs(pairs) = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid JSON body (expected an object of string values with distinct keys): {e}"
        ))
    })?;
    // An empty batch writes nothing, so it has no LSN of its own to answer with.
    if pairs.is_empty() {
        return Err(ApiError::bad_request(
            "empty batch: the object must hold at least one key",
        ));
    }
    let mut batch = WriteBatch::new();
    let mut payload = 0;
    for (k, v) in pairs {
        payload += k.len() + v.len();
        batch.put(k, v);
    }
    let service = state.service.clone();
    let lsn = run_write(state, move || service.batch_put(&batch)).await?;
    Ok(written(state, lsn, payload).await)
}

async fn delete(state: &ServerState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let params = query(req.uri())?;
    let key = required(&params, "key")?.to_vec();
    let payload = key.len();
    let service = state.service.clone();
    let lsn = run_write(state, move || service.delete(&key)).await?;
    Ok(written(state, lsn, payload).await)
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, std::io::Error> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what} is not valid UTF-8; /readrange serves text only, use GET /v1/kv?encoding=base64"))
    })
}

/// `/readrange`: a JSON object streamed page by page; aborted (truncated body) if a key or value is not
/// UTF-8, since JSON strings could only carry it altered.
fn read_range(state: &ServerState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let params = query(req.uri())?;
    let start = required(&params, "start")?.to_vec();
    let end = required(&params, "end")?.to_vec();
    let limit = limit_param(&params, usize::MAX, usize::MAX)?;
    // Validate (bounds order) and fetch the first page before answering 200, so bad input gets its status.
    let first = state.service.read_range(&start, &end, PAGE.min(limit))?;
    let (tx, body) = ChannelBody::channel(state.metrics.clone());
    if req.method() == Method::HEAD {
        return Ok(streamed_json(body)); // the status is known; nothing will read the body
    }
    let service = state.service.clone();
    tokio::task::spawn_blocking(move || {
        let range = KeyRange::inclusive(start, end);
        let mut page = first;
        let mut want = PAGE.min(limit);
        let mut sent = 0usize;
        let mut out = String::from("{");
        loop {
            for e in &page {
                let item = utf8(&e.key, "a key").and_then(|k| {
                    utf8(&e.value, &format!("the value of key {k:?}")).map(|v| (k, v))
                });
                match item {
                    Ok((k, v)) => {
                        if sent > 0 {
                            out.push(',');
                        }
                        out.push_str(&serde_json::Value::String(k).to_string());
                        out.push(':');
                        out.push_str(&serde_json::Value::String(v).to_string());
                        sent += 1;
                        if out.len() >= CHUNK_BYTES
                            && tx
                                .blocking_send(Ok(Bytes::from(std::mem::take(&mut out))))
                                .is_err()
                        {
                            return; // the client went away
                        }
                    }
                    Err(err) => {
                        tracing::warn!("aborting /readrange: {err}");
                        let _ = tx.blocking_send(Err(err));
                        return;
                    }
                }
            }
            if tx
                .blocking_send(Ok(Bytes::from(std::mem::take(&mut out))))
                .is_err()
            {
                return; // the client went away
            }
            let Some(last) = page.last().map(|e| e.key.clone()) else {
                break;
            };
            if sent >= limit || page.len() < want {
                break;
            }
            want = PAGE.min(limit - sent);
            match service.read_range_page(&range.after(&last), want) {
                Ok(p) if !p.is_empty() => page = p,
                Ok(_) => break,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
        }
        let _ = tx.blocking_send(Ok(Bytes::from_static(b"}")));
    });
    Ok(streamed_json(body))
}

fn encoded_field(name: &str, bytes: &[u8], force_base64: bool) -> String {
    match (force_base64, std::str::from_utf8(bytes)) {
        (false, Ok(s)) => format!(
            "{}:{}",
            serde_json::Value::String(name.into()),
            serde_json::Value::String(s.into())
        ),
        _ => format!(
            "{}:{}",
            serde_json::Value::String(format!("{name}_base64")),
            serde_json::Value::String(STANDARD.encode(bytes))
        ),
    }
}

/// `/v1/kv` listing: `{"items":[{"key":..,"value":..},...],"next_cursor":..}`, streamed. A key or value that is
/// not UTF-8 (or every one, with `encoding=base64`) comes as `key_base64` / `value_base64` instead.
fn listing(state: &ServerState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let params = query(req.uri())?;
    let force_base64 = match params.get("encoding").map(Vec::as_slice) {
        None | Some(b"utf8") => false,
        Some(b"base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "encoding must be utf8 or base64, not {:?}",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let limit = limit_param(&params, LISTING_DEFAULT, LISTING_MAX)?;
    let bound = |name: &str| {
        params
            .get(name)
            .filter(|v| !v.is_empty())
            .map_or(Bound::Unbounded, |v| Bound::Included(Key::from(v.clone())))
    };
    let mut range = KeyRange {
        start: bound("start"),
        end: bound("end"),
    };
    if let Some(cursor) = params.get("cursor").filter(|c| !c.is_empty()) {
        let last = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| ApiError::bad_request("invalid cursor"))?;
        range = range.after(&last);
    }
    if let (Bound::Included(s), Bound::Included(e)) = (&range.start, &range.end) {
        if s > e {
            return Err(AppError::InvertedRange {
                start: String::from_utf8_lossy(s).into(),
                end: String::from_utf8_lossy(e).into(),
            }
            .into());
        }
    }
    let first = state.service.read_range_page(&range, PAGE.min(limit))?;
    let (tx, body) = ChannelBody::channel(state.metrics.clone());
    if req.method() == Method::HEAD {
        return Ok(streamed_json(body)); // the status is known; nothing will read the body
    }
    let service = state.service.clone();
    tokio::task::spawn_blocking(move || {
        let mut page = first;
        let mut want = PAGE.min(limit);
        let mut sent = 0usize;
        let mut last: Option<Key> = None;
        let mut out = String::from("{\"items\":[");
        loop {
            for e in &page {
                if sent > 0 {
                    out.push(',');
                }
                out.push('{');
                out.push_str(&encoded_field("key", &e.key, force_base64));
                out.push(',');
                out.push_str(&encoded_field("value", &e.value, force_base64));
                out.push('}');
                sent += 1;
                if out.len() >= CHUNK_BYTES
                    && tx
                        .blocking_send(Ok(Bytes::from(std::mem::take(&mut out))))
                        .is_err()
                {
                    return;
                }
            }
            if let Some(l) = page.last() {
                last = Some(l.key.clone());
            }
            if tx
                .blocking_send(Ok(Bytes::from(std::mem::take(&mut out))))
                .is_err()
            {
                return;
            }
            if sent >= limit || page.len() < want {
                break;
            }
            let Some(l) = &last else { break };
            want = PAGE.min(limit - sent);
            match service.read_range_page(&range.after(l), want) {
                Ok(p) if !p.is_empty() => page = p,
                Ok(_) => break,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            }
        }
        // A cursor only when the page is full and something follows it.
        let next = match &last {
            Some(l) if sent >= limit => match service.read_range_page(&range.after(l), 1) {
                Ok(p) if !p.is_empty() => {
                    serde_json::Value::String(URL_SAFE_NO_PAD.encode(l.as_bytes()))
                }
                _ => serde_json::Value::Null,
            },
            _ => serde_json::Value::Null,
        };
        let _ = tx.blocking_send(Ok(Bytes::from(format!("],\"next_cursor\":{next}}}"))));
    });
    Ok(streamed_json(body))
}

async fn raw_kv(
    state: &ServerState,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let key = percent_decode(path.trim_start_matches("/v1/kv/"), false)?;
    if key.is_empty() {
        return Err(AppError::EmptyKey.into());
    }
    match *req.method() {
        Method::GET | Method::HEAD => Ok(value_response(state, state.service.read(&key)?)),
        Method::DELETE => {
            let payload = key.len();
            let service = state.service.clone();
            let lsn = run_write(state, move || service.delete(&key)).await?;
            Ok(written(state, lsn, payload).await)
        }
        _ => {
            let (parts, body) = req.into_parts();
            let value = read_body(&parts.headers, body, state.max_body_bytes).await?;
            state.metrics.add_bytes_in(value.len());
            let payload = key.len() + value.len();
            let service = state.service.clone();
            let lsn = run_write(state, move || service.put(&key, &value)).await?;
            Ok(written(state, lsn, payload).await)
        }
    }
}

fn status(state: &ServerState) -> Result<Response<Body>, ApiError> {
    let s = state.service.engine().status();
    let ratio = if s.disk_bytes == 0 {
        0.0
    } else {
        s.garbage_bytes as f64 / s.disk_bytes as f64
    };
    Ok(json(
        state,
        &serde_json::json!({
            "role": state.replication.role_name(),
            "last_lsn": s.last_lsn.0,
            "keys": s.keys,
            "segments": s.segments,
            "disk_bytes": s.disk_bytes,
            "garbage_bytes": s.garbage_bytes,
            "garbage_ratio": ratio,
            "durability": s.durability.to_string(),
            "poisoned": s.poisoned,
            "read_only": s.read_only,
            "writes": s.writes,
            "fsyncs": s.fsyncs,
            "recovery": {
                "segments": s.recovery.segments,
                "records": s.recovery.records,
                "truncated_bytes": s.recovery.truncated_bytes,
                "truncated_copy": s.recovery.truncated_copy,
                "notes": s.recovery.notes,
            },
            "followers": state.replication.hub().map_or(serde_json::json!([]), |h| h.followers_json()),
            "replication": state.replication.follower().map(|f| f.status_json()),
            "compacting": s.compacting,
            "compaction": compaction_json(&s.compaction),
            "compaction_progress": s.compaction_progress.as_ref().map(compaction_json),
        }),
    ))
}

async fn compact(state: &ServerState) -> Result<Response<Body>, ApiError> {
    let service = state.service.clone();
    let s = tokio::task::spawn_blocking(move || service.compact())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("compaction task failed: {e}"),
            )
        })??;
    Ok(json(state, &compaction_json(&s)))
}

fn compaction_json(s: &kv_domain::CompactionStats) -> serde_json::Value {
    serde_json::json!({
        "runs": s.runs,
        "input_segments": s.input_segments,
        "output_segments": s.output_segments,
        "input_bytes": s.input_bytes,
        "output_bytes": s.output_bytes,
        "records_copied": s.records_copied,
        "millis": s.millis,
    })
}

fn metrics(state: &ServerState) -> Response<Body> {
    let mut text = state.metrics.render(
        &state.service.engine().status(),
        state.replication.role_name(),
    );
    if let Some(hub) = state.replication.hub() {
        text.push_str(&hub.metrics_text());
    }
    if let Some(node) = state.replication.follower() {
        text.push_str(&node.metrics_text());
    }
    let mut resp = Response::new(full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_is_strict_and_binary_safe() {
        assert_eq!(percent_decode("a%20b+c", true).unwrap(), b"a b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), b"a+b");
        assert_eq!(percent_decode("%ff%00", false).unwrap(), vec![0xff, 0]);
        assert!(percent_decode("%zz", false).is_err());
        assert!(percent_decode("abc%4", false).is_err());
    }

    #[test]
    fn every_route_resolves() {
        for (route, _) in ROUTES {
            let path = route.replace("{key}", "k");
            assert_eq!(route_of(&path), Some(route));
        }
        assert_eq!(route_of("/nope"), None);
    }

    #[test]
    fn every_route_has_its_statuses_listed() {
        let routes: Vec<_> = ROUTES.iter().map(|(r, _)| *r).collect();
        let listed: Vec<_> = ROUTE_STATUSES.iter().map(|(r, _)| *r).collect();
        assert_eq!(routes, listed);
        for (route, statuses) in ROUTE_STATUSES {
            assert!(
                statuses.contains(&200) && statuses.contains(&405),
                "{route}"
            );
        }
    }

    #[test]
    fn every_route_that_serves_get_serves_head() {
        for (route, methods) in ROUTES {
            if methods.contains(&"GET") {
                assert!(methods.contains(&"HEAD"), "{route} serves GET but not HEAD");
            }
        }
    }
}
