//! A bounded stress test in the spirit of the Go system's: 10 concurrent workers each write 100 random
//! 1 MB values over HTTP (durability `always`), read each back and compare.
#![allow(clippy::unwrap_used)]

mod common;

use common::TestServer;
use rand::{RngCore, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_workers_write_and_read_back_a_hundred_one_megabyte_values_each() {
    let s = std::sync::Arc::new(TestServer::default().await);
    let workers: Vec<_> = (0..10u64)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(w);
                for i in 0..100 {
                    let mut value = vec![0u8; 1 << 20];
                    rng.fill_bytes(&mut value);
                    let path = format!("/v1/kv/stress-{w}-{i}");
                    let r = s.request("PUT", &path, None, &value).await;
                    assert_eq!(r.status, 200, "worker {w} put {i}: {}", r.text());
                    let r = s.get(&path).await;
                    assert_eq!(r.status, 200, "worker {w} get {i}");
                    assert!(r.body == value, "worker {w} value {i} came back different");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let status = s.get("/v1/status").await.json();
    assert_eq!(status["keys"], 1000);
    assert_eq!(status["writes"], 1000);
}
