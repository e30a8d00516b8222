//! Connections: accept loop, connection cap, timeouts, graceful shutdown (after mini-redis's `server.rs`).
//!
//! Timeouts: the request head must arrive within [`ServerConfig::header_timeout`], the handler must answer
//! within [`ServerConfig::request_timeout`], and the response must keep moving: a write that cannot proceed
//! for [`ServerConfig::write_timeout`] closes the connection ([`crate::stall`]).
//!
//! [`serve`] takes a listener the caller bound and a shutdown future. On shutdown it stops accepting, asks
//! every open connection to finish its in-flight request and close (hyper's graceful shutdown), waits for
//! them up to [`ServerConfig::shutdown_grace`], and returns; the caller then closes the engine.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::body::{Counted, Direction};
use crate::dispatch;
use crate::error::ApiError;
use crate::route::Route;
use crate::stall::{stalled, StallClock, WatchedIo};
use crate::state::ServerState;
use crate::tls::TlsListener;

/// Connection-level limits.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Most connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// A request head must arrive within this time of the connection waiting for one. hyper starts this
    /// timer whenever a connection waits for a request head, so it bounds both a slow client trickling
    /// headers and a keep-alive connection sitting idle between requests.
    pub header_timeout: Duration,
    /// A handler that runs longer answers 503 (for a write: with an unknown outcome).
    pub request_timeout: Duration,
    /// A response whose bytes cannot be written for this long (the client stopped reading) is abandoned
    /// and its connection closed, releasing its slot and what it buffered (see [`crate::stall`]).
    pub write_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// HTTPS instead of HTTP: every connection shakes hands first (within `header_timeout`) with the
    /// listener's current certificate ([`crate::tls`]).
    pub tls: Option<Arc<TlsListener>>,
}

/// A connection's byte stream: plain TCP or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown` completes, then drains (see the module doc).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ServerState>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Take a permit before accepting, so at the cap new clients wait in the backlog, not in memory.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let metrics = state.metrics.clone();
        let config = config.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            // Dropped with the task however the connection ends (a stall included): frees the slot.
            let _permit = permit;
            let write_timeout = config.write_timeout;
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                let timeout = config.request_timeout;
                async move {
                    let started = Instant::now();
                    let req = req.map(|b| Counted::new(b, state.metrics.clone(), Direction::In));
                    let method = req.method().clone();
                    let path = req.uri().path().to_string();
                    let (route, resp) = match tokio::time::timeout(timeout, dispatch::handle(&state, req, peer.ip())).await {
                        Ok(r) => r,
                        Err(_) => (
                            Route::resolve(&path),
                            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("request timed out after {timeout:?}; a write's outcome is unknown")).into_response(),
                        ),
                    };
                    let elapsed = started.elapsed();
                    state.metrics.observe(route, resp.status().as_u16(), elapsed);
                    tracing::debug!(%method, %path, status = resp.status().as_u16(), micros = elapsed.as_micros() as u64, "request");
                    let metrics = state.metrics.clone();
                    Ok::<_, std::convert::Infallible>(resp.map(|b| Counted::new(b, metrics, Direction::Out)))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(config.header_timeout);
            let stream: Box<dyn Io> = match &config.tls {
                None => Box::new(stream),
                Some(tls) => {
                    let accepting = tls.acceptor().accept(stream);
                    match tokio::time::timeout(config.header_timeout, accepting).await {
                        Ok(Ok(tls_stream)) => Box::new(tls_stream),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let clock = Arc::new(StallClock::default());
            let io = TokioIo::new(WatchedIo::new(stream, clock.clone()));
            let conn = builder.serve_connection(io, service);
            let stall = stalled(&clock, write_timeout);
            tokio::pin!(conn, stall);
            // Returning drops the connection (closing the socket) and with it any response body, which
            // stops a streaming producer at its next send.
            let on_stall = || {
                metrics.count_stalled_close();
                tracing::info!(%peer, "closing a connection whose response made no progress for {write_timeout:?} (the client is not reading)");
            };
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                () = &mut stall => on_stall(),
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, "connection ended during shutdown: {e}");
                            }
                        }
                        () = &mut stall => on_stall(),
                    }
                }
            }
        });
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let open = connections.len();
    tracing::info!(
        open_connections = open,
        "shutting down: no longer accepting, draining in-flight requests"
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown grace period over; closing remaining connections"
        );
        connections.abort_all();
    }
    Ok(())
}
