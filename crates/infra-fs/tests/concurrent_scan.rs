//! A scan concurrent with deletes: a page may only come back short when the range holds no more, because
//! every pager (the server's `/readrange` and `/v1/kv`, `kvctl`) stops at a short page. Keys that live
//! throughout must all be seen, however the keys around them come and go. A listed key reads as absent only
//! when compaction retired its segment and the key was deleted since, so compaction runs throughout too.
//! (That window is narrow: this test does not hit it on every run; it guards the whole paged walk under
//! churn and compaction, and `FsEngine::scan`'s refill loop closes the window by construction.)

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kv_domain::{Durability, Engine, KeyRange};

/// Stable keys `k0000s`..; between each pair a key `k0000c` that a writer deletes and puts back.
const KEYS: usize = 200;
const PAGE: usize = 10;

#[test]
fn paging_through_a_range_sees_every_key_that_lives_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(common::open_real(dir.path(), Durability::Never, 4096));
    for i in 0..KEYS {
        engine
            .put(format!("k{i:04}s").as_bytes(), b"stable")
            .unwrap();
        engine
            .put(format!("k{i:04}c").as_bytes(), b"churn")
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{:04}c", i % KEYS);
                engine.delete(key.as_bytes()).unwrap();
                engine.put(key.as_bytes(), b"churn").unwrap();
                i += 7;
            }
        })
    };
    let compactor = {
        let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Busy while another compaction runs is fine; any other error is not.
                match engine.compact() {
                    Ok(_) | Err(kv_domain::EngineError::Busy(_)) => {}
                    Err(e) => panic!("compaction failed: {e}"),
                }
            }
        })
    };
    for round in 0..300 {
        let mut range = KeyRange::all();
        let mut stable = 0;
        loop {
            let page = engine.scan(&range, PAGE).unwrap();
            stable += page
                .iter()
                .filter(|e| e.key.as_bytes().ends_with(b"s"))
                .count();
            let Some(last) = page.last() else { break };
            if page.len() < PAGE {
                break;
            }
            range = range.after(last.key.as_bytes());
        }
        assert_eq!(
            stable, KEYS,
            "round {round}: a paged scan missed stable keys"
        );
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    compactor.join().unwrap();
}
