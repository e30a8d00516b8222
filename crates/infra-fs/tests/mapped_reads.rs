//! Reads through memory maps (`crates/infra-fs/src/mapped.rs`) when the files under them are deleted:
//! by compaction retiring segments while readers read them, and by someone deleting segment files of a
//! running engine. A map keeps its file's bytes readable after the unlink (rule 4 of the module doc), so
//! neither may crash a reader or hand it a wrong value.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_domain::{Durability, Engine, KeyRange};
use kv_infra_fs::segment::parse_segment_name;

const KEYS: usize = 300;

fn key(i: usize) -> Vec<u8> {
    format!("key{i:04}").into_bytes()
}

/// A value naming its key and version, so a reader can tell a wrong or an older value.
fn value(i: usize, version: u64) -> Vec<u8> {
    format!("key{i:04}@{version:08}:{}", "v".repeat(200)).into_bytes()
}

fn version_of(i: usize, got: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(got);
    let (name, rest) = text
        .split_once('@')
        .unwrap_or_else(|| panic!("malformed value {text:?}"));
    assert_eq!(name, format!("key{i:04}"), "value of another key");
    rest[..8]
        .parse()
        .unwrap_or_else(|_| panic!("malformed version in {text:?}"))
}

#[test]
fn segments_deleted_under_mapped_reads_still_read_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let engine = common::open_real(dir.path(), Durability::Never, 4096);
    for i in 0..KEYS {
        engine.put(&key(i), &value(i, 1)).unwrap();
    }
    // Read everything once, so every segment is mapped.
    for i in 0..KEYS {
        assert_eq!(
            engine.get(&key(i)).unwrap().unwrap().as_bytes(),
            value(i, 1)
        );
    }
    let mut segments: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            parse_segment_name(&e.file_name().to_string_lossy()).map(|id| (id, e.path()))
        })
        .collect();
    segments.sort();
    assert!(
        segments.len() > 10,
        "want many segments, got {}",
        segments.len()
    );
    // Delete every sealed segment's file behind the engine's back.
    for (_, path) in &segments[..segments.len() - 1] {
        std::fs::remove_file(path).unwrap();
    }
    for i in 0..KEYS {
        let got = engine
            .get(&key(i))
            .unwrap()
            .expect("a mapped value outlives its file");
        assert_eq!(got.as_bytes(), value(i, 1));
    }
    let all = engine.scan(&KeyRange::all(), KEYS + 1).unwrap();
    assert_eq!(all.len(), KEYS);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.value.as_bytes(), value(i, 1));
    }
}

#[test]
fn reads_during_compactions_that_delete_segments_see_their_key_and_never_go_back() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(common::open_real(dir.path(), Durability::Never, 4096));
    for i in 0..KEYS {
        engine.put(&key(i), &value(i, 0)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut version = 1u64;
            while !stop.load(Ordering::Relaxed) {
                for i in (0..KEYS).step_by(3) {
                    engine.put(&key(i), &value(i, version)).unwrap();
                }
                version += 1;
            }
        })
    };
    let compactor = {
        let (engine, stop) = (Arc::clone(&engine), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut runs = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match engine.compact() {
                    Ok(_) => runs += 1,
                    Err(kv_domain::EngineError::Busy(_)) => {}
                    Err(e) => panic!("compaction failed: {e}"),
                }
            }
            runs
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                // Each reader's view of each key only moves forward (the keydir only moves forward).
                let mut seen: HashMap<usize, u64> = HashMap::new();
                let deadline = Instant::now() + Duration::from_secs(3);
                let mut reads = 0u64;
                while Instant::now() < deadline {
                    if r == 0 {
                        for i in 0..KEYS {
                            let got = engine.get(&key(i)).unwrap().expect("no key is deleted");
                            let v = version_of(i, got.as_bytes());
                            assert!(v >= seen.get(&i).copied().unwrap_or(0), "key {i} went back");
                            seen.insert(i, v);
                            reads += 1;
                        }
                    } else {
                        let all = engine.scan(&KeyRange::all(), KEYS).unwrap();
                        assert_eq!(all.len(), KEYS);
                        for (i, e) in all.iter().enumerate() {
                            let v = version_of(i, e.value.as_bytes());
                            assert!(v >= seen.get(&i).copied().unwrap_or(0), "key {i} went back");
                            seen.insert(i, v);
                            reads += 1;
                        }
                    }
                }
                reads
            })
        })
        .collect();
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let runs = compactor.join().unwrap();
    assert!(
        runs >= 3,
        "only {runs} compactions ran: the test did not exercise deletion"
    );
    assert!(reads > 10_000, "only {reads} reads");
    let removed = engine.status().compaction.input_segments;
    assert!(removed >= 3, "compactions retired only {removed} segments");
}
