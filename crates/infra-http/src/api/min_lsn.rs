//! Reads with a minimum LSN: any read may name one (`min_lsn` query parameter or `x-kv-min-lsn` header,
//! e.g. the LSN a write returned). It then waits until this node has applied that LSN, up to
//! `max_wait_ms` (query; default and cap set by the server), and answers 503 if it has not, or at once
//! while a follower refuses its leader's history.

use hyper::{Request, StatusCode};
use kv_app::wait_for_lsn;
use kv_domain::{AppliedLsn, Engine, Lsn};

use crate::applied::{ClusterApplied, LocalApplied};

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
    // A leader has every LSN it handed out; a higher one may still be in flight on another request, and
    // its write signals it once acknowledged.
    let local = LocalApplied {
        engine,
        signal: &replication.written,
    };
    let member = replication
        .cluster
        .as_deref()
        .map(|cluster| ClusterApplied { engine, cluster });
    let node: &dyn AppliedLsn = match (replication.follower(), &member) {
        (Some(node), _) => node.as_ref(),
        (None, Some(member)) => member,
        (None, None) => &local,
    };
    wait_for_lsn(node, Lsn(min), wait)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}
