//! From a request to its handler, by the [`Route`] table: 404 for an unknown path, 405 (with `Allow`) for
//! a method the route does not serve, 401 or 403 for a caller the route's access refuses
//! ([`crate::auth`]; before anything else, so a refused request changes nothing and is never
//! forwarded), forwarding of writes on a follower, the leader's history check of a forwarded write, the
//! min-LSN wait of reads, then the handler of the route's API family ([`crate::api`]).

use hyper::{header, Request, Response, StatusCode};

use crate::api::write::Writes;
use crate::api::{admin, go, min_lsn, v1};
use crate::body::{read_body, RequestBody};
use crate::error::{ApiError, Body};
use crate::replication::FollowerNode;
use crate::response;
use crate::route::{Class, Route};
use crate::state::ServerState;

/// Handles one request from `peer`; answers with its route (`None`: no route matched) for the metrics.
pub async fn handle(
    state: &ServerState,
    req: Request<RequestBody>,
    peer: std::net::IpAddr,
) -> (Option<Route>, Response<Body>) {
    let Some(route) = Route::resolve(req.uri().path()) else {
        let message = format!("no route for {} {}", req.method(), req.uri().path());
        return (None, ApiError::not_found(message).into_response());
    };
    let resp = route_request(state, route, req, peer)
        .await
        .unwrap_or_else(ApiError::into_response);
    (Some(route), resp)
}

async fn route_request(
    state: &ServerState,
    route: Route,
    mut req: Request<RequestBody>,
    peer: std::net::IpAddr,
) -> Result<Response<Body>, ApiError> {
    let allowed = route.methods();
    if !allowed.contains(&req.method().as_str()) {
        return Ok(method_not_allowed(route, req.method()));
    }
    let repl = &state.replication;
    let access = route.access(req.method().as_str());
    state
        .auth
        .authorize(access, req.headers(), peer, repl.token.as_ref())?;
    match route.class(req.method().as_str()) {
        Class::Write if repl.cluster.is_some() => match to_the_leader(state, req).await? {
            Routed::Answered(resp) => return Ok(resp),
            Routed::Here(here) => req = here,
        },
        Class::Read if crate::cluster::wants_linearizable(req.uri())? => {
            match to_the_leader(state, req).await? {
                Routed::Answered(resp) => return Ok(resp),
                Routed::Here(here) => req = here,
            }
            if repl.follower().is_some() {
                // A static follower applies the leader's log asynchronously: its reads may be stale.
                return Err(ApiError::bad_request(
                    "consistency=linearizable needs a Raft cluster or the leader; this node is a static follower (REPLICATION_MODE=follower), whose reads may lag: read from the leader, or pass min_lsn to read your own writes here",
                ));
            }
            state.service.read_barrier().await?;
            min_lsn::wait(state.service.engine().as_ref(), repl, &req).await?;
        }
        Class::Write => {
            if let Some(node) = repl.follower() {
                return forward(node, req, state.max_body_bytes).await;
            }
            if let Some(refused) = repl.check_forwarded_history(req.headers()) {
                return Ok(refused);
            }
        }
        // Every read route serves only GET and HEAD besides its writes, which are classed above.
        Class::Read => min_lsn::wait(state.service.engine().as_ref(), repl, &req).await?,
        Class::Admin | Class::Internal => {}
    }
    let writes = Writes {
        service: &state.service,
        acks: repl.acks(),
        written: &repl.written,
        max_body: state.max_body_bytes,
    };
    let service = &state.service;
    match route {
        Route::Put => go::put(writes, req).await,
        Route::Read => go::read(service, &req),
        Route::ReadRange => go::read_range(service, &req),
        Route::BatchPut => go::batch_put(writes, req).await,
        Route::Delete => go::delete(writes, &req).await,
        Route::HealthCheck => Ok(go::health_check()),
        Route::KvKey => v1::kv_key(writes, req).await,
        Route::KvList => v1::listing(service, &req),
        Route::Readyz => Ok(admin::readyz(&service.engine().status(), repl).await),
        Route::Status => admin::status(&service.engine().status(), repl),
        Route::Metrics => Ok(admin::metrics(
            &state.metrics,
            &service.engine().status(),
            repl,
        )),
        Route::AdminCompact => admin::compact(service).await,
        Route::ReplicationState | Route::ReplicationApply | Route::ReplicationSnapshot => {
            crate::replication::handle(route, repl, req, state.max_body_bytes)
                .await
                .map(|v| response::json(&v))
        }
        Route::Raft => crate::cluster::handle_raft(repl, req, state.max_body_bytes).await,
        Route::Cluster => crate::cluster::handle_status(repl),
        Route::ClusterOp => crate::cluster::handle_op(repl, req, state.max_body_bytes).await,
    }
}

/// Where a cluster request for the leader (a write, a linearizable read) went.
enum Routed {
    /// Forwarded to the leader (or refused): this is the answer.
    Answered(Response<Body>),
    /// This node leads: serve the request here.
    Here(Request<RequestBody>),
}

/// In a Raft cluster: forwards `req` to the leader when this node does not lead (once, or a 307); on the
/// leader, refuses a request forwarded by a learner of another history.
async fn to_the_leader(state: &ServerState, req: Request<RequestBody>) -> Result<Routed, ApiError> {
    let repl = &state.replication;
    if let Some(cluster) = &repl.cluster {
        if let Some((_, leader_url)) = cluster.write_target()? {
            let resp = crate::cluster::send_to_leader(
                &leader_url,
                cluster,
                repl.token.as_ref(),
                req,
                state.max_body_bytes,
            )
            .await?;
            return Ok(Routed::Answered(resp));
        }
    }
    match repl.check_forwarded_history(req.headers()) {
        Some(refused) => Ok(Routed::Answered(refused)),
        None => Ok(Routed::Here(req)),
    }
}

/// 405, with the methods the route serves in `Allow`.
fn method_not_allowed(route: Route, method: &hyper::Method) -> Response<Body> {
    let allowed = route.methods().join(", ");
    let mut resp = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not accept {method}; use {allowed}",
            route.pattern()
        ),
    )
    .into_response();
    if let Ok(v) = header::HeaderValue::from_str(&allowed) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// Forwards a client write from a follower to its leader.
async fn forward(
    node: &FollowerNode,
    req: Request<RequestBody>,
    max_body: usize,
) -> Result<Response<Body>, ApiError> {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let bytes = read_body(&parts.headers, body, max_body).await?;
    node.forward(parts.method, &path, &parts.headers, bytes)
        .await
}
