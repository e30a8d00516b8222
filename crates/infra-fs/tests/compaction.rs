//! Compaction: contents never change, at any crash point or injected failure, and readers and writers
//! running alongside always see the latest acknowledged values.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{contents, sim_options, Model};
use kv_domain::{Durability, Engine, WriteBatch};
use kv_infra_fs::segment::TEMP_SUFFIX;
use kv_infra_fs::sim::{Faults, SimFs};
use kv_infra_fs::FsEngine;

const DIR: &str = "/data";
const SEGMENT: u64 = 400;

fn open(fs: &SimFs) -> FsEngine {
    FsEngine::open(DIR, sim_options(fs, Durability::Always, SEGMENT)).unwrap()
}

/// A store with overwrites, deletes and batches spread over many small segments.
fn populated() -> (SimFs, Model) {
    let fs = SimFs::new();
    let engine = open(&fs);
    let mut model = Model::new();
    for round in 0..6u32 {
        for k in 0..12u32 {
            let (key, value) = (
                format!("k{k:02}"),
                format!("r{round}-{}", "x".repeat((k * 7 % 40) as usize)),
            );
            if (k + round) % 5 == 0 {
                engine.delete(key.as_bytes()).unwrap();
                model.remove(key.as_bytes());
            } else {
                engine.put(key.as_bytes(), value.as_bytes()).unwrap();
                model.insert(key.into_bytes(), value.into_bytes());
            }
        }
        let mut b = WriteBatch::new();
        b.put(format!("b{round}"), "batch")
            .delete(format!("k{:02}", round));
        engine.write_batch(&b).unwrap();
        model.insert(format!("b{round}").into_bytes(), b"batch".to_vec());
        model.remove(format!("k{round:02}").as_bytes());
    }
    assert!(engine.status().segments > 5);
    (fs, model)
}

fn no_temp_files(fs: &SimFs) -> bool {
    !fs.paths()
        .iter()
        .any(|p| p.to_string_lossy().ends_with(TEMP_SUFFIX))
}

#[test]
fn compaction_keeps_contents_and_reclaims_space() {
    let (fs, model) = populated();
    let engine = open(&fs);
    let before = engine.status();
    let stats = engine.compact().unwrap();
    let after = engine.status();
    assert_eq!(contents(&engine), model);
    assert!(stats.records_copied > 0 && stats.output_bytes < stats.input_bytes);
    assert!(
        after.disk_bytes < before.disk_bytes,
        "{} -> {}",
        before.disk_bytes,
        after.disk_bytes
    );
    assert!(after.garbage_bytes < before.garbage_bytes);
    assert!(no_temp_files(&fs));
    drop(engine);
    let engine = open(&fs);
    assert_eq!(
        contents(&engine),
        model,
        "the compacted store reopens to the same contents"
    );
    assert!(engine.recovery_report().notes.is_empty());
    assert_eq!(engine.compaction_stats().runs, 0);
}

#[test]
fn a_crash_at_any_point_of_compaction_leaves_the_same_contents() {
    let (fs, model) = populated();
    let engine = open(&fs);
    let syncs_before = fs.syncs();
    fs.capture_crash_points();
    engine.compact().unwrap();
    let points = fs.crash_points();
    assert!(
        points.len() >= 4,
        "compaction made {} sync points",
        points.len()
    );
    assert!(fs.syncs() > syncs_before);
    for (n, point) in points.iter().enumerate() {
        for torn in [None, Some(n as u64)] {
            let crashed = point.materialize(torn);
            let engine = FsEngine::open(DIR, sim_options(&crashed, Durability::Always, SEGMENT))
                .unwrap_or_else(|e| panic!("crash point {n} (torn {torn:?}): open failed: {e}"));
            assert_eq!(contents(&engine), model, "crash point {n} (torn {torn:?})");
            assert!(
                no_temp_files(&crashed),
                "crash point {n}: leftovers are cleaned up at open"
            );
            // And it can compact again from there.
            engine.compact().unwrap();
            assert_eq!(contents(&engine), model);
        }
    }
}

#[test]
fn an_injected_failure_at_any_sync_of_compaction_changes_nothing() {
    let (fs, model) = populated();
    let total = {
        let probe = fs.deep_copy();
        let engine = open(&probe);
        let start = probe.syncs();
        engine.compact().unwrap();
        probe.syncs() - start
    };
    let mut failed = 0u32;
    for k in 1..=total {
        let copy = fs.deep_copy();
        let engine = open(&copy);
        copy.set_faults(Faults {
            fail_sync_number: Some(copy.syncs() + k),
            ..Faults::default()
        });
        // A failed hint write is tolerated (only start-up speed depends on hints); any other failure
        // aborts the compaction. Either way nothing may change.
        failed += u32::from(engine.compact().is_err());
        assert_eq!(
            contents(&engine),
            model,
            "failure at sync {k}: the running engine still serves everything"
        );
        drop(engine);
        copy.set_faults(Faults::default());
        let engine = open(&copy);
        assert_eq!(contents(&engine), model, "failure at sync {k}: reopen");
        assert!(no_temp_files(&copy));
    }
    assert!(
        failed * 2 > total as u32,
        "most syncs of a compaction are on its critical path ({failed} of {total} failed it)"
    );
}

#[test]
fn readers_and_writers_see_the_latest_values_during_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let opts = kv_infra_fs::Options {
        durability: Durability::Never,
        max_segment_bytes: 4096,
        ..kv_infra_fs::Options::default()
    };
    let engine = Arc::new(FsEngine::open(dir.path(), opts).unwrap());
    // Stable keys never change: every read must return exactly them. Hot keys only count up.
    for i in 0..2000u32 {
        engine
            .put(
                format!("stable{i:04}").as_bytes(),
                format!("value-{i}").as_bytes(),
            )
            .unwrap();
        engine
            .put(
                format!("hot{}", i % 20).as_bytes(),
                format!("{:010}", i).as_bytes(),
            )
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 2000u32; // above every value the preload wrote, so values only grow
            while !stop.load(Ordering::Relaxed) {
                engine
                    .put(
                        format!("hot{}", n % 20).as_bytes(),
                        format!("{n:010}").as_bytes(),
                    )
                    .unwrap();
                n += 1;
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = [0u32; 20];
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = (reads as u32 * 7 + r) % 2000;
                    let v = engine.get(format!("stable{i:04}").as_bytes()).unwrap();
                    assert_eq!(
                        v.unwrap().as_bytes(),
                        format!("value-{i}").as_bytes(),
                        "stable key read wrong during compaction"
                    );
                    let h = i % 20;
                    let v = engine
                        .get(format!("hot{h}").as_bytes())
                        .unwrap()
                        .expect("a hot key vanished");
                    let n: u32 = std::str::from_utf8(v.as_bytes()).unwrap().parse().unwrap();
                    assert!(
                        n >= last[h as usize],
                        "hot{h} went backwards: {n} after {}",
                        last[h as usize]
                    );
                    last[h as usize] = n;
                    let page = engine
                        .scan(
                            &kv_domain::KeyRange::inclusive("stable0000", "stable1999"),
                            5000,
                        )
                        .unwrap();
                    assert_eq!(page.len(), 2000, "a scan during compaction missed keys");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut runs = 0;
    let progress_seen = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen = false;
            while !stop.load(Ordering::Relaxed) {
                let st = engine.status();
                if let Some(p) = st.compaction_progress {
                    assert!(p.input_bytes > 0, "progress while compacting: {p:?}");
                    seen = true;
                }
            }
            seen
        });
        for _ in 0..10 {
            let stats = engine.compact().unwrap();
            runs += stats.runs;
        }
        stop.store(true, Ordering::Relaxed);
        watcher.join().unwrap()
    });
    assert!(
        progress_seen,
        "the status never showed a compaction in progress"
    );
    assert!(engine.status().compaction_progress.is_none() && !engine.status().compacting);
    writer.join().unwrap();
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert!(runs >= 1);
    assert_eq!(engine.compaction_stats().runs, runs);
}

#[test]
fn start_up_reads_hint_files_and_falls_back_when_they_are_damaged() {
    let (fs, model) = populated();
    {
        let engine = open(&fs);
        engine.compact().unwrap();
    }
    let hints: Vec<_> = fs
        .paths()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".hint"))
        .collect();
    assert!(!hints.is_empty(), "compaction wrote hint files");
    let engine = open(&fs);
    assert_eq!(contents(&engine), model);
    assert_eq!(
        engine.recovery_report().hinted_segments,
        hints.len(),
        "every compacted segment loaded from its hints"
    );
    assert!(engine.recovery_report().notes.is_empty());
    drop(engine);

    let hint = &hints[0];
    let good = fs.read_file(hint).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    for (what, damaged) in [
        ("truncated", Some(good[..good.len() - 3].to_vec())),
        ("corrupt", Some(flipped)),
        ("missing", None),
    ] {
        let copy = fs.deep_copy();
        match damaged {
            Some(bytes) => copy.set_file(hint, bytes),
            None => kv_infra_fs::vfs::FileSystem::remove(&copy, hint).unwrap(),
        }
        let engine = open(&copy);
        assert_eq!(contents(&engine), model, "{what} hint: contents");
        let report = engine.recovery_report();
        assert_eq!(
            report.hinted_segments,
            hints.len() - 1,
            "{what} hint: that segment was scanned"
        );
        if what != "missing" {
            assert!(
                report.notes.iter().any(|n| n.contains("unusable")),
                "{what} hint: fallback reported: {:?}",
                report.notes
            );
        }
    }
}

#[test]
fn the_background_compactor_runs_once_garbage_passes_the_threshold() {
    let fs = SimFs::new();
    let auto = kv_infra_fs::AutoCompaction {
        garbage_ratio: 0.5,
        min_garbage_bytes: 2_000,
        check_every: std::time::Duration::from_millis(10),
    };
    let engine = FsEngine::open(
        DIR,
        kv_infra_fs::Options {
            auto_compaction: Some(auto),
            ..sim_options(&fs, Durability::Never, SEGMENT)
        },
    )
    .unwrap();
    let mut model = Model::new();
    for i in 0..20u32 {
        let (k, v) = (
            format!("k{}", i % 4),
            format!("value {i} {}", "p".repeat(30)),
        );
        engine.put(k.as_bytes(), v.as_bytes()).unwrap();
        model.insert(k.into_bytes(), v.into_bytes());
    }
    // Let the compactor look at least twice (a check before the first tick would prove nothing).
    let looked = engine.compactor_checks();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while engine.compactor_checks() < looked + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the compactor never ticked"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        engine.compaction_stats().runs,
        0,
        "below the byte threshold nothing runs"
    );
    for i in 20..400u32 {
        let (k, v) = (
            format!("k{}", i % 4),
            format!("value {i} {}", "p".repeat(30)),
        );
        engine.put(k.as_bytes(), v.as_bytes()).unwrap();
        model.insert(k.into_bytes(), v.into_bytes());
    }
    // A run may start while the writes still go on (they then leave new garbage behind it); the
    // compactor keeps running while garbage is over the threshold, so wait for it to be under. The
    // threshold has two parts (a ratio and a byte floor): a run can leave 80% garbage that is under the
    // 2 000-byte floor, which is under the threshold too (a run then would reclaim almost nothing).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let status = engine.status();
        let over = status.garbage_bytes >= auto.min_garbage_bytes
            && status.garbage_bytes as f64 >= auto.garbage_ratio * status.disk_bytes as f64;
        if status.compaction.runs > 0 && !over {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the compactor never reclaimed the garbage: {status:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(contents(&engine), model);
}

#[test]
fn a_second_compaction_while_one_runs_is_refused_as_busy() {
    let dir = tempfile::tempdir().unwrap();
    let opts = kv_infra_fs::Options {
        durability: Durability::Never,
        max_segment_bytes: 1 << 16,
        auto_compaction: None,
        ..kv_infra_fs::Options::default()
    };
    let engine = Arc::new(FsEngine::open(dir.path(), opts).unwrap());
    for i in 0..60_000u32 {
        engine
            .put(format!("key{:06}", i % 30_000).as_bytes(), &[b'v'; 100])
            .unwrap();
    }
    let mut busy_seen = false;
    for _attempt in 0..3 {
        let running = {
            let engine = engine.clone();
            std::thread::spawn(move || engine.compact().unwrap())
        };
        while !running.is_finished() {
            if engine.status().compacting {
                match engine.compact() {
                    Err(kv_domain::EngineError::Busy(why)) => {
                        assert!(why.contains("already running"), "{why}");
                        busy_seen = true;
                        break;
                    }
                    Err(e) => panic!("unexpected error {e}"),
                    Ok(_) => {} // the first one finished just before: try again
                }
            }
        }
        running.join().unwrap();
        if busy_seen {
            break;
        }
        for i in 0..30_000u32 {
            engine
                .put(format!("key{i:06}").as_bytes(), &[b'w'; 100])
                .unwrap();
        }
    }
    assert!(busy_seen, "never caught a compaction running");
}

#[test]
fn lsns_never_go_backwards_when_compaction_drops_the_newest_records() {
    // Found by the model test: a final delete that compaction drops must not take its LSN with it.
    let fs = SimFs::new();
    let opts = || kv_infra_fs::Options {
        auto_compaction: None,
        ..sim_options(&fs, Durability::Always, 100)
    };
    let last = {
        let engine = FsEngine::open(DIR, opts()).unwrap();
        engine.put(b"a", &[b'v'; 16]).unwrap();
        // The put and this delete fill the 100-byte segment exactly; reopening then starts a new one.
        engine.delete(b"a").unwrap()
    };
    let engine = FsEngine::open(DIR, opts()).unwrap();
    assert_eq!(engine.last_lsn(), last);
    let stats = engine.compact().unwrap();
    assert_eq!(
        (stats.input_segments, stats.records_copied),
        (1, 0),
        "the only sealed segment held nothing live"
    );
    drop(engine);
    let engine = FsEngine::open(DIR, opts()).unwrap();
    assert_eq!(engine.last_lsn(), last, "the LSN survived compaction");
    assert!(engine.put(b"b", b"1").unwrap() > last);
}

#[test]
fn a_manual_compaction_seals_an_active_segment_that_holds_garbage() {
    let fs = SimFs::new();
    // One large active segment: two thirds of it overwritten values.
    let engine = FsEngine::open(DIR, sim_options(&fs, Durability::Always, 1 << 20)).unwrap();
    let mut model = Model::new();
    for round in 0..3u32 {
        for k in 0..50u32 {
            let (key, value) = (format!("k{k:02}"), format!("r{round}-{}", "x".repeat(100)));
            engine.put(key.as_bytes(), value.as_bytes()).unwrap();
            model.insert(key.into_bytes(), value.into_bytes());
        }
    }
    let before = engine.status();
    assert_eq!(before.segments, 1, "everything is in the active segment");
    assert!(before.garbage_bytes * 3 >= before.disk_bytes * 2 - 200);
    let stats = engine.compact().unwrap();
    assert_eq!((stats.runs, stats.input_segments), (1, 1), "{stats:?}");
    let after = engine.status();
    assert_eq!(after.garbage_bytes, 0);
    assert!(
        after.disk_bytes * 2 < before.disk_bytes,
        "{} -> {}",
        before.disk_bytes,
        after.disk_bytes
    );
    assert_eq!(contents(&engine), model);
    engine.put(b"after", b"compaction").unwrap();
    model.insert(b"after".to_vec(), b"compaction".to_vec());
    drop(engine);
    let engine = FsEngine::open(DIR, sim_options(&fs, Durability::Always, 1 << 20)).unwrap();
    assert_eq!(contents(&engine), model);
}

#[test]
fn compaction_skips_segments_with_nothing_to_reclaim() {
    let fs = SimFs::new();
    let engine = open(&fs);
    // Distinct keys only: no segment holds garbage.
    for k in 0..40u32 {
        engine
            .put(format!("k{k:02}").as_bytes(), "x".repeat(60).as_bytes())
            .unwrap();
    }
    assert!(engine.status().segments > 3);
    assert_eq!(engine.status().garbage_bytes, 0);
    let files = fs.paths();
    let stats = engine.compact().unwrap();
    assert_eq!(
        (
            stats.input_segments,
            stats.output_bytes,
            stats.records_copied
        ),
        (0, 0, 0),
        "nothing rewritten: {stats:?}"
    );
    assert_eq!(fs.paths(), files, "no file was touched");

    // Garbage in the oldest segment (k00's put) and the active one (the tombstone): those two are
    // compacted, the segments between them are left alone.
    engine.delete(b"k00").unwrap();
    let mut untouched: Vec<_> = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".seg"))
        .cloned()
        .collect();
    untouched.sort();
    untouched.remove(0);
    untouched.pop();
    let stats = engine.compact().unwrap();
    assert_eq!(stats.input_segments, 2, "{stats:?}");
    assert_eq!(engine.status().garbage_bytes, 0);
    for p in &untouched {
        assert!(fs.read_file(p).is_some(), "{} was left alone", p.display());
    }
    let mut model: Model = (1..40u32)
        .map(|k| (format!("k{k:02}").into_bytes(), "x".repeat(60).into_bytes()))
        .collect();
    assert_eq!(contents(&engine), model);
    drop(engine);
    let engine = open(&fs);
    assert_eq!(contents(&engine), model);
    engine.put(b"k00", b"back").unwrap();
    model.insert(b"k00".to_vec(), b"back".to_vec());
    assert_eq!(contents(&engine), model);
}
