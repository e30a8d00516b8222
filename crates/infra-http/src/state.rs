//! What the server is built from: the use cases, the metrics, the body limit, the replication state and
//! where writes run. The caller (bin/rest, tests) assembles one; [`crate::dispatch`] hands each handler
//! the parts it uses.

use std::sync::Arc;

use kv_app::KvService;

use crate::auth::AuthPolicy;
use crate::metrics::Metrics;
use crate::replication::Replication;

/// The server's state, shared by every connection behind an `Arc`.
#[derive(Debug)]
pub struct ServerState {
    /// The use cases.
    pub service: KvService,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Leader or follower, and the replication state.
    pub replication: Replication,
    /// Who may do what (see [`crate::auth`]).
    pub auth: AuthPolicy,
}
