//! Reads with a minimum LSN: any read may name one (`min_lsn` query parameter or `x-kv-min-lsn` header,
//! e.g. the LSN a write returned). It then waits until this node has applied that LSN, up to
//! `max_wait_ms` (query; default and cap set by the server), and answers 503 if it has not, or at once
//! while a follower refuses its leader's history.

use hyper::{Request, StatusCode};
use kv_domain::Engine;

use crate::body::RequestBody;
use crate::error::ApiError;
use crate::replication::{Replication, MIN_LSN_HEADER};
use crate::request::{number, query};

/// Waits until this node has applied the request's minimum LSN, if it names one.
pub async fn wait(
    engine: &dyn Engine,
    replication: &Replication,
    req: &Request<RequestBody>,
) -> Result<(), ApiError> {
    // The common read names no minimum: skip parsing its query a second time.
    let named = req.uri().query().is_some_and(|q| q.contains("min_lsn"))
        || req.headers().contains_key(MIN_LSN_HEADER);
    if !named {
        return Ok(());
    }
    let params = query(req.uri())?;
    let min = match (params.get("min_lsn"), req.headers().get(MIN_LSN_HEADER)) {
        (Some(v), _) => number(v, "min_lsn")?,
        (None, Some(h)) => number(h.as_bytes(), MIN_LSN_HEADER)?,
        (None, None) => return Ok(()),
    };
    // LSNs of two histories cannot be compared: while this follower refuses its leader, no answer.
    if let Some(node) = replication.follower() {
        if let Some(reason) = node.current_refusal().await {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{reason}; a min_lsn read cannot be answered meanwhile"),
            ));
        }
    }
    let cap = replication.max_read_wait;
    let wait = match params.get("max_wait_ms") {
        Some(v) => std::time::Duration::from_millis(number(v, "max_wait_ms")?).min(cap),
        None => cap,
    };
    let applied = match replication.follower() {
        Some(node) => node.replica.state().applied.0,
        None => engine.last_lsn().0,
    };
    if applied >= min {
        return Ok(());
    }
    let reached = match replication.follower() {
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
