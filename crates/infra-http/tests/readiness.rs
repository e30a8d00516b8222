//! `GET /readyz` and a follower's refusal of a leader of another history, over real sockets: a poisoned
//! engine, a follower whose leader is down, a half-installed snapshot, and a "leader" of a foreign history
//! (writes are not forwarded to it, `min_lsn` reads are refused, and the leader itself refuses a forward
//! from a follower of another history).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::TestServer;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use kv_app::{KvService, Limits, MemoryMetaStore, Replica};
use kv_domain::{Engine, Lsn, MemoryEngine, MetaStore, ReplicaMeta};
use kv_infra_fs::sim::{Faults, SimFs};
use kv_infra_http::client::Client;
use kv_infra_http::metrics::Metrics;
use kv_infra_http::replication::{FollowerNode, Replication, Role};
use kv_infra_http::{serve, ServerConfig, ServerState};
use serde_json::Value as Json;

/// A server over an in-memory engine with the given replication; runs until the test ends.
struct Node {
    url: String,
    engine: Arc<MemoryEngine>,
}

async fn node(replication: impl FnOnce(Arc<MemoryEngine>) -> Replication) -> Node {
    let engine = Arc::new(MemoryEngine::new());
    let state = Arc::new(ServerState {
        service: KvService::new(engine.clone(), Limits::default()),
        metrics: Arc::new(Metrics::default()),
        max_body_bytes: 1 << 20,
        replication: replication(engine.clone()),
        auth: kv_infra_http::auth::AuthPolicy::open(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        listener,
        state,
        ServerConfig::default(),
        std::future::pending(),
    ));
    Node { url, engine }
}

/// A leader of history `history` with no followers.
async fn leader(history: &str) -> Node {
    let history = history.to_string();
    node(move |_| Replication {
        history: Some(history),
        ..Replication::standalone()
    })
    .await
}

/// A follower of `leader_url` whose replication metadata is `meta`.
async fn follower(leader_url: &str, meta: ReplicaMeta) -> Node {
    let leader_url = leader_url.to_string();
    node(move |engine| {
        let store = Arc::new(MemoryMetaStore::default());
        store.store(&meta).unwrap();
        let replica = Replica::open(engine, store).unwrap();
        Replication {
            role: Role::Follower(FollowerNode::new(replica, &leader_url, None).unwrap()),
            max_read_wait: Duration::from_millis(100),
            ..Replication::standalone()
        }
    })
    .await
}

fn synced(history: &str) -> ReplicaMeta {
    ReplicaMeta {
        history: Some(history.into()),
        snapshot_base: None,
    }
}

async fn call(url: &str, method: Method, path: &str, body: &str) -> (StatusCode, Json) {
    let (status, body) = Client::new(url)
        .unwrap()
        .send(method, path, Bytes::from(body.to_string()))
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Json::Null))
}

fn reasons(body: &Json) -> String {
    assert_eq!(body["ready"], false, "{body}");
    body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_engine_is_live_but_not_ready() {
    let fs = SimFs::new();
    let s = TestServer::start_sim(&fs).await;
    let r = s.get("/readyz").await;
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"ready": true}))
    );
    fs.set_faults(Faults {
        fail_sync_number: Some(fs.syncs() + 1),
        ..Faults::default()
    });
    let r = s.post_json("/put", r#"{"key":"k","value":"v"}"#).await;
    assert_eq!(r.status, 500, "the write whose fsync failed: {}", r.text());
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text());
    let why = reasons(&r.json());
    assert!(why.contains("poisoned"), "{why}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    // Liveness stays the Go system's answer.
    let r = s.get("/health-check").await;
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_is_ready_only_while_its_leader_answers() {
    let l = leader("h1").await;
    let f = follower(&l.url, synced("h1")).await;
    let (status, body) = call(&f.url, Method::GET, "/readyz", "").await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &serde_json::json!({"ready": true}))
    );

    let orphan = follower(&format!("http://127.0.0.1:{}", closed_port()), synced("h1")).await;
    let (status, body) = call(&orphan.url, Method::GET, "/readyz", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let why = reasons(&body);
    assert!(why.contains("leader unreachable"), "{why}");
    let (status, _) = call(&orphan.url, Method::GET, "/health-check", "").await;
    assert_eq!(status, StatusCode::OK, "still live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_installed_snapshot_is_not_ready() {
    let l = leader("h1").await;
    let f = follower(
        &l.url,
        ReplicaMeta {
            history: Some("h1".into()),
            snapshot_base: Some(Lsn(7)),
        },
    )
    .await;
    let (status, body) = call(&f.url, Method::GET, "/readyz", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let why = reasons(&body);
    assert!(
        why.contains("snapshot") && why.contains("half-installed"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_its_followers_down_is_ready() {
    let l = node(|engine| Replication {
        role: Role::Leader(Some(kv_infra_http::replication::LeaderHub::new(
            engine,
            "h1".into(),
            None,
            kv_infra_http::replication::AckPolicy {
                followers: 0,
                timeout: Duration::from_secs(1),
            },
            &[format!("http://127.0.0.1:{}", closed_port())],
        ))),
        history: Some("h1".into()),
        ..Replication::standalone()
    })
    .await;
    let (status, body) = call(&l.url, Method::GET, "/readyz", "").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"ready": true}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_nothing_to_a_leader_of_another_history() {
    let stranger = leader("stranger").await;
    let f = follower(&stranger.url, synced("ours")).await;
    // Not yet aware of the mismatch: the forward names our history and the stranger itself refuses it.
    let (status, body) = call(&f.url, Method::POST, "/put", r#"{"key":"k","value":"v"}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("history mismatch"), "{error}");
    assert_eq!(
        stranger.engine.last_lsn(),
        Lsn::ZERO,
        "the stranger applied nothing"
    );
    // Now the follower refuses before sending anything, in both APIs ...
    for (method, path, body) in [
        (Method::PUT, "/v1/kv/k", "v"),
        (Method::DELETE, "/v1/kv/k", ""),
        (Method::POST, "/batchput", r#"{"a":"1"}"#),
        (Method::DELETE, "/delete?key=k", ""),
    ] {
        let (status, answer) = call(&f.url, method.clone(), path, body).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {answer}"
        );
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("history mismatch"),
            "{answer}"
        );
    }
    assert_eq!(
        stranger.engine.last_lsn(),
        Lsn::ZERO,
        "the stranger applied nothing"
    );
    // ... answers no min_lsn read (LSNs of two histories do not compare), still serves plain reads ...
    let (status, answer) = call(&f.url, Method::GET, "/read?key=k&min_lsn=0", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("history mismatch"),
        "{answer}"
    );
    let (status, _) = call(&f.url, Method::GET, "/read?key=k", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // ... and is not ready.
    let (status, body) = call(&f.url, Method::GET, "/readyz", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reasons(&body).contains("history mismatch"), "{body}");
    let (_, st) = call(&f.url, Method::GET, "/v1/status", "").await;
    assert!(st["replication"]["refusing"].is_string(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refusal_ends_when_the_leader_of_our_history_is_back() {
    // The leader's handshake names its history: a stranger's starts the refusal, ours ends it.
    let ours = leader("ours").await;
    let f = follower(&ours.url, synced("ours")).await;
    let handshake = |history: &'static str| {
        let url = f.url.clone();
        async move {
            let h = [(
                HeaderName::from_static("x-kv-history"),
                HeaderValue::from_static(history),
            )];
            Client::new(&url)
                .unwrap()
                .send_with(Method::GET, "/v1/replication/state", &h, Bytes::new())
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(handshake("stranger").await, StatusCode::OK);
    let (_, st) = call(&f.url, Method::GET, "/v1/status", "").await;
    assert!(st["replication"]["refusing"]
        .as_str()
        .unwrap()
        .contains("history mismatch"));
    // A refusal is checked against the configured leader before a write is refused: ours is there.
    let (status, body) = call(&f.url, Method::POST, "/put", r#"{"key":"k","value":"v"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ours.engine.last_lsn(), Lsn(1));
    assert_eq!(handshake("ours").await, StatusCode::OK);
    let (_, st) = call(&f.url, Method::GET, "/v1/status", "").await;
    assert!(st["replication"]["refusing"].is_null(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_refuses_a_forward_from_a_follower_of_another_history() {
    let l = leader("h1").await;
    let send = |expected: Option<&'static str>| {
        let url = l.url.clone();
        async move {
            let h: Vec<_> = expected
                .map(|e| {
                    (
                        HeaderName::from_static("x-kv-expected-history"),
                        HeaderValue::from_static(e),
                    )
                })
                .into_iter()
                .collect();
            Client::new(&url)
                .unwrap()
                .send_with(Method::PUT, "/v1/kv/k", &h, Bytes::from_static(b"v"))
                .await
                .unwrap()
        }
    };
    let (status, headers, body) = send(Some("h0")).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(headers.get("x-kv-history").unwrap(), "h1");
    assert_eq!(l.engine.last_lsn(), Lsn::ZERO);
    assert_eq!(send(Some("h1")).await.0, StatusCode::OK);
    assert_eq!(
        send(None).await.0,
        StatusCode::OK,
        "clients name no history"
    );
    assert_eq!(l.engine.last_lsn(), Lsn(2));
}

/// A stand-in leader answering every request with the state of a leader of history `h1`, counting the
/// requests it gets.
async fn counting_leader() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = r#"{"role":"leader","history":"h1","last_lsn":0}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, count)
}

/// `/readyz` is open to anyone, and a follower's readiness asks its leader: however often readiness
/// is asked, the leader is probed at most once per `PROBE_REUSE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_readiness_checks_probes_the_leader_once() {
    let (leader_url, probes) = counting_leader().await;
    let f = follower(&leader_url, synced("h1")).await;
    let burst: Vec<_> = (0..40)
        .map(|_| {
            let url = f.url.clone();
            tokio::spawn(async move { call(&url, Method::GET, "/readyz", "").await })
        })
        .collect();
    for answer in burst {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let after_burst = probes.load(std::sync::atomic::Ordering::SeqCst);
    // One probe, or two should the burst straddle a window on a slow machine; 40 without the memo.
    assert!((1..=2).contains(&after_burst), "{after_burst} probes");
    tokio::time::sleep(kv_infra_http::replication::ready::PROBE_REUSE).await;
    assert_eq!(
        call(&f.url, Method::GET, "/readyz", "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        probes.load(std::sync::atomic::Ordering::SeqCst),
        after_burst + 1,
        "a window later, a new probe"
    );
}
