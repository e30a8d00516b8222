//! An in-process server on 127.0.0.1:0 and a raw HTTP/1.1 client (raw so that tests can send malformed
//! requests: lying lengths, bad encodings, trickled headers).
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kv_app::{KvService, Limits};
use kv_domain::{Durability, Engine};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::{FsEngine, Options};
use kv_infra_http::metrics::Metrics;
use kv_infra_http::replication::Replication;
use kv_infra_http::{serve, ServerConfig, ServerState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A running server; dropping it shuts the server down.
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Arc<FsEngine>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server over a real temporary directory.
    pub async fn start(limits: Limits, config: ServerConfig, durability: Durability) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = FsEngine::open(
            dir.path(),
            Options {
                durability,
                ..Options::default()
            },
        )
        .unwrap();
        Self::with_engine(engine, limits, config, Some(dir)).await
    }

    /// A server over a simulated file system (for injected faults).
    pub async fn start_sim(fs: &SimFs) -> Self {
        let engine = FsEngine::open(
            "/data",
            Options {
                fs: Arc::new(fs.clone()),
                ..Options::default()
            },
        )
        .unwrap();
        Self::with_engine(engine, Limits::default(), ServerConfig::default(), None).await
    }

    /// A server over a real temporary directory whose replication role `role` builds from the engine
    /// and the directory (e.g. a leader with followers configured, or a follower).
    pub async fn start_replicated(
        role: impl FnOnce(Arc<FsEngine>, &std::path::Path) -> Replication,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(FsEngine::open(dir.path(), Options::default()).unwrap());
        let replication = role(engine.clone(), dir.path());
        Self::with_state(
            engine,
            Limits::default(),
            ServerConfig::default(),
            Some(dir),
            replication,
        )
        .await
    }

    async fn with_engine(
        engine: FsEngine,
        limits: Limits,
        config: ServerConfig,
        dir: Option<tempfile::TempDir>,
    ) -> Self {
        Self::with_state(
            Arc::new(engine),
            limits,
            config,
            dir,
            Replication::standalone(),
        )
        .await
    }

    async fn with_state(
        engine: Arc<FsEngine>,
        limits: Limits,
        config: ServerConfig,
        dir: Option<tempfile::TempDir>,
        replication: Replication,
    ) -> Self {
        let state = Arc::new(ServerState {
            service: KvService::new(engine.clone(), limits),
            metrics: Arc::new(Metrics::default()),
            max_body_bytes: limits.max_value_bytes + (1 << 20),
            replication,
            auth: kv_infra_http::auth::AuthPolicy::open(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, state, config, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            engine,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub async fn default() -> Self {
        Self::start(
            Limits::default(),
            ServerConfig::default(),
            Durability::Always,
        )
        .await
    }

    /// Stops the server and waits for it to drain.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }

    /// Every pair in the store (to check that a bad request changed nothing).
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.engine
            .scan(&kv_domain::KeyRange::all(), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| (e.key.into_bytes(), e.value.into_bytes()))
            .collect()
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
            .await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Resp {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            raw.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes).await
    }

    pub async fn post_json(&self, path: &str, body: &str) -> Resp {
        self.request("POST", path, Some("application/json"), body.as_bytes())
            .await
    }

    /// Sends raw bytes and reads the response until the server closes the connection.
    pub async fn send(&self, raw: &[u8]) -> Resp {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut buf)).await;
        Resp::parse(&buf)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn parse(raw: &[u8]) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
        {
            body = dechunk(&body);
        }
        Resp {
            status,
            headers,
            body,
        }
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The message of a `{"error": ...}` body (asserting that shape).
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {}", self.text()))
            .to_string()
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}
