//! The descriptor budget: with thousands of segments, open descriptors stay within `max_open_files`
//! through recovery, reads of every segment, and compaction; none stays on a deleted file.
//! (One test in its own binary, so no other test's files are counted.)
#![allow(clippy::unwrap_used)]

use kv_domain::{Durability, Engine, KeyRange};
use kv_infra_fs::{FsEngine, Options};

/// Open descriptors of this process, and how many of them point at deleted files.
fn descriptors() -> (usize, usize) {
    let mut total = 0;
    let mut deleted = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        total += 1;
        if std::fs::read_link(e.path()).is_ok_and(|p| p.to_string_lossy().ends_with("(deleted)")) {
            deleted += 1;
        }
    }
    (total, deleted)
}

#[test]
fn open_descriptors_stay_within_the_budget_whatever_the_number_of_segments() {
    const BUDGET: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        durability: Durability::Never,
        max_segment_bytes: 200,
        max_open_files: BUDGET,
        auto_compaction: None,
        ..Options::default()
    };
    let (baseline, _) = descriptors();
    let n = 3000u32;
    {
        let engine = FsEngine::open(dir.path(), opts()).unwrap();
        for i in 0..n {
            engine
                .put(
                    format!("key{i:05}").as_bytes(),
                    format!("value-{i}-{}", "v".repeat(100)).as_bytes(),
                )
                .unwrap();
        }
        assert!(
            engine.status().segments >= 2000,
            "{} segments",
            engine.status().segments
        );
        let (open, _) = descriptors();
        assert!(
            open - baseline <= BUDGET + 2,
            "while writing: {} descriptors over the baseline",
            open - baseline
        );
    }
    // Recovery opens (and closes) every segment; reads touch every one of them.
    let engine = FsEngine::open(dir.path(), opts()).unwrap();
    let (open, _) = descriptors();
    assert!(
        open - baseline <= BUDGET + 2,
        "after recovery: {} descriptors over the baseline",
        open - baseline
    );
    for i in (0..n).rev() {
        assert!(engine
            .get(format!("key{i:05}").as_bytes())
            .unwrap()
            .is_some());
    }
    assert_eq!(
        engine.scan(&KeyRange::all(), usize::MAX).unwrap().len(),
        n as usize
    );
    let (open, _) = descriptors();
    assert!(
        open - baseline <= BUDGET + 2,
        "after reading every segment: {} descriptors over the baseline",
        open - baseline
    );
    // Compaction merges them all and deletes the inputs: no descriptor left on a deleted file.
    for i in 0..n / 2 {
        engine.delete(format!("key{i:05}").as_bytes()).unwrap();
    }
    engine.compact().unwrap();
    assert_eq!(
        engine.scan(&KeyRange::all(), usize::MAX).unwrap().len(),
        (n / 2) as usize
    );
    let (open, deleted) = descriptors();
    assert_eq!(deleted, 0, "descriptors held on deleted segment files");
    assert!(
        open - baseline <= BUDGET + 2,
        "after compaction: {} descriptors over the baseline",
        open - baseline
    );
}
