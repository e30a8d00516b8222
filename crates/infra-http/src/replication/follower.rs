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
//!
//! ## Refusing a leader of another history
//! A follower that holds a history refuses a leader of another one (a leader restarted on an empty or
//! foreign data directory). It learns of one from the leader's own requests (the handshake and every
//! frame name the leader's history), from a probe of the leader's `/v1/replication/state` (readiness),
//! and from a leader's refusal of a forwarded write. While it refuses:
//! - forwarded writes answer 503 naming the mismatch, and the write is not sent: the stranger would
//!   acknowledge it and the write would be lost once the real leader returns;
//! - reads with `min_lsn` answer 503: LSNs of two histories cannot be compared;
//! - `/readyz` answers 503.
//!
//! Before refusing a write or a read, a recorded refusal is checked again against the leader (one probe),
//! so the refusal ends as soon as the leader of our history is back. Every forwarded write also carries
//! the follower's history ([`super::EXPECTED_HISTORY_HEADER`]) and a leader of another history refuses it
//! (409 with its history), which closes the window before the follower has noticed.

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

use super::{Secret, EXPECTED_HISTORY_HEADER, HISTORY_HEADER, TOKEN_HEADER};
use crate::client::{Client, ClientError};
use crate::error::{full, ApiError, Body};
use crate::prom::{Kind, Writer};

/// Pooled leader connections idle longer than this are dropped rather than reused (the server side closes
/// idle keep-alive connections after its header timeout).
const POOL_IDLE: Duration = Duration::from_secs(2);
/// How long a forwarded write may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a probe of the leader's state may take (readiness answers within the health check's timeout).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// The replication token, sent with probes of the leader.
    token: Option<Secret>,
    /// Why this follower refuses its leader now (a history mismatch), if it does; see the module doc.
    refused: Mutex<Option<String>>,
    /// The latest probe of the leader, shared by readiness checks for a moment.
    probes: super::ready::ProbeMemo,
    /// This node, for the probe's own task.
    me: std::sync::Weak<FollowerNode>,
}

impl std::fmt::Debug for FollowerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FollowerNode")
            .field("leader", &self.leader)
            .finish_non_exhaustive()
    }
}

impl FollowerNode {
    /// A follower of `leader` (base URL), probing it with `token`.
    pub fn new(
        replica: Replica,
        leader: &str,
        token: Option<Secret>,
    ) -> Result<Arc<Self>, ClientError> {
        Client::new(leader)?; // validate the URL now, not at the first write
        let applied = replica.state().applied.0;
        Ok(Arc::new_cyclic(|me| Self {
            replica,
            leader: leader.trim_end_matches('/').to_string(),
            pool: Mutex::new(Vec::new()),
            applied: watch::channel(applied).0,
            leader_lsn: AtomicU64::new(0),
            last_contact: Mutex::new(None),
            caught_up_at: Mutex::new(Instant::now()),
            forwarded: AtomicU64::new(0),
            forward_failures: AtomicU64::new(0),
            token,
            refused: Mutex::new(None),
            probes: super::ready::ProbeMemo::default(),
            me: me.clone(),
        }))
    }

    /// Why this follower refuses its leader now, if it does (see the module doc).
    pub fn refusal(&self) -> Option<String> {
        self.refused.lock().clone()
    }

    /// Compares a leader's history (`who`: whose, for the message) with the one this follower holds, and
    /// starts or ends the refusal accordingly. A follower that never synced holds none and refuses nothing.
    pub fn note_leader_history(&self, theirs: &str, who: &str) {
        let ours = self.replica.state().history;
        let reason = match &ours {
            Some(ours) if ours != theirs => Some(format!(
                "history mismatch: this follower holds history {ours} but {who} has history {theirs} (was the leader restarted on an empty or foreign data directory?); refusing it until the leader of history {ours} is back"
            )),
            _ => None,
        };
        let mut refused = self.refused.lock();
        match (&*refused, &reason) {
            (None, Some(r)) => tracing::error!(leader = %self.leader, "REFUSING the leader: {r}"),
            (Some(_), None) => {
                tracing::info!(leader = %self.leader, history = theirs, "the leader's history matches again; no longer refusing it")
            }
            _ => {}
        }
        if *refused != reason {
            // A memoised probe outcome told of the old state.
            self.probes.forget();
        }
        *refused = reason;
    }

    /// Asks the leader for its role and history (`GET /v1/replication/state`, within a second) and records
    /// a history mismatch or its end. `Err` says why this follower cannot follow its leader now: it is
    /// unreachable, refuses the token, is not a leader, or holds another history. A probe answers
    /// for [`super::ready::PROBE_REUSE`]: however often readiness is asked, the leader is asked at
    /// most once per window.
    pub async fn probe_leader(&self) -> Result<(), String> {
        match self.me.upgrade() {
            Some(me) => {
                self.probes
                    .get_or_probe(async move { me.probe_leader_now().await })
                    .await
            }
            None => self.probe_leader_now().await,
        }
    }

    async fn probe_leader_now(&self) -> Result<(), String> {
        let mut client = Client::new(&self.leader).map_err(|e| e.to_string())?;
        let headers: Vec<(HeaderName, HeaderValue)> = self
            .token
            .iter()
            .filter_map(|t| HeaderValue::from_str(t.expose()).ok())
            .map(|v| (HeaderName::from_static(TOKEN_HEADER), v))
            .collect();
        let answer = tokio::time::timeout(
            PROBE_TIMEOUT,
            client.send_with(Method::GET, "/v1/replication/state", &headers, Bytes::new()),
        )
        .await;
        let (status, _, body) = match answer {
            Err(_) => {
                return Err(format!(
                    "leader unreachable: the leader at {} did not answer within {PROBE_TIMEOUT:?}",
                    self.leader
                ))
            }
            Ok(Err(e)) => return Err(format!("leader unreachable: {e}")),
            Ok(Ok(a)) => a,
        };
        let st: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match status {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                return Err(format!(
                    "the leader at {} refuses this follower's replication token (REPLICATION_TOKEN differs)",
                    self.leader
                ))
            }
            s => {
                return Err(format!(
                    "the leader at {} answered {s} to GET /v1/replication/state",
                    self.leader
                ))
            }
        }
        let role = st.get("role").and_then(|r| r.as_str()).unwrap_or("");
        if role != "leader" {
            return Err(format!(
                "the node at {} is not a leader (role {role:?}); check REPLICATION_LEADER_HOST",
                self.leader
            ));
        }
        if let Some(theirs) = st.get("history").and_then(|h| h.as_str()) {
            self.note_leader_history(theirs, &format!("the leader at {}", self.leader));
        }
        self.refusal().map_or(Ok(()), Err)
    }

    /// The refusal, if one is recorded and the leader still holds another history (one probe, not a
    /// memoised one: the refusal ends as soon as the leader of this history is back). An unreachable
    /// leader keeps the recorded refusal.
    pub async fn current_refusal(&self) -> Option<String> {
        self.refusal()?;
        let _ = self.probe_leader_now().await;
        self.refusal()
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
            "refusing": self.refusal(),
        })
    }

    /// Writes this follower's metrics.
    pub fn write_metrics(&self, w: &mut Writer) {
        let (applied, leader_lsn, behind, secs) = self.lag();
        // Counters end in `_total` and nothing else does (Prometheus naming; promtool checks it).
        for (name, kind, help, value) in [
            (
                "kv_replication_applied_lsn",
                Kind::Gauge,
                "Durable applied LSN of this follower.",
                applied as f64,
            ),
            (
                "kv_replication_leader_lsn",
                Kind::Gauge,
                "The leader's last LSN as last reported to this follower.",
                leader_lsn as f64,
            ),
            (
                "kv_replication_lag_entries",
                Kind::Gauge,
                "Writes this follower lacks, as of the leader's last report.",
                behind as f64,
            ),
            (
                "kv_replication_lag_seconds",
                Kind::Gauge,
                "Time since this follower was last caught up, while behind.",
                secs,
            ),
            (
                "kv_replication_forwarded_writes_total",
                Kind::Counter,
                "Client writes forwarded to the leader.",
                self.forwarded.load(Ordering::Relaxed) as f64,
            ),
            (
                "kv_replication_forward_failures_total",
                Kind::Counter,
                "Forwarded writes that failed to reach the leader or got no answer.",
                self.forward_failures.load(Ordering::Relaxed) as f64,
            ),
        ] {
            w.family(name, kind, help).sample(name, &[], value);
        }
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
        if let Some(reason) = self.current_refusal().await {
            self.forward_failures.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{reason}; the write was not forwarded and not applied"),
            ));
        }
        let ours = self.replica.state().history;
        let mut client = {
            let mut pool = self.pool.lock();
            pool.retain(|(_, used)| used.elapsed() < POOL_IDLE);
            match pool.pop() {
                Some((c, _)) => c,
                None => Client::new(&self.leader)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
            }
        };
        // The client's `Authorization` goes along and the leader decides on it; this follower's own
        // replication token (never the client's) lets the leader admit a write this follower admitted
        // in protected mode (`crate::auth`).
        let mut pass: Vec<(HeaderName, HeaderValue)> =
            [hyper::header::CONTENT_TYPE, hyper::header::AUTHORIZATION]
                .iter()
                .filter_map(|n| headers.get(n).map(|v| (n.clone(), v.clone())))
                .collect();
        pass.push((
            HeaderName::from_static(crate::cluster::FORWARDED_HEADER),
            HeaderValue::from_static("1"),
        ));
        pass.extend(
            self.token
                .iter()
                .filter_map(|t| HeaderValue::from_str(t.expose()).ok())
                .map(|v| (HeaderName::from_static(TOKEN_HEADER), v)),
        );
        // The leader refuses the write if it holds another history (see the module doc).
        pass.extend(
            ours.as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
                .map(|v| (HeaderName::from_static(EXPECTED_HISTORY_HEADER), v)),
        );
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
                let refused_by = (status == StatusCode::CONFLICT)
                    .then(|| resp_headers.get(HISTORY_HEADER))
                    .flatten()
                    .and_then(|v| v.to_str().ok());
                if let Some(theirs) = refused_by {
                    self.note_leader_history(theirs, &format!("the leader at {}", self.leader));
                    if let Some(reason) = self.refusal() {
                        return failed(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("{reason}; the leader refused the write, it was not applied"),
                        );
                    }
                }
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

/// A follower's applied LSN is its replica's; waits wake on its apply path (see
/// [`FollowerNode::wait_applied`]).
#[async_trait::async_trait]
impl kv_domain::AppliedLsn for FollowerNode {
    fn applied(&self) -> kv_domain::Lsn {
        self.replica.state().applied
    }

    async fn wait_applied(
        &self,
        lsn: kv_domain::Lsn,
        timeout: Duration,
    ) -> Result<(), kv_domain::Lsn> {
        FollowerNode::wait_applied(self, lsn.0, timeout)
            .await
            .map_err(kv_domain::Lsn)
    }
}
