//! Readiness (`GET /readyz`): whether this node can do its job now, as opposed to `/health-check`, which
//! only says the process answers (the Go system's liveness check, always `OK`).
//!
//! A node is ready when all of these hold; otherwise the answer is 503 `{"ready":false,"reasons":[...]}`
//! with one sentence per failed condition:
//! - its engine accepts writes (not poisoned by an I/O error, not opened read-only on a full disk);
//! - on a follower: no snapshot is half-installed (the contents would be a mix of two points in time);
//! - on a follower: its leader answers (a probe of `GET /v1/replication/state`, within a second, whose
//!   outcome answers for [`PROBE_REUSE`]), is a leader, accepts the token, and holds this follower's
//!   history;
//! - in a Raft cluster: it knows a leader, and has applied what its log held at start
//!   (`RaftNode::ready_reasons`).
//!
//! A leader's readiness never depends on its followers: a leader whose followers are all down still
//! serves every write (compose starts the followers only once the leader is ready).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::{header, Response, StatusCode};
use kv_domain::EngineStatus;
use serde_json::json;

use super::Replication;
use crate::error::{full, Body};

/// How long one probe of the leader answers for ([`ProbeMemo`]).
pub const PROBE_REUSE: Duration = Duration::from_millis(500);

/// The outcome of the latest probe of the leader, reused for [`PROBE_REUSE`]. `/readyz` is open to
/// anyone and each probe is a request to the leader carrying the replication token, so however often
/// readiness is asked a node probes its leader at most once per window; callers that arrive while a
/// probe runs wait for it (bounded by its own timeout) and take its outcome. The probe runs in a task
/// of its own: a caller that goes away (its client closed the connection) does not cancel it, so it
/// still stores its outcome for the next caller rather than letting each one start another.
#[derive(Debug, Default, Clone)]
pub struct ProbeMemo(Arc<tokio::sync::Mutex<Option<Probed>>>);

/// When a probe ended, and its outcome.
type Probed = (Instant, Result<(), String>);

impl ProbeMemo {
    /// The latest outcome if it is younger than [`PROBE_REUSE`], else `probe`'s, kept for the next.
    pub async fn get_or_probe<F>(&self, probe: F) -> Result<(), String>
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let memo = self.0.clone();
        let task = tokio::spawn(async move {
            let mut last = memo.lock_owned().await;
            if let Some((at, outcome)) = last.as_ref() {
                if at.elapsed() < PROBE_REUSE {
                    return outcome.clone();
                }
            }
            let outcome = probe.await;
            *last = Some((Instant::now(), outcome.clone()));
            outcome
        });
        task.await
            .unwrap_or_else(|e| Err(format!("the probe of the leader did not finish: {e}")))
    }

    /// Drops the latest outcome: what it reported has changed. A probe running now stores its own.
    pub fn forget(&self) {
        if let Ok(mut last) = self.0.try_lock() {
            *last = None;
        }
    }
}

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
        // The refusal itself too: it starts with a leader's request, which a memoised probe
        // outcome cannot know of.
        match node.probe_leader().await {
            Err(why) => reasons.push(why),
            Ok(()) => reasons.extend(node.refusal()),
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

    #[tokio::test]
    async fn a_probe_answers_for_its_window_and_concurrent_askers_share_it() {
        let memo = std::sync::Arc::new(ProbeMemo::default());
        let probes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ask = |outcome: Result<(), String>| {
            let (memo, probes) = (memo.clone(), probes.clone());
            async move {
                memo.get_or_probe(async move {
                    probes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    outcome
                })
                .await
            }
        };
        let answers =
            futures_join_all((0..20).map(|_| tokio::spawn(ask(Err("down".into()))))).await;
        assert!(answers.iter().all(|a| a == &Err("down".to_string())));
        assert_eq!(probes.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(ask(Ok(())).await, Err("down".into()), "still in its window");
        tokio::time::sleep(PROBE_REUSE).await;
        assert_eq!(ask(Ok(())).await, Ok(()), "a new probe after the window");
        assert_eq!(probes.load(std::sync::atomic::Ordering::SeqCst), 2);
        // A caller that goes away mid-probe does not cancel it: the next one takes its outcome.
        tokio::time::sleep(PROBE_REUSE).await;
        let gone = tokio::spawn(ask(Err("cancelled?".into())));
        tokio::time::sleep(Duration::from_millis(10)).await;
        gone.abort();
        assert_eq!(ask(Ok(())).await, Err("cancelled?".into()));
        assert_eq!(probes.load(std::sync::atomic::Ordering::SeqCst), 3);
        memo.forget();
        assert_eq!(ask(Ok(())).await, Ok(()), "forgotten: probed again");
        assert_eq!(probes.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    async fn futures_join_all<T>(
        handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for h in handles.collect::<Vec<_>>() {
            out.push(h.await.unwrap());
        }
        out
    }

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
