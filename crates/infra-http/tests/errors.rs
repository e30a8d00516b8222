//! Every error status of DESIGN §4 and a malformed-input suite. Each case asserts the exact status, the JSON
//! error body, and that the stored data is unchanged afterwards.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::TestServer;
use kv_app::Limits;
use kv_domain::Engine as _;
use kv_infra_fs::sim::{Faults, SimFs};
use kv_infra_http::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// (what, method, path, content type, body, expected status)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
);

async fn seeded() -> TestServer {
    let limits = Limits {
        max_key_bytes: 16,
        max_value_bytes: 64,
        max_batch_ops: 4,
    };
    let s = TestServer::start(
        limits,
        ServerConfig {
            request_timeout: Duration::from_secs(5),
            ..ServerConfig::default()
        },
        kv_domain::Durability::Always,
    )
    .await;
    s.post_json("/batchput", r#"{"a":"1","b":"2","c":"3"}"#)
        .await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_the_exact_status_and_change_nothing() {
    let s = seeded().await;
    let before = s.snapshot();
    let big_value = format!(r#"{{"key":"k","value":"{}"}}"#, "v".repeat(65));
    let big_key = format!(r#"{{"key":"{}","value":"v"}}"#, "k".repeat(17));
    let cases: Vec<Case> = vec![
        (
            "invalid JSON",
            "POST",
            "/put",
            Some("application/json"),
            b"{not json".to_vec(),
            400,
        ),
        (
            "wrong JSON type for key",
            "POST",
            "/put",
            Some("application/json"),
            br#"{"key":5,"value":"v"}"#.to_vec(),
            400,
        ),
        (
            "wrong JSON type for value",
            "POST",
            "/put",
            Some("application/json"),
            br#"{"key":"k","value":[1]}"#.to_vec(),
            400,
        ),
        (
            "missing value",
            "POST",
            "/put",
            Some("application/json"),
            br#"{"key":"k"}"#.to_vec(),
            400,
        ),
        (
            "both value and data",
            "POST",
            "/put",
            Some("application/json"),
            br#"{"key":"k","value":"1","data":"2"}"#.to_vec(),
            400,
        ),
        (
            "empty key",
            "POST",
            "/put",
            Some("application/json"),
            br#"{"key":"","value":"v"}"#.to_vec(),
            400,
        ),
        (
            "JSON array body",
            "POST",
            "/put",
            Some("application/json"),
            b"[]".to_vec(),
            400,
        ),
        (
            "empty body",
            "POST",
            "/put",
            Some("application/json"),
            Vec::new(),
            400,
        ),
        (
            "key over the limit",
            "POST",
            "/put",
            Some("application/json"),
            big_key.into_bytes(),
            413,
        ),
        (
            "value over the limit",
            "POST",
            "/put",
            Some("application/json"),
            big_value.into_bytes(),
            413,
        ),
        (
            "XML content type",
            "POST",
            "/put",
            Some("application/xml"),
            br#"{"key":"k","value":"v"}"#.to_vec(),
            415,
        ),
        (
            "batch not an object",
            "POST",
            "/batchput",
            Some("application/json"),
            br#"["a","b"]"#.to_vec(),
            400,
        ),
        (
            "batch with a number value",
            "POST",
            "/batchput",
            Some("application/json"),
            br#"{"x":"1","y":2}"#.to_vec(),
            400,
        ),
        (
            "batch with an empty key",
            "POST",
            "/batchput",
            Some("application/json"),
            br#"{"x":"1","":"2"}"#.to_vec(),
            400,
        ),
        (
            "empty batch",
            "POST",
            "/batchput",
            Some("application/json"),
            b"{}".to_vec(),
            400,
        ),
        (
            "batch with a repeated key",
            "POST",
            "/batchput",
            Some("application/json"),
            br#"{"x":"1","y":"2","x":"3"}"#.to_vec(),
            400,
        ),
        (
            "put with a repeated field",
            "POST",
            "/put",
            Some("application/json"),
            br#"{"key":"a","key":"b","value":"x"}"#.to_vec(),
            400,
        ),
        (
            "batch over the op limit",
            "POST",
            "/batchput",
            Some("application/json"),
            br#"{"v":"1","w":"2","x":"3","y":"4","z":"5"}"#.to_vec(),
            413,
        ),
        (
            "batch with an oversized value",
            "POST",
            "/batchput",
            Some("application/json"),
            format!(r#"{{"x":"1","y":"{}"}}"#, "v".repeat(65)).into_bytes(),
            413,
        ),
        (
            "delete without key",
            "DELETE",
            "/delete",
            None,
            Vec::new(),
            400,
        ),
        (
            "delete with empty key",
            "POST",
            "/delete?key=",
            None,
            Vec::new(),
            400,
        ),
        (
            "delete with bad percent-encoding",
            "DELETE",
            "/delete?key=%G1",
            None,
            Vec::new(),
            400,
        ),
        (
            "raw put with bad percent-encoding",
            "PUT",
            "/v1/kv/a%2",
            None,
            b"v".to_vec(),
            400,
        ),
        (
            "raw put with empty key",
            "PUT",
            "/v1/kv/",
            None,
            b"v".to_vec(),
            400,
        ),
        (
            "raw put over the value limit",
            "PUT",
            "/v1/kv/k",
            None,
            vec![b'v'; 65],
            413,
        ),
        (
            "unknown path",
            "GET",
            "/nothing-here",
            None,
            Vec::new(),
            404,
        ),
        ("wrong method on /put", "GET", "/put", None, Vec::new(), 405),
        (
            "wrong method on /read",
            "POST",
            "/read?key=a",
            None,
            Vec::new(),
            405,
        ),
        (
            "wrong method on /delete",
            "PUT",
            "/delete?key=a",
            None,
            Vec::new(),
            405,
        ),
        (
            "wrong method on /batchput",
            "DELETE",
            "/batchput",
            None,
            Vec::new(),
            405,
        ),
    ];
    for (what, method, path, ct, body, status) in cases {
        let r = s.request(method, path, ct, &body).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert!(!r.error().is_empty(), "{what}: error message");
        assert_eq!(s.snapshot(), before, "{what}: stored data changed");
    }
    let r = s.request("GET", "/put", None, b"").await;
    assert_eq!(r.header("allow"), Some("POST"));

    for (what, path, status) in [
        ("read without key", "/read", 400),
        ("read with empty key", "/read?key=", 400),
        ("read with bad percent-encoding", "/read?key=%", 400),
        ("read of an absent key", "/read?key=zzz", 404),
        ("readrange without end", "/readrange?start=a", 400),
        ("readrange without start", "/readrange?end=a", 400),
        ("readrange inverted", "/readrange?start=z&end=a", 400),
        (
            "readrange with a bad limit",
            "/readrange?start=a&end=z&limit=-1",
            400,
        ),
        (
            "readrange with a zero limit",
            "/readrange?start=a&end=z&limit=0",
            400,
        ),
        ("listing with a bad cursor", "/v1/kv?cursor=!!", 400),
        ("listing with a bad encoding", "/v1/kv?encoding=hex", 400),
        ("listing over the page limit", "/v1/kv?limit=10001", 400),
        ("raw get of an absent key", "/v1/kv/zzz", 404),
    ] {
        let r = s.get(path).await;
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert!(!r.error().is_empty(), "{what}");
    }
    assert_eq!(s.snapshot(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lengths_are_enforced_before_and_while_reading() {
    let s = seeded().await;
    let before = s.snapshot();
    let limit = 64 + (1 << 20);
    // Declared too large: refused from the header alone, before any body byte is sent.
    let r = s.send(format!("PUT /v1/kv/k HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", limit + 1).as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // Chunked and too large: cut off while reading.
    let mut raw =
        b"POST /put HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..(limit / 65536 + 2) {
        raw.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        raw.extend_from_slice(&vec![b' '; 65536]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = s.send(&raw).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // A chunked raw put within the limit is fine.
    let r = s.send(b"PUT /v1/kv/chunked HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.get("/v1/kv/chunked").await.body, b"abc");
    let after_chunked = s.snapshot();
    assert_eq!(after_chunked.len(), before.len() + 1);
    // Content-Length larger than the body, then the client stops sending: no write happens.
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"POST /put HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{\"key\":\"lie\",\"value\":\"v\"}").await.unwrap();
    c.shutdown().await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await;
    if !buf.is_empty() {
        assert_eq!(common::Resp::parse(&buf).status, 400);
    }
    // Content-Length smaller than the body: the surplus is parsed as a next request and rejected.
    let r = s.send(b"POST /put HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n{\"key\":\"short\",\"value\":\"v\"}").await;
    assert_eq!(r.status, 400, "{}", r.text());
    // An invalid Content-Length header.
    let r = s
        .send(b"POST /put HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: abc\r\n\r\n")
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        s.snapshot(),
        after_chunked,
        "no lying request changed the data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_engine_answers_503_to_writes_and_keeps_serving_reads() {
    let fs = SimFs::new();
    let s = TestServer::start_sim(&fs).await;
    assert_eq!(
        s.post_json("/put", r#"{"key":"kept","value":"v"}"#)
            .await
            .status,
        200
    );
    fs.set_faults(Faults {
        fail_sync_number: Some(fs.syncs() + 1),
        ..Faults::default()
    });
    let r = s.post_json("/put", r#"{"key":"lost","value":"v"}"#).await;
    assert_eq!(r.status, 500, "the write whose fsync failed: {}", r.text());
    for _ in 0..3 {
        let r = s.post_json("/put", r#"{"key":"later","value":"v"}"#).await;
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.error().contains("read-only"), "{}", r.error());
        assert_eq!(
            s.request("DELETE", "/delete?key=kept", None, b"")
                .await
                .status,
            503
        );
    }
    assert_eq!(
        s.get("/read?key=kept").await.body,
        b"v",
        "reads keep working"
    );
    assert!(s.get("/metrics").await.text().contains("kv_poisoned 1"));
    assert!(s.get("/v1/status").await.json()["poisoned"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_507() {
    let fs = SimFs::new();
    let s = TestServer::start_sim(&fs).await;
    // So far the simulated disk holds one 24-byte segment header: a 4 KiB value does not fit in 1 000 bytes.
    fs.set_faults(Faults {
        disk_bytes: Some(1_000),
        ..Faults::default()
    });
    let r = s
        .request("PUT", "/v1/kv/big", None, &vec![b'x'; 4096])
        .await;
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.error().contains("disk full"), "{}", r.error());
    assert_eq!(s.get("/v1/kv/big").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let config = ServerConfig {
        header_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let s = TestServer::start(Limits::default(), config, kv_domain::Durability::Never).await;
    let addr = s.addr;
    // Three clients trickle a header one byte every 200 ms.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                let started = std::time::Instant::now();
                for b in b"GET /health-check HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
                    if c.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
                (started.elapsed(), buf)
            })
        })
        .collect();
    // Meanwhile normal requests are served promptly.
    for i in 0..20 {
        let started = std::time::Instant::now();
        let r = s.request("PUT", &format!("/v1/kv/k{i}"), None, b"v").await;
        assert_eq!(r.status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for h in slow {
        let (elapsed, buf) = h.await.unwrap();
        assert!(
            elapsed < Duration::from_secs(8),
            "a trickling client was held for {elapsed:?}"
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(
            !text.contains("200 OK"),
            "a trickling client got served: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let config = ServerConfig {
        header_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let s = TestServer::start(Limits::default(), config, kv_domain::Durability::Never).await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(b"GET /health-check HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "keep-alive request served"
    );
    // Now idle: the server closes the connection once the header timer runs out.
    let started = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("server never closed the idle connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without another response");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_duplicate_batches_are_refused_with_a_clear_message() {
    let s = seeded().await;
    let before = s.snapshot();
    let lsn = s.engine.last_lsn();
    let r = s.post_json("/batchput", "{}").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("empty batch"), "{}", r.error());
    assert_eq!(
        r.header("x-kv-lsn"),
        None,
        "no LSN for a write that did not happen"
    );
    let r = s
        .post_json("/batchput", r#"{"x":"1","y":"2","x":"3"}"#)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("duplicate key \"x\""), "{}", r.error());
    // Escapes do not hide a repeat: "\u0079" is "y".
    let r = s.post_json("/batchput", r#"{"y":"1","\u0079":"2"}"#).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("duplicate key \"y\""), "{}", r.error());
    let r = s
        .post_json("/put", r#"{"key":"a","key":"b","value":"x"}"#)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("duplicate field `key`"), "{}", r.error());
    assert_eq!(s.snapshot(), before);
    assert_eq!(s.engine.last_lsn(), lsn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodyless_raw_put_stores_an_empty_value() {
    let s = seeded().await;
    // Neither Content-Length nor Transfer-Encoding: an empty body (RFC 9112 §6.3), not 411.
    let r = s
        .send(b"PUT /v1/kv/bodyless HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = s.get("/v1/kv/bodyless").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty(), "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_lose_their_slot_after_the_write_timeout() {
    let config = ServerConfig {
        max_connections: 2,
        write_timeout: Duration::from_millis(500),
        ..ServerConfig::default()
    };
    let s = TestServer::start(Limits::default(), config, kv_domain::Durability::Never).await;
    // ~24 MB of values: far more than the socket buffers of both ends hold.
    let value = "v".repeat(4096);
    for chunk in 0..60 {
        let mut batch = kv_domain::WriteBatch::new();
        for i in 0..100 {
            batch.put(format!("k{chunk:03}-{i:03}"), value.clone());
        }
        s.engine.write_batch(&batch).unwrap();
    }
    // Two clients, with small receive buffers, take both slots with large streamed responses and never
    // read them.
    let mut stalled = Vec::new();
    for path in ["/readrange?start=a&end=z", "/v1/kv?limit=10000"] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut c = socket.connect(s.addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        stalled.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third client is served once the write timeout has freed a slot. Without it, it waits in the
    // backlog for as long as the two stalled clients stay connected (the bound is generous).
    let served = tokio::time::timeout(Duration::from_secs(30), s.get("/health-check"))
        .await
        .expect("a third client was locked out by two clients that do not read");
    assert_eq!((served.status, served.text().as_str()), (200, "OK"));
    // Each stalled connection is closed once its own write has waited for the write timeout. Wait for both
    // before reading them: reading lets a response move again, and the detector then rightly spares it (a
    // race this test lost when one response's wait began a few milliseconds after the other's: that
    // client then read the whole response and its connection ended only at the header timeout).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = s.get("/metrics").await.text();
        if metrics.contains("kv_http_stalled_connections_closed_total 2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stall detector did not close both connections: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stalled connections were closed: reading them ends (after what was buffered) instead of hanging.
    for mut c in stalled {
        let mut sink = vec![0u8; 1 << 16];
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match c.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "a stalled connection was left open");
    }
}
