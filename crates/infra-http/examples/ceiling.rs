//! The ceiling for any hyper-based server on this machine: a bare hyper HTTP/1.1 server configured like
//! `kv-server` (same runtime, builder, timer and header timeout) that answers every GET with a fixed
//! 256-byte body and every other request with an empty 200, after reading the body. The HTTP benchmark
//! (`bench/http/run.sh`) measures it in the same run as the real server.
//!
//! Usage: `cargo run --release -p kv-infra-http --example ceiling -- PORT`

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(8090);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let body = Bytes::from(vec![b'x'; 256]);
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = body.clone();
                    async move {
                        let reply = if req.method() == Method::GET {
                            body
                        } else {
                            // Read the request body, as the real server does.
                            let _ = req.into_body().collect().await;
                            Bytes::new()
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(reply)))
                    }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
