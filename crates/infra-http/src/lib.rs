//! # kv-infra-http
//!
//! The REST server, on raw hyper (HTTP/1.1). [`serve`] runs it on a listener the caller bound (tests bind
//! `127.0.0.1:0`), until a shutdown future completes, then drains in-flight requests.
//!
//! - [`route`]: the route table, one [`route::Route`] variant per endpoint (pattern, methods, class,
//!   statuses); depends on nothing else of the crate;
//! - [`applied`]: the leader's applied LSN and the write path's signal that wakes min-LSN reads;
//! - [`dispatch`]: from a request to its handler by the table (404, 405, forwarding, min-LSN waits);
//! - [`api`]: the handlers, one module per family — the Go system's endpoints (`/put`, `/read`,
//!   `/readrange`, `/batchput`, `/delete`, `/health-check`), the binary-safe `/v1/kv` API, and
//!   readiness, status, metrics and compaction;
//! - [`state`]: [`ServerState`], what the server is assembled from;
//! - [`request`] and [`response`]: query parsing and percent-decoding; response builders;
//! - [`error`]: the one place that maps use-case errors to HTTP statuses and `{"error": ...}` bodies;
//! - [`json`]: strict JSON request objects (a repeated key is refused, not silently dropped);
//! - [`body`]: the body layer: every request and response body counted once for the metrics, and
//!   request bodies read with limits enforced from `Content-Length` and while streaming;
//! - [`stream`]: streamed response bodies with back-pressure, for ranges and listings;
//! - [`metrics`]: the server's counters and histograms per route and status;
//! - [`prom`]: the one writer of the Prometheus text format, used by every metric;
//! - [`process`]: the standard `process_*` metrics, from `/proc/self`;
//! - [`server`]: connections, the connection cap, timeouts, graceful shutdown, and the body layer's
//!   wrapping of each request and response;
//! - [`stall`]: closing connections whose response makes no progress (clients that stop reading);
//! - [`status`]: the `/v1/status` document, one serde type shared by the server and `kvctl`;
//! - [`client`]: a keep-alive client of the `/v1` API (used by the CLI, the shippers and forwarding);
//! - [`learners`]: `REPLICATION_MODE` on Raft: the leader keeps its configured followers learners;
//! - [`replication`]: leader-follower replication — the leader's shippers, the follower's endpoints,
//!   write forwarding, the ports behind acknowledgement waits and the binary wire format (see
//!   `docs/replication.md`).
//!
//! The use cases (range paging, min-LSN waits, follower acknowledgement, the leader's history) live in
//! `kv-app`; this crate adapts them to HTTP and implements the ports of `kv_domain` they wait on.

pub mod api;
pub mod applied;
pub mod auth;
pub mod body;
pub mod client;
pub mod cluster;
pub mod dispatch;
pub mod error;
pub mod json;
pub mod learners;
pub mod metrics;
pub mod process;
pub mod prom;
pub mod replication;
pub mod request;
pub mod response;
pub mod route;
pub mod server;
pub mod stall;
pub mod state;
pub mod status;
pub mod stream;
pub mod tls;

pub use server::{serve, ServerConfig};
pub use state::ServerState;
