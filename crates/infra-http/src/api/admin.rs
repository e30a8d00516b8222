//! This node's own state: `/readyz`, `/v1/status`, `/metrics`, `/v1/admin/compact`.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET, HEAD | `/readyz` | readiness: 200 `{"ready":true}` or 503 with reasons ([`crate::replication::ready`]) |
//! | GET, HEAD | `/v1/status` | role, LSN, keys, segments, disk and garbage bytes, durability, recovery |
//! | GET, HEAD | `/metrics` | Prometheus text |
//! | POST | `/v1/admin/compact` | run a compaction now; 409 while one runs |

use hyper::{header, Response, StatusCode};
use kv_app::KvService;
use kv_domain::EngineStatus;

use crate::error::{full, ApiError, Body};
use crate::metrics::Metrics;
use crate::prom::Writer;
use crate::replication::Replication;
use crate::response;
use crate::status::{CompactionReport, NodeStatus};

/// `GET /readyz`.
pub async fn readyz(engine: &EngineStatus, replication: &Replication) -> Response<Body> {
    crate::replication::ready::respond(engine, replication).await
}

/// `GET /v1/status`.
pub fn status(s: &EngineStatus, replication: &Replication) -> Result<Response<Body>, ApiError> {
    let mut doc = NodeStatus::new(
        replication.role_name(),
        s,
        match (&replication.learners, replication.hub()) {
            (Some(l), _) => serde_json::to_value(l.followers()).unwrap_or_default(),
            (None, Some(h)) => h.followers_json(),
            (None, None) => serde_json::json!([]),
        },
        replication.follower().map(|f| f.status_json()),
    );
    doc.cluster = replication.cluster.as_ref().and_then(|c| {
        let mut v = serde_json::to_value(c.status()).ok()?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("cluster_id".into(), serde_json::json!(c.cluster_id()));
            obj.insert("refusing".into(), serde_json::json!(c.refusing()));
        }
        Some(v)
    });
    serialised(&doc)
}

/// `POST /v1/admin/compact`.
pub async fn compact(service: &KvService) -> Result<Response<Body>, ApiError> {
    let service = service.clone();
    let s = tokio::task::spawn_blocking(move || service.compact())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("compaction task failed: {e}"),
            )
        })??;
    serialised(&CompactionReport::from(&s))
}

/// The JSON answer for `doc`. Serialising these plain structs cannot fail today; should a field ever make
/// it fail, the client gets a 500 saying so rather than a 200 with `null`.
fn serialised(doc: &impl serde::Serialize) -> Result<Response<Body>, ApiError> {
    serde_json::to_value(doc)
        .map(|v| response::json(&v))
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot serialise the answer: {e}"),
            )
        })
}

/// `GET /metrics`: the server's, then the replication role's.
pub fn metrics(
    metrics: &Metrics,
    engine: &EngineStatus,
    replication: &Replication,
) -> Response<Body> {
    let mut w = Writer::new();
    metrics.write(&mut w, engine, replication.role_name());
    if let Some(hub) = replication.hub() {
        hub.write_metrics(&mut w);
    }
    if let Some(node) = replication.follower() {
        node.write_metrics(&mut w);
    }
    if let Some(cluster) = &replication.cluster {
        cluster.write_metrics(&mut w);
    }
    let mut resp = Response::new(full(w.finish()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
