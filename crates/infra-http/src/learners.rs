//! The leader's side of `REPLICATION_MODE` on Raft (`REPLICATION_ENGINE=raft`; `docs/cluster.md`,
//! "One voter and learners"): the leader is its cluster's only voter, so a write commits once the
//! leader holds it durably, and every follower of `REPLICATION_REPLICA_HOSTS` is kept a learner
//! (it receives the log, never votes: asynchronous replication, no failover).
//!
//! A follower knows its leader's URL but not its own, and picks its node id at random
//! (`kv_infra_raft::identity`). So the leader, [`Learners::run`], asks every configured URL once a
//! second for its id (`GET /v1/cluster`, with the replication token) and reconciles the membership:
//! - a follower that answers with an id not in the membership is added as a learner (a learner of
//!   the same URL under another id, a follower whose data directory was replaced, is removed first);
//! - a follower that has joined another cluster (it followed another history) is left alone, shown
//!   as `refused`: it refuses this leader's messages and keeps its data;
//! - a learner whose URL is no longer configured is removed.
//!
//! With `REPLICATION_ACK_FOLLOWERS=N` a write is answered once N learners hold it in their logs
//! (durably), or 504 `committed: true` after `REPLICATION_ACK_TIMEOUT_MS` ([`FollowerAcks`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use kv_domain::{AckRequirement, FollowerAcks, Lsn};
use kv_infra_raft::NodeId;
use parking_lot::Mutex;
use serde::Serialize;

use crate::client::Client;
use crate::cluster::SharedCluster;
use crate::replication::{Secret, TOKEN_HEADER};

/// How often the leader reconciles its learners with `REPLICATION_REPLICA_HOSTS`.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// What the leader last found at one configured follower URL (the `followers` of `/v1/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowerView {
    /// The configured URL.
    pub url: String,
    /// Its node id, once it answered.
    pub node_id: Option<NodeId>,
    /// `learner` (in the membership), `connecting` (not reached yet), `down` (did not answer) or
    /// `refused` (it belongs to another cluster).
    pub state: &'static str,
    /// Why, when not a learner.
    pub detail: Option<String>,
    /// The last index the leader knows it holds.
    pub applied_lsn: Option<u64>,
    /// How far behind the leader's log it is.
    pub lag_entries: Option<u64>,
}

/// See the module doc.
#[derive(Debug)]
pub struct Learners {
    urls: Vec<String>,
    token: Option<Secret>,
    cluster: SharedCluster,
    policy: AckRequirement,
    seen: Mutex<BTreeMap<String, Seen>>,
}

/// What one configured URL last answered: its node id, a state of [`FollowerView::state`], and why.
type Seen = (Option<NodeId>, &'static str, Option<String>);

impl Learners {
    /// The learners at `urls` of the leader `cluster`, asked with `token`; writes wait for `policy`.
    pub fn new(
        urls: &[String],
        token: Option<Secret>,
        cluster: SharedCluster,
        policy: AckRequirement,
    ) -> Self {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        let seen = urls
            .iter()
            .map(|u| (u.clone(), (None, "connecting", None)))
            .collect();
        Self {
            urls,
            token,
            cluster,
            policy,
            seen: Mutex::new(seen),
        }
    }

    /// Reconciles the membership once a second until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Each configured follower, as last found, with its replication progress.
    pub fn followers(&self) -> Vec<FollowerView> {
        let status = self.cluster.status();
        let seen = self.seen.lock().clone();
        self.urls
            .iter()
            .map(|url| {
                let (node_id, state, detail) = seen.get(url).cloned().unwrap_or_default();
                let member = status
                    .members
                    .iter()
                    .find(|m| Some(m.id) == node_id && &m.url == url);
                FollowerView {
                    url: url.clone(),
                    node_id,
                    state,
                    detail,
                    applied_lsn: member.and_then(|m| m.matched_index),
                    lag_entries: member.and_then(|m| m.lag_entries),
                }
            })
            .collect()
    }

    fn note(&self, url: &str, id: Option<NodeId>, state: &'static str, detail: Option<String>) {
        let mut seen = self.seen.lock();
        let before = seen.get(url).map(|(_, s, _)| *s);
        if before != Some(state) {
            match state {
                "learner" => tracing::info!(%url, node_id = ?id, "follower is a learner"),
                "refused" => {
                    tracing::error!(%url, detail = ?detail, "REFUSING: the follower belongs to another cluster")
                }
                _ => tracing::warn!(%url, state, detail = ?detail, "follower not replicating"),
            }
        }
        seen.insert(url.to_string(), (id, state, detail));
    }

    /// One pass of the reconciliation (see the module doc). Only while this node leads.
    async fn reconcile(&self) {
        if !matches!(self.cluster.write_target(), Ok(None)) {
            return;
        }
        let ours = self.cluster.cluster_id();
        let me = self.cluster.raft().id();
        'urls: for url in &self.urls {
            let (id, theirs) = match self.ask(url).await {
                Ok(found) => found,
                Err(e) => {
                    let known = self.seen.lock().get(url).and_then(|(id, _, _)| *id);
                    self.note(url, known, "down", Some(e));
                    continue;
                }
            };
            let members = self.cluster.status().members;
            let node = self.cluster.raft();
            if id == me {
                self.note(
                    url,
                    Some(id),
                    "refused",
                    Some("this URL is the leader itself".into()),
                );
                continue;
            }
            if theirs.is_some() && theirs != ours {
                let detail = format!(
                    "history mismatch: the follower belongs to cluster {} and this leader to {}; it refuses this leader and keeps its data",
                    theirs.unwrap_or_default(),
                    ours.clone().unwrap_or_default()
                );
                self.note(url, Some(id), "refused", Some(detail));
                // Nothing to send it: it refuses every message of this cluster.
                for m in members.iter().filter(|m| &m.url == url && m.id != me) {
                    if let Err(e) = node.remove(m.id).await {
                        tracing::warn!(%url, error = %e, "cannot remove the refusing learner");
                    }
                }
                continue;
            }
            if let Some(member) = members.iter().find(|m| m.id == id) {
                // Known by its id (an id is one data directory), under this URL or another one.
                let detail = (&member.url != url)
                    .then(|| format!("the same node is a learner at {}", member.url));
                self.note(url, Some(id), "learner", detail);
                continue;
            }
            for stale in members
                .iter()
                .filter(|m| &m.url == url && m.id != id && m.id != me)
            {
                tracing::info!(%url, old = stale.id, new = id, "the follower's data directory was replaced: removing its old id");
                if let Err(e) = node.remove(stale.id).await {
                    let detail = format!("removing its old id {}: {e}", stale.id);
                    self.note(url, Some(id), "down", Some(detail));
                    // Never two ids for one URL: both would count as acknowledgements.
                    continue 'urls;
                }
            }
            match node.add_learner(id, url).await {
                Ok(_) => self.note(url, Some(id), "learner", None),
                Err(e) => self.note(url, Some(id), "down", Some(format!("adding it: {e}"))),
            }
        }
        let members = self.cluster.status().members;
        for gone in members
            .iter()
            .filter(|m| m.id != me && m.role == "learner" && !self.urls.contains(&m.url))
        {
            tracing::info!(url = %gone.url, node_id = gone.id, "no longer in REPLICATION_REPLICA_HOSTS: removing the learner");
            if let Err(e) = self.cluster.raft().remove(gone.id).await {
                tracing::warn!(url = %gone.url, error = %e, "cannot remove the learner");
            }
        }
    }

    /// The follower's node id and the cluster it has joined, from its `GET /v1/cluster`.
    async fn ask(&self, url: &str) -> Result<(NodeId, Option<String>), String> {
        let mut client = Client::new(url)
            .map_err(|e| e.to_string())?
            .with_timeouts(Some(Duration::from_secs(1)), Some(Duration::from_secs(2)));
        let mut headers = Vec::new();
        if let Some(token) = &self.token {
            if let Ok(v) = HeaderValue::from_str(token.expose()) {
                headers.push((HeaderName::from_static(TOKEN_HEADER), v));
            }
        }
        let (status, _, body) = client
            .send_with(Method::GET, "/v1/cluster", &headers, Bytes::new())
            .await
            .map_err(|e| e.to_string())?;
        if status != StatusCode::OK {
            return Err(format!(
                "GET {url}/v1/cluster answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("GET {url}/v1/cluster: not JSON: {e}"))?;
        let id = doc["node_id"]
            .as_u64()
            .ok_or_else(|| format!("GET {url}/v1/cluster: no node_id in {doc}"))?;
        Ok((id, doc["cluster_id"].as_str().map(str::to_string)))
    }
}

#[async_trait]
impl FollowerAcks for Learners {
    fn record_write(&self, _lsn: Lsn, _payload_bytes: usize) {
        // openraft replicates every committed entry by itself.
    }

    fn requirement(&self) -> AckRequirement {
        self.policy
    }

    async fn wait_acks(&self, lsn: Lsn) -> Result<(), usize> {
        if self.policy.followers == 0 {
            return Ok(());
        }
        self.cluster
            .raft()
            .wait_replicated(lsn.0, self.policy.followers, self.policy.timeout)
            .await
    }
}
