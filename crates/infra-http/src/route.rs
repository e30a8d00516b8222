//! The route table: one [`Route`] variant per endpoint, with everything the server decides from the route
//! alone (path pattern, methods, read/write class, metric label, possible statuses). Dispatch, the 405
//! `Allow` header, forwarding and min-LSN decisions, the metrics and the OpenAPI test all read it, so
//! adding an endpoint is one variant here and its handler in [`crate::api`].
//!
//! This module depends on nothing else of the crate.
//!
//! Every route that serves GET serves HEAD too (RFC 9110 §9.3.2): the same status and headers, no body
//! (hyper drops the body of a HEAD response; a streamed one is not produced).

/// An endpoint of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// `POST /put`: the Go API's JSON put.
    Put,
    /// `GET /read?key=K`.
    Read,
    /// `GET /readrange?start=A&end=B[&limit=N]`.
    ReadRange,
    /// `POST /batchput`.
    BatchPut,
    /// `POST|DELETE /delete?key=K`.
    Delete,
    /// `GET /health-check`: liveness.
    HealthCheck,
    /// `GET /readyz`: readiness.
    Readyz,
    /// `/v1/kv/{key}`: raw bytes, the key percent-encoded in the path.
    KvKey,
    /// `GET /v1/kv`: a page of a listing.
    KvList,
    /// `GET /v1/status`.
    Status,
    /// `GET /metrics`.
    Metrics,
    /// `POST /v1/admin/compact`.
    AdminCompact,
    /// `GET /v1/replication/state`.
    ReplicationState,
    /// `POST /v1/replication/apply`.
    ReplicationApply,
    /// `POST /v1/replication/snapshot`.
    ReplicationSnapshot,
    /// `POST /v1/raft/{rpc}`: a Raft message between cluster members.
    Raft,
    /// `GET /v1/cluster`: this node's view of its Raft cluster.
    Cluster,
    /// `POST /v1/cluster/{op}`: a membership operation (add-learner, promote, remove, transfer-leader).
    ClusterOp,
}

/// What a request does, which decides forwarding (writes, on a follower) and min-LSN waits (reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Reads the store; may name a minimum LSN.
    Read,
    /// Changes the store; a follower forwards it to its leader.
    Write,
    /// Serves this node's own state (health, status, metrics, compaction).
    Admin,
    /// Replication between nodes.
    Internal,
}

/// Who may call a route with a method (decided in [`crate::auth`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness, readiness, metrics.
    Open,
    /// A `read` token (or stronger).
    Read,
    /// A `write` token (or stronger).
    Write,
    /// An `admin` token.
    Admin,
    /// An `admin` token or the replication token: the cluster's status.
    Operator,
    /// The replication token only: replication and Raft between nodes, and membership changes (a new
    /// member receives the replication token with every Raft message: whoever may add one holds it).
    Peer,
}

/// Prefix of [`Route::KvKey`] paths: the key follows it.
pub const KV_KEY_PREFIX: &str = "/v1/kv/";
/// Prefix of [`Route::Raft`] paths: the message's name follows it.
pub const RAFT_PREFIX: &str = "/v1/raft/";
/// Prefix of [`Route::ClusterOp`] paths: the operation's name follows it.
pub const CLUSTER_OP_PREFIX: &str = "/v1/cluster/";

impl Route {
    /// Every route, in the order of the metrics and of this enum.
    pub const ALL: [Route; 18] = [
        Route::Put,
        Route::Read,
        Route::ReadRange,
        Route::BatchPut,
        Route::Delete,
        Route::HealthCheck,
        Route::Readyz,
        Route::KvKey,
        Route::KvList,
        Route::Status,
        Route::Metrics,
        Route::AdminCompact,
        Route::ReplicationState,
        Route::ReplicationApply,
        Route::ReplicationSnapshot,
        Route::Raft,
        Route::Cluster,
        Route::ClusterOp,
    ];

    /// The path pattern, as `docs/openapi.yaml` writes it; also the metric label.
    pub const fn pattern(self) -> &'static str {
        match self {
            Route::Put => "/put",
            Route::Read => "/read",
            Route::ReadRange => "/readrange",
            Route::BatchPut => "/batchput",
            Route::Delete => "/delete",
            Route::HealthCheck => "/health-check",
            Route::Readyz => "/readyz",
            Route::KvKey => "/v1/kv/{key}",
            Route::KvList => "/v1/kv",
            Route::Status => "/v1/status",
            Route::Metrics => "/metrics",
            Route::AdminCompact => "/v1/admin/compact",
            Route::ReplicationState => "/v1/replication/state",
            Route::ReplicationApply => "/v1/replication/apply",
            Route::ReplicationSnapshot => "/v1/replication/snapshot",
            Route::Raft => "/v1/raft/{rpc}",
            Route::Cluster => "/v1/cluster",
            Route::ClusterOp => "/v1/cluster/{op}",
        }
    }

    /// The metric label (the path pattern).
    pub const fn label(self) -> &'static str {
        self.pattern()
    }

    /// The methods served; any other answers 405 with these in `Allow`.
    pub const fn methods(self) -> &'static [&'static str] {
        match self {
            Route::Put | Route::BatchPut | Route::AdminCompact => &["POST"],
            Route::ReplicationApply | Route::ReplicationSnapshot | Route::Raft => &["POST"],
            Route::ClusterOp => &["POST"],
            Route::Delete => &["POST", "DELETE"],
            Route::KvKey => &["PUT", "GET", "HEAD", "DELETE"],
            Route::Read
            | Route::ReadRange
            | Route::HealthCheck
            | Route::Readyz
            | Route::KvList
            | Route::Status
            | Route::Metrics
            | Route::ReplicationState
            | Route::Cluster => &["GET", "HEAD"],
        }
    }

    /// What `method` (one of [`Route::methods`]) does on this route.
    pub fn class(self, method: &str) -> Class {
        match self {
            Route::Put | Route::BatchPut | Route::Delete => Class::Write,
            Route::KvKey if matches!(method, "PUT" | "DELETE") => Class::Write,
            Route::Read | Route::ReadRange | Route::KvKey | Route::KvList => Class::Read,
            Route::HealthCheck
            | Route::Readyz
            | Route::Status
            | Route::Metrics
            | Route::AdminCompact
            | Route::Cluster
            | Route::ClusterOp => Class::Admin,
            Route::ReplicationState
            | Route::ReplicationApply
            | Route::ReplicationSnapshot
            | Route::Raft => Class::Internal,
        }
    }

    /// Who may call this route with `method` (one of [`Route::methods`]): follows from its class, with
    /// compaction raised to `admin`, the cluster's status open to the replication token as well, and
    /// membership changes needing it (see [`Access::Peer`]).
    pub fn access(self, method: &str) -> Access {
        match (self, self.class(method)) {
            (Route::HealthCheck | Route::Readyz | Route::Metrics, _) => Access::Open,
            (Route::Cluster, _) => Access::Operator,
            (Route::ClusterOp, _) => Access::Peer,
            (Route::AdminCompact, _) => Access::Admin,
            (_, Class::Internal) => Access::Peer,
            (_, Class::Write) => Access::Write,
            (_, Class::Read | Class::Admin) => Access::Read,
        }
    }

    /// Every status the route can answer, whatever the method: what its handlers return, what the error
    /// mapping of `crate::error` gives for the errors they can meet, 405 for a method not served, 503 when
    /// a handler that waits runs past the request timeout, and on a follower what forwarding adds (503
    /// leader unreachable, 504 outcome unknown) besides relaying the leader's answer, and 401 and 403 on
    /// every route that is not [`Access::Open`] ([`crate::auth`]). The OpenAPI test
    /// checks that `docs/openapi.yaml` documents exactly these per path; the metrics give each status its
    /// own series. (Synchronous handlers, such as `/health-check`, finish on their first poll: the timeout
    /// cannot fire.)
    pub const fn statuses(self) -> &'static [u16] {
        match self {
            Route::Put | Route::BatchPut => {
                &[200, 307, 400, 401, 403, 405, 413, 415, 500, 503, 504, 507]
            }
            Route::Read => &[200, 400, 401, 403, 404, 405, 500, 503, 504],
            Route::ReadRange | Route::KvList => &[200, 400, 401, 403, 405, 500, 503, 504],
            Route::Delete => &[200, 307, 400, 401, 403, 405, 413, 500, 503, 504, 507],
            Route::HealthCheck | Route::Metrics => &[200, 405],
            // 500 only if the status document failed to serialise (it cannot today; see `api::admin`).
            Route::Status => &[200, 401, 403, 405, 500],
            Route::Readyz => &[200, 405, 503],
            Route::KvKey => &[200, 307, 400, 401, 403, 404, 405, 413, 500, 503, 504, 507],
            Route::AdminCompact => &[200, 401, 403, 405, 409, 500, 503, 507],
            Route::ReplicationState => &[200, 401, 403, 405],
            Route::ReplicationApply | Route::ReplicationSnapshot => {
                &[200, 400, 401, 403, 405, 409, 413, 500, 503, 507]
            }
            Route::Raft => &[200, 400, 401, 403, 404, 405, 409, 413, 503],
            Route::Cluster => &[200, 401, 403, 404, 405],
            Route::ClusterOp => &[200, 307, 400, 401, 403, 404, 405, 409, 413, 503, 504],
        }
    }

    /// The route `path` belongs to, if any. A `/v1/kv/` path with anything after the prefix is
    /// [`Route::KvKey`] (the handler decodes the key and refuses an empty one).
    pub fn resolve(path: &str) -> Option<Route> {
        if path.starts_with(KV_KEY_PREFIX) {
            return Some(Route::KvKey);
        }
        if path.len() > RAFT_PREFIX.len() && path.starts_with(RAFT_PREFIX) {
            return Some(Route::Raft);
        }
        if path.len() > CLUSTER_OP_PREFIX.len() && path.starts_with(CLUSTER_OP_PREFIX) {
            return Some(Route::ClusterOp);
        }
        Route::ALL.into_iter().find(|r| r.pattern() == path)
    }

    /// This route's position in [`Route::ALL`] (its metric series index).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every status any route answers, ascending, without repeats: the statuses with a metric series.
    pub fn all_statuses() -> Vec<u16> {
        let mut all: Vec<u16> = Route::ALL
            .iter()
            .flat_map(|r| r.statuses().iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A concrete path of each pattern, `{key}` filled in. Written out by hand (not derived from the
    /// pattern), so a pattern and the resolver cannot drift together.
    fn example(route: Route) -> &'static str {
        match route {
            Route::Put => "/put",
            Route::Read => "/read",
            Route::ReadRange => "/readrange",
            Route::BatchPut => "/batchput",
            Route::Delete => "/delete",
            Route::HealthCheck => "/health-check",
            Route::Readyz => "/readyz",
            Route::KvKey => "/v1/kv/some%2Fkey",
            Route::KvList => "/v1/kv",
            Route::Status => "/v1/status",
            Route::Metrics => "/metrics",
            Route::AdminCompact => "/v1/admin/compact",
            Route::ReplicationState => "/v1/replication/state",
            Route::ReplicationApply => "/v1/replication/apply",
            Route::ReplicationSnapshot => "/v1/replication/snapshot",
            Route::Raft => "/v1/raft/append",
            Route::Cluster => "/v1/cluster",
            Route::ClusterOp => "/v1/cluster/promote",
        }
    }

    #[test]
    fn every_pattern_parses_back_to_its_variant() {
        for (i, route) in Route::ALL.into_iter().enumerate() {
            assert_eq!(route.index(), i, "ALL is in enum order");
            assert_eq!(Route::resolve(example(route)), Some(route), "{route:?}");
            let filled = route.pattern().replace("{key}", "k");
            assert_eq!(Route::resolve(&filled), Some(route), "{route:?}");
        }
    }

    #[test]
    fn unknown_paths_resolve_to_nothing() {
        for path in [
            "/",
            "",
            "/nope",
            "/put/",
            "/PUT",
            "/reads",
            "/v1",
            "/v1/",
            "/v1/kvx",
            "/v1/status/",
            "/v1/admin",
            "/v1/replication",
            "/v1/replication/other",
            "/v1/raft",
            "/v1/raft/",
            "/v1/clusters",
            "/v1/cluster/",
            "/metrics/x",
            "put",
        ] {
            assert_eq!(Route::resolve(path), None, "{path:?}");
        }
    }

    #[test]
    fn every_route_answers_200_and_405() {
        for route in Route::ALL {
            let statuses = route.statuses();
            assert!(
                statuses.contains(&200) && statuses.contains(&405),
                "{route:?}"
            );
            assert!(
                statuses.windows(2).all(|w| w[0] < w[1]),
                "{route:?} ascending"
            );
        }
    }

    #[test]
    fn every_route_that_serves_get_serves_head() {
        for route in Route::ALL {
            if route.methods().contains(&"GET") {
                assert!(
                    route.methods().contains(&"HEAD"),
                    "{route:?} serves GET but not HEAD"
                );
            }
        }
    }

    #[test]
    fn writes_are_the_go_writes_and_raw_put_and_delete() {
        let writes: Vec<(Route, &str)> = Route::ALL
            .into_iter()
            .flat_map(|r| r.methods().iter().map(move |m| (r, *m)))
            .filter(|(r, m)| r.class(m) == Class::Write)
            .collect();
        assert_eq!(
            writes,
            vec![
                (Route::Put, "POST"),
                (Route::BatchPut, "POST"),
                (Route::Delete, "POST"),
                (Route::Delete, "DELETE"),
                (Route::KvKey, "PUT"),
                (Route::KvKey, "DELETE"),
            ]
        );
        assert_eq!(Route::KvKey.class("GET"), Class::Read);
    }

    /// Written out by hand: a change of who may call what shows here as a deliberate edit.
    #[test]
    fn who_may_call_each_route_and_method() {
        use Access::*;
        let got: Vec<(Route, &str, Access)> = Route::ALL
            .into_iter()
            .flat_map(|r| r.methods().iter().map(move |m| (r, *m, r.access(m))))
            .collect();
        let want = vec![
            (Route::Put, "POST", Write),
            (Route::Read, "GET", Read),
            (Route::Read, "HEAD", Read),
            (Route::ReadRange, "GET", Read),
            (Route::ReadRange, "HEAD", Read),
            (Route::BatchPut, "POST", Write),
            (Route::Delete, "POST", Write),
            (Route::Delete, "DELETE", Write),
            (Route::HealthCheck, "GET", Open),
            (Route::HealthCheck, "HEAD", Open),
            (Route::Readyz, "GET", Open),
            (Route::Readyz, "HEAD", Open),
            (Route::KvKey, "PUT", Write),
            (Route::KvKey, "GET", Read),
            (Route::KvKey, "HEAD", Read),
            (Route::KvKey, "DELETE", Write),
            (Route::KvList, "GET", Read),
            (Route::KvList, "HEAD", Read),
            (Route::Status, "GET", Read),
            (Route::Status, "HEAD", Read),
            (Route::Metrics, "GET", Open),
            (Route::Metrics, "HEAD", Open),
            (Route::AdminCompact, "POST", Admin),
            (Route::ReplicationState, "GET", Peer),
            (Route::ReplicationState, "HEAD", Peer),
            (Route::ReplicationApply, "POST", Peer),
            (Route::ReplicationSnapshot, "POST", Peer),
            (Route::Raft, "POST", Peer),
            (Route::Cluster, "GET", Operator),
            (Route::Cluster, "HEAD", Operator),
            (Route::ClusterOp, "POST", Peer),
        ];
        assert_eq!(got, want);
        for route in Route::ALL {
            let open = route.methods().iter().all(|m| route.access(m) == Open);
            let guarded = [401, 403].iter().all(|s| route.statuses().contains(s));
            assert_eq!(
                guarded, !open,
                "{route:?}: 401 and 403 exactly when not open"
            );
        }
    }

    #[test]
    fn the_statuses_with_a_series_are_those_any_route_answers() {
        assert_eq!(
            Route::all_statuses(),
            vec![200, 307, 400, 401, 403, 404, 405, 409, 413, 415, 500, 503, 504, 507]
        );
    }
}
