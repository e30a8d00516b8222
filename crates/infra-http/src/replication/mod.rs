//! Leader-follower replication over HTTP (DESIGN §6).
//!
//! The leader pushes: one shipper task per follower in `REPLICATION_REPLICA_HOSTS` ([`leader`]). Followers
//! serve three internal endpoints, which need the replication token when one is configured (compared in
//! constant time) and which only a follower accepts writes on:
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | `/v1/replication/state` | | `{"role","history","applied_lsn","snapshot_in_progress"}` |
//! | POST | `/v1/replication/apply` | log entries ([`wire`]) | `{"applied_lsn"}`, durable |
//! | POST | `/v1/replication/snapshot` | a snapshot page ([`wire`]) | `{"applied_lsn"}`, durable |
//!
//! Requests carry the leader's history id (`x-kv-history`) and last LSN (`x-kv-leader-lsn`). A refusal
//! (another history, a gap, a snapshot needed) is 409 with the reason; a missing or wrong token is 401.
//!
//! A leader's `state` answers `{"role":"leader","history"}`: followers probe it for readiness ([`ready`]).
//! A leader refuses a client write forwarded by a follower of another history
//! ([`Replication::check_forwarded_history`]); the follower's side is in [`follower`].

pub mod follower;
pub mod leader;
pub mod ready;
pub mod secret;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use kv_app::ReplicaError;
use serde_json::json;

use crate::applied::LsnSignal;
use crate::body::{read_body, RequestBody};
use crate::error::{ApiError, Body};
use crate::route::Route;
pub use follower::FollowerNode;
pub use leader::{AckPolicy, LeaderHub};
pub use secret::Secret;

/// The replication token header.
pub const TOKEN_HEADER: &str = "x-kv-replication-token";
/// The leader's history id header.
pub const HISTORY_HEADER: &str = "x-kv-history";
/// The leader's last LSN header.
pub const LEADER_LSN_HEADER: &str = "x-kv-leader-lsn";
/// A read's minimum LSN header (also the `min_lsn` query parameter).
pub const MIN_LSN_HEADER: &str = "x-kv-min-lsn";
/// On a forwarded write: the history the forwarding follower holds. A leader of another history refuses
/// the write (409, with its own history in [`HISTORY_HEADER`]) instead of applying it.
pub const EXPECTED_HISTORY_HEADER: &str = "x-kv-expected-history";

/// This node's part in replication.
#[derive(Debug, Clone)]
pub enum Role {
    /// Accepts writes; ships them to its followers (none: standalone).
    Leader(Option<Arc<LeaderHub>>),
    /// Applies the leader's log; forwards client writes.
    Follower(Arc<FollowerNode>),
}

/// Replication settings and state of a server.
#[derive(Debug, Clone)]
pub struct Replication {
    /// Leader or follower.
    pub role: Role,
    /// Token the replication endpoints require (`None`: open, for trusted networks only).
    pub token: Option<Secret>,
    /// A leader's history id (`None`: unknown, as in a standalone test server; a follower's is in its
    /// replica state).
    pub history: Option<String>,
    /// Longest wait of a read for its minimum LSN.
    pub max_read_wait: Duration,
    /// On a leader: signalled by every acknowledged write, to wake min-LSN reads.
    pub written: Arc<LsnSignal>,
    /// In a Raft cluster: this node's membership (`role` is then `Leader(None)`: writes go through the
    /// consensus, not the shippers).
    pub cluster: Option<crate::cluster::SharedCluster>,
    /// `REPLICATION_MODE=leader` on Raft: the followers kept learners (`cluster` is then the leader's).
    pub learners: Option<Arc<crate::learners::Learners>>,
}

impl Replication {
    /// A standalone leader with no followers and no token.
    pub fn standalone() -> Self {
        Self {
            role: Role::Leader(None),
            token: None,
            history: None,
            max_read_wait: Duration::from_secs(5),
            written: Arc::new(LsnSignal::default()),
            cluster: None,
            learners: None,
        }
    }

    /// What a write may wait on for its followers' acknowledgements: the shipping hub, or the learners.
    pub fn acks(&self) -> Option<&dyn kv_domain::FollowerAcks> {
        if let Some(learners) = &self.learners {
            return Some(learners.as_ref());
        }
        self.hub()
            .map(|h| h.as_ref() as &dyn kv_domain::FollowerAcks)
    }

    /// `leader` or `follower`.
    pub fn role_name(&self) -> &'static str {
        if let Some(cluster) = &self.cluster {
            return match cluster.status().state.as_str() {
                "leader" => "leader",
                "learner" => "learner",
                _ => "follower",
            };
        }
        match self.role {
            Role::Leader(_) => "leader",
            Role::Follower(_) => "follower",
        }
    }

    /// The follower state, on a follower.
    pub fn follower(&self) -> Option<&Arc<FollowerNode>> {
        match &self.role {
            Role::Follower(f) => Some(f),
            Role::Leader(_) => None,
        }
    }

    /// The shipping hub, on a leader with followers.
    pub fn hub(&self) -> Option<&Arc<LeaderHub>> {
        match &self.role {
            Role::Leader(h) => h.as_ref(),
            Role::Follower(_) => None,
        }
    }

    /// On a leader: refuses a write forwarded by a follower of another history (its
    /// [`EXPECTED_HISTORY_HEADER`] differs from ours), so a leader restarted on an empty or foreign data
    /// directory never acknowledges a write that the follower's real history would lose. The answer is
    /// 409 with this leader's history in [`HISTORY_HEADER`]; the follower turns it into a 503 for its
    /// client. Writes without the header (clients, older followers) pass (`None`).
    pub fn check_forwarded_history(&self, headers: &HeaderMap) -> Option<Response<Body>> {
        let (Role::Leader(_), Some(ours)) = (&self.role, &self.history) else {
            return None;
        };
        let theirs = headers
            .get(EXPECTED_HISTORY_HEADER)
            .and_then(|v| v.to_str().ok())?;
        if theirs == ours {
            return None;
        }
        let mut resp = ApiError::new(
            StatusCode::CONFLICT,
            format!("history mismatch: the forwarding follower holds history {theirs}, this leader's is {ours} (was the leader restarted on an empty or foreign data directory?); the write was not applied"),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(ours) {
            resp.headers_mut()
                .insert(HeaderName::from_static(HISTORY_HEADER), v);
        }
        Some(resp)
    }
}

impl From<ReplicaError> for ApiError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::Engine(e) => ApiError::from_engine(&e),
            other => ApiError::new(StatusCode::CONFLICT, other.to_string()),
        }
    }
}

/// Handles the replication endpoints (`route`: one of the `Replication*` routes).
pub async fn handle(
    route: Route,
    repl: &Replication,
    req: Request<RequestBody>,
    max_body: usize,
) -> Result<serde_json::Value, ApiError> {
    // The caller was admitted by `crate::auth` (the replication token) already.
    if route == Route::ReplicationState {
        return Ok(match &repl.role {
            Role::Follower(f) => {
                // A leader's handshake names its history: the first sign of a leader restarted on an
                // empty or foreign directory (which then refuses to ship to us, so no apply would tell).
                if let Some(theirs) = req
                    .headers()
                    .get(HISTORY_HEADER)
                    .and_then(|v| v.to_str().ok())
                {
                    f.note_leader_history(theirs, "the leader that contacted this follower");
                }
                let st = f.replica.state();
                json!({
                    "role": "follower",
                    "history": st.history,
                    "applied_lsn": st.applied.0,
                    "snapshot_in_progress": st.snapshot_in_progress,
                })
            }
            Role::Leader(hub) => json!({
                "role": "leader",
                "history": repl.history.clone().or_else(|| hub.as_ref().map(|h| h.history().to_string())),
            }),
        });
    }
    let Role::Follower(node) = &repl.role else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this node is a leader: it accepts no replicated writes",
        ));
    };
    let (parts, body) = req.into_parts();
    let history = parts
        .headers
        .get(HISTORY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("missing {HISTORY_HEADER} header")))?
        .to_string();
    let leader_lsn = parts
        .headers
        .get(LEADER_LSN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // A frame holds whole entries, and one entry may hold a maximal batch: allow twice the client limit.
    let bytes = read_body(&parts.headers, body, max_body.saturating_mul(2)).await?;
    let node = node.clone();
    let is_apply = match route {
        Route::ReplicationApply => true,
        Route::ReplicationSnapshot => false,
        other => {
            return Err(ApiError::not_found(format!(
                "{} is not a replication endpoint",
                other.pattern()
            )))
        }
    };
    let applied = tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
        let applied = if is_apply {
            let entries =
                wire::decode_entries(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
            node.replica.apply(&history, &entries)
        } else {
            let page =
                wire::decode_page(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
            node.replica.snapshot_page(&history, &page)
        };
        match applied {
            Ok(lsn) => {
                node.contact(leader_lsn, lsn.0);
                node.note_leader_history(&history, "the leader that contacted this follower");
                Ok(lsn.0)
            }
            Err(e) => {
                if matches!(e, ReplicaError::HistoryMismatch { .. }) {
                    tracing::error!("REFUSING the leader's data: {e}");
                    node.note_leader_history(&history, "the leader that contacted this follower");
                }
                Err(e.into())
            }
        }
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("apply task failed: {e}"),
        )
    })??;
    Ok(json!({ "applied_lsn": applied }))
}
