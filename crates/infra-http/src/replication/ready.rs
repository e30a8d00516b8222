//! Readiness (`GET /readyz`): whether this node can do its job now, as opposed to `/health-check`, which
//! only says the process answers (the Go system's liveness check, always `OK`).
//!
//! A node is ready when all of these hold; otherwise the answer is 503 `{"ready":false,"reasons":[...]}`
//! with one sentence per failed condition:
//! - its engine accepts writes (not poisoned by an I/O error, not opened read-only on a full disk);
//! - on a follower: no snapshot is half-installed (the contents would be a mix of two points in time);
//! - on a follower: its leader answers (a probe of `GET /v1/replication/state`, within a second), is a
//!   leader, accepts the token, and holds this follower's history;
//! - in a Raft cluster: it knows a leader, and has applied what its log held at start
//!   (`RaftNode::ready_reasons`).
//!
//! A leader's readiness never depends on its followers: a leader whose followers are all down still
//! serves every write (compose starts the followers only once the leader is ready).

use hyper::{header, Response, StatusCode};
use kv_domain::EngineStatus;
use serde_json::json;

use super::Replication;
use crate::error::{full, Body};

/// Why the engine cannot do its job, if it cannot.
pub fn engine_reasons(status: &EngineStatus) -> Vec<String> {
    let poisoned = status
        .poisoned
        .iter()
        .map(|why| format!("the engine refuses writes (poisoned) until restarted: {why}"));
    let read_only = status
        .read_only
        .iter()
        .map(|why| format!("the store opened read-only: {why}"));
    poisoned.chain(read_only).collect()
}

/// Every reason this node is not ready; empty when it is. Probes the leader on a follower.
pub async fn reasons(engine: &EngineStatus, repl: &Replication) -> Vec<String> {
    let mut reasons = engine_reasons(engine);
    if let Some(cluster) = &repl.cluster {
        reasons.extend(cluster.raft().ready_reasons());
        reasons.extend(cluster.refusing());
        if let Err(why) = cluster.probe_leader(repl.token.as_ref()).await {
            reasons.push(why);
        }
    }
    if let Some(node) = repl.follower() {
        if node.replica.state().snapshot_in_progress {
            reasons.push("a snapshot from the leader is half-installed: this follower's contents are a mix of old and new until it completes".into());
        }
        if let Err(why) = node.probe_leader().await {
            reasons.push(why);
        }
    }
    reasons
}

/// The `/readyz` answer: 200 `{"ready":true}` or 503 `{"ready":false,"reasons":[...]}`.
pub async fn respond(engine: &EngineStatus, repl: &Replication) -> Response<Body> {
    let reasons = reasons(engine, repl).await;
    let (status, body) = if reasons.is_empty() {
        (StatusCode::OK, json!({ "ready": true }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "ready": false, "reasons": reasons }),
        )
    };
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_engine_is_a_reason() {
        assert!(engine_reasons(&EngineStatus::default()).is_empty());
        let poisoned = EngineStatus {
            poisoned: Some("fsync failed: EIO".into()),
            ..EngineStatus::default()
        };
        let reasons = engine_reasons(&poisoned);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("poisoned") && reasons[0].contains("EIO"));
    }
}
