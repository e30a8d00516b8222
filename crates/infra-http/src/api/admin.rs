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

/// `GET /readyz`.
pub async fn readyz(engine: &EngineStatus, replication: &Replication) -> Response<Body> {
    crate::replication::ready::respond(engine, replication).await
}

/// `GET /v1/status`.
pub fn status(s: &EngineStatus, replication: &Replication) -> Response<Body> {
    let ratio = if s.disk_bytes == 0 {
        0.0
    } else {
        s.garbage_bytes as f64 / s.disk_bytes as f64
    };
    response::json(&serde_json::json!({
        "role": replication.role_name(),
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
        "followers": replication.hub().map_or(serde_json::json!([]), |h| h.followers_json()),
        "replication": replication.follower().map(|f| f.status_json()),
        "compacting": s.compacting,
        "compaction": compaction_json(&s.compaction),
        "compaction_progress": s.compaction_progress.as_ref().map(compaction_json),
    }))
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
    Ok(response::json(&compaction_json(&s)))
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
    let mut resp = Response::new(full(w.finish()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
