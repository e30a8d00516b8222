//! The follower side: the replication endpoints' state, write forwarding, and waits for a minimum LSN.
//!
//! ## Forwarding
//! Client writes (put, batchput, delete, in either API) are forwarded to the leader as they came (method,
//! path, query, content type, body) and the leader's answer is returned as it is, `x-kv-lsn` included.
//! A forwarded write is sent exactly once and never retried: if the connection to the leader fails before
//! the request is written the client gets 503 (not applied); if it fails or times out after, 504 with an
//! "outcome unknown" message (the leader may have applied it; re-sending is the client's decision, and
//! puts and deletes are idempotent). Pooled connections idle for long are not reused, so a connection the
//! leader closed for idleness does not turn a write into an unknown outcome.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Response, StatusCode};
use kv_app::Replica;
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::watch;

use crate::client::{Client, ClientError};
use crate::error::{full, ApiError, Body};

/// Pooled leader connections idle longer than this are dropped rather than reused (the server side closes
/// idle keep-alive connections after its header timeout).
const POOL_IDLE: Duration = Duration::from_secs(2);
/// How long a forwarded write may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// A follower's replication state.
pub struct FollowerNode {
    /// The follower use cases.
    pub replica: Replica,
    /// The leader's base URL.
    pub leader: String,
    pool: Mutex<Vec<(Client, Instant)>>,
    /// Bumped after every apply, to wake read-your-writes waits.
    applied: watch::Sender<u64>,
    /// The leader's last LSN as of its latest request, and when that was.
    leader_lsn: AtomicU64,
    last_contact: Mutex<Option<Instant>>,
    /// When this follower was last caught up with what the leader had said it had.
    caught_up_at: Mutex<Instant>,
    forwarded: AtomicU64,
    forward_failures: AtomicU64,
}

impl std::fmt::Debug for FollowerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerNode")
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

impl FollowerNode {
    /// A follower of `leader` (base URL).
    pub fn new(replica: Replica, leader: &str) -> Result<Arc<Self>, ClientError> {
        Client::new(leader)?; // validate the URL now, not at the first write
        let applied = replica.state().applied.0;
        Ok(Arc::new(Self {
            replica,
            leader: leader.trim_end_matches('/').to_string(),
            pool: Mutex::new(Vec::new()),
            applied: watch::channel(applied).0,
            leader_lsn: AtomicU64::new(0),
            last_contact: Mutex::new(None),
            caught_up_at: Mutex::new(Instant::now()),
            forwarded: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
        }))
    }

    /// Records a leader request: its last LSN (header) and our applied LSN after it.
    pub fn contact(&self, leader_lsn: Option<u64>, applied: u64) {
        *self.last_contact.lock() = Some(Instant::now());
        if applied == 0 {
            return; // a snapshot page: nothing counts as applied until the last one
        }
        // Wake waiters even if the value is unchanged (a snapshot can finish below an earlier position).
        if let Some(l) = leader_lsn {
            self.leader_lsn.fetch_max(l, Ordering::Relaxed);
        }
        if applied >= self.leader_lsn.load(Ordering::Relaxed) {
            *self.caught_up_at.lock() = Instant::now();
        }
        self.applied.send_modify(|a| *a = applied);
    }

    /// Waits until this node has applied `lsn`, up to `timeout`. The watch only wakes the waiter; the
    /// decision reads the replica's state, which is 0 while a (new) snapshot is unfinished, whatever was
    /// applied before it.
    pub async fn wait_applied(&self, lsn: u64, timeout: Duration) -> Result<(), u64> {
        let mut rx = self.applied.subscribe();
        let reached = |_: &u64| self.replica.state().applied.0 >= lsn;
        let waited = tokio::time::timeout(timeout, rx.wait_for(reached)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(self.replica.state().applied.0),
        }
    }

    /// (applied LSN, the leader's last LSN as last reported, entries behind, seconds since last caught up).
    fn lag(&self) -> (u64, u64, u64, f64) {
        let applied = self.replica.state().applied.0;
        let leader_lsn = self.leader_lsn.load(Ordering::Relaxed);
        let behind = leader_lsn.saturating_sub(applied);
        let secs = if behind == 0 {
            0.0
        } else {
            self.caught_up_at.lock().elapsed().as_secs_f64()
        };
        (applied, leader_lsn, behind, secs)
    }

    /// The follower part of the status document.
    pub fn status_json(&self) -> serde_json::Value {
        let st = self.replica.state();
        let (applied, leader_lsn, behind, secs) = self.lag();
        json!({
            "leader": self.leader,
            "history": st.history,
            "applied_lsn": applied,
            "snapshot_in_progress": st.snapshot_in_progress,
            "leader_lsn": leader_lsn,
            "lag_entries": behind,
            "lag_seconds": secs,
            "last_contact_ms_ago": self.last_contact.lock().map(|t| t.elapsed().as_millis() as u64),
            "forwarded_writes": self.forwarded.load(Ordering::Relaxed),
            "forward_failures": self.forward_failures.load(Ordering::Relaxed),
        })
    }

    /// Prometheus lines.
    pub fn metrics_text(&self) -> String {
        let (applied, leader_lsn, behind, secs) = self.lag();
        let mut out = String::new();
        // Counters end in `_total` and nothing else does (Prometheus naming; promtool checks it).
        for (name, kind, help, value) in [
            (
                "kv_replication_applied_lsn",
                "gauge",
                "Durable applied LSN of this follower.",
                applied as f64,
            ),
            (
                "kv_replication_leader_lsn",
                "gauge",
                "The leader's last LSN as last reported to this follower.",
                leader_lsn as f64,
            ),
            (
                "kv_replication_lag_entries",
                "gauge",
                "Writes this follower lacks, as of the leader's last report.",
                behind as f64,
            ),
            (
                "kv_replication_lag_seconds",
                "gauge",
                "Time since this follower was last caught up, while behind.",
                secs,
            ),
            (
                "kv_replication_forwarded_writes_total",
                "counter",
                "Client writes forwarded to the leader.",
                self.forwarded.load(Ordering::Relaxed) as f64,
            ),
            (
                "kv_replication_forward_failures_total",
                "counter",
                "Forwarded writes that failed to reach the leader or got no answer.",
                self.forward_failures.load(Ordering::Relaxed) as f64,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }

    /// Forwards a client write to the leader (see the module doc).
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, ApiError> {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut client = {
            let mut pool = self.pool.lock();
            pool.retain(|(_, used)| used.elapsed() < POOL_IDLE);
            match pool.pop() {
                Some((c, _)) => c,
                None => Client::new(&self.leader)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
            }
        };
        let pass: Vec<(HeaderName, HeaderValue)> = [hyper::header::CONTENT_TYPE]
            .iter()
            .filter_map(|n| headers.get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        let sent = tokio::time::timeout(
            FORWARD_TIMEOUT,
            client.send_with(method, path_and_query, &pass, body),
        )
        .await;
        let failed = |status, msg: String| {
            self.forward_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(leader = %self.leader, "forwarding a write failed: {msg}");
            Err(ApiError::new(status, msg))
        };
        match sent {
            Err(_) => failed(
                StatusCode::GATEWAY_TIMEOUT,
                format!("outcome unknown: the leader at {} did not answer within {FORWARD_TIMEOUT:?}; the write may or may not have been applied (it was not retried)", self.leader),
            ),
            Ok(Err(ClientError::Unreachable { source, .. })) => failed(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("leader unreachable: cannot reach the leader at {} ({source}); the write was not applied. Reads on this follower keep working", self.leader),
            ),
            Ok(Err(e)) => failed(
                StatusCode::GATEWAY_TIMEOUT,
                format!("outcome unknown: the connection to the leader at {} failed after the write was sent ({e}); it may or may not have been applied (it was not retried)", self.leader),
            ),
            Ok(Ok((status, resp_headers, resp_body))) => {
                self.pool.lock().push((client, Instant::now()));
                let mut resp = Response::new(full(resp_body));
                *resp.status_mut() = status;
                for name in [hyper::header::CONTENT_TYPE, HeaderName::from_static("x-kv-lsn")] {
                    if let Some(v) = resp_headers.get(&name) {
                        resp.headers_mut().insert(name, v.clone());
                    }
                }
                resp.headers_mut().insert(
                    HeaderName::from_static("x-kv-forwarded-to"),
                    HeaderValue::from_str(&self.leader).unwrap_or(HeaderValue::from_static("leader")),
                );
                Ok(resp)
            }
        }
    }
}
