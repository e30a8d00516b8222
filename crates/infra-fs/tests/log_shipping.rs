//! Log shipping: reading the log back (`read_log`), applying it on a follower (`apply_log`), snapshot pages,
//! and the history compaction keeps for followers (`retain_log_after`). The model is `MemoryEngine`, which
//! logs every write it takes.
#![allow(clippy::unwrap_used)]

mod common;

use common::Model;
use common::{contents, sim_options};
use kv_domain::{
    BatchOp, Durability, Engine, EngineError, FrozenView, Key, LogCursor, LogEntry, LogRead,
    LogShipping, Lsn, MemoryEngine, Value, WriteBatch,
};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::FsEngine;
use proptest::prelude::*;

const SEGMENT: u64 = 600;

fn open(fs: &SimFs, dir: &str, durability: Durability) -> FsEngine {
    FsEngine::open(dir, sim_options(fs, durability, SEGMENT)).unwrap()
}

/// Applies the same writes to both engines: puts, deletes and batches over a small key space.
fn write_both(leader: &dyn Engine, model: &dyn Engine, ops: &[(u8, u8, u8)]) {
    for &(kind, k, v) in ops {
        let key = format!("k{:02}", k % 24);
        let value = format!("v{v}-{}", "x".repeat(v as usize % 50));
        match kind % 4 {
            0 | 1 => {
                leader.put(key.as_bytes(), value.as_bytes()).unwrap();
                model.put(key.as_bytes(), value.as_bytes()).unwrap();
            }
            2 => {
                leader.delete(key.as_bytes()).unwrap();
                model.delete(key.as_bytes()).unwrap();
            }
            _ => {
                let mut b = WriteBatch::new();
                b.put(key.as_str(), value.as_str())
                    .delete(format!("k{:02}", (k + 1) % 24).as_str())
                    .put(format!("k{:02}", (k + 2) % 24).as_str(), "batch");
                leader.write_batch(&b).unwrap();
                model.write_batch(&b).unwrap();
            }
        }
    }
}

/// Reads the whole log after `from` in chunks of about `chunk` bytes, following cursors.
fn read_all(engine: &dyn LogShipping, from: Lsn, chunk: usize) -> Vec<LogEntry> {
    let mut cursor = LogCursor::after(from);
    let mut out = Vec::new();
    loop {
        match engine.read_log(&cursor, chunk).unwrap() {
            LogRead::Entries { entries, next } => {
                if entries.is_empty() {
                    assert_eq!(next.after, cursor.after, "an empty read does not move");
                    return out;
                }
                assert!(entries.windows(2).all(|w| w[0].lsn < w[1].lsn));
                assert!(entries[0].lsn > cursor.after);
                assert_eq!(next.after, entries.last().unwrap().lsn);
                out.extend(entries);
                cursor = next;
            }
            LogRead::Gone { oldest } => panic!("history gone (oldest {oldest})"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever was written, the log read back in any chunk size is exactly the model's log, and a follower
    /// applying it (in pieces, with re-deliveries) ends with the leader's contents and last LSN, also after
    /// reopening.
    #[test]
    fn log_read_back_equals_the_writes_and_a_follower_converges(
        ops in prop::collection::vec((0u8..4, 0u8..30, 0u8..200), 1..120),
        chunk in 1usize..400,
        from_frac in 0usize..4,
    ) {
        let fs = SimFs::new();
        let leader = open(&fs, "/leader", Durability::Always);
        let model = MemoryEngine::new();
        write_both(&leader, &model, &ops);
        let expected = read_all(&model, Lsn::ZERO, usize::MAX);
        prop_assert_eq!(&read_all(&leader, Lsn::ZERO, chunk), &expected);
        // From a middle LSN, without a position hint.
        let from = Lsn(leader.last_lsn().0 * from_frac as u64 / 4);
        let tail: Vec<_> = expected.iter().filter(|e| e.lsn > from).cloned().collect();
        prop_assert_eq!(read_all(&leader, from, chunk), tail);

        let follower = open(&fs, "/follower", Durability::Never);
        for piece in expected.chunks(7) {
            follower.apply_log(piece).unwrap();
            // Re-delivering what is already applied changes nothing.
            follower.apply_log(piece).unwrap();
        }
        prop_assert_eq!(follower.last_lsn(), leader.last_lsn());
        prop_assert_eq!(contents(&follower), contents(&leader));
        drop(follower);
        let follower = open(&fs, "/follower", Durability::Never);
        prop_assert_eq!(follower.last_lsn(), leader.last_lsn());
        prop_assert_eq!(contents(&follower), contents(&leader));
    }
}

#[test]
fn compaction_drops_history_unless_retained() {
    let fs = SimFs::new();
    let leader = open(&fs, "/leader", Durability::Always);
    let model = MemoryEngine::new();
    let ops: Vec<(u8, u8, u8)> = (0..200u32)
        .map(|i| ((i % 4) as u8, (i * 7 % 30) as u8, (i % 200) as u8))
        .collect();
    write_both(&leader, &model, &ops);
    let expected = read_all(&model, Lsn::ZERO, usize::MAX);

    // A follower at LSN 120 is being served: compaction keeps everything after it.
    leader.retain_log_after(Some(Lsn(120)));
    leader.compact().unwrap();
    let tail: Vec<_> = expected
        .iter()
        .filter(|e| e.lsn > Lsn(120))
        .cloned()
        .collect();
    assert_eq!(read_all(&leader, Lsn(120), 256), tail);
    assert!(
        matches!(
            leader.read_log(&LogCursor::after(Lsn::ZERO), 256).unwrap(),
            LogRead::Gone { .. }
        ),
        "history below the retention point was compacted"
    );

    // Nobody needs history any more: the next compaction takes every sealed segment.
    leader.retain_log_after(None);
    write_both(&leader, &model, &ops[..40]);
    leader.compact().unwrap();
    match leader.read_log(&LogCursor::after(Lsn(120)), 256).unwrap() {
        LogRead::Gone { oldest } => assert!(oldest > Lsn(121)),
        other => panic!("expected Gone, got {other:?}"),
    }
    // The manual compaction sealed the active segment too (it held garbage); what is written next is
    // readable from the new active segment.
    write_both(&leader, &model, &ops[..1]);
    let last = leader.last_lsn();
    let newest = read_all(&leader, Lsn(last.0 - 1), 256);
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].lsn, last);
}

#[test]
fn snapshot_pages_then_incremental_entries_survive_reopen() {
    let fs = SimFs::new();
    let follower = open(&fs, "/follower", Durability::Always);
    follower.put(b"stale", b"old").unwrap();
    let put = |k: &str, v: &str| BatchOp::Put {
        key: Key::from(k),
        value: Value::from(v),
    };
    let base = Lsn(500);
    follower
        .install_snapshot_page(
            base,
            &[
                put("a", "1"),
                put("b", "2"),
                BatchOp::Delete {
                    key: Key::from("stale"),
                },
            ],
        )
        .unwrap();
    follower
        .install_snapshot_page(base, &[put("c", "3")])
        .unwrap();
    assert_eq!(follower.last_lsn(), base);
    // Every page is visible (and durable) when the call returns, not only the first at this LSN.
    assert_eq!(follower.get(b"c").unwrap(), Some(Value::from("3")));
    drop(follower);
    let follower = open(&fs, "/follower", Durability::Always);
    assert_eq!(follower.get(b"c").unwrap(), Some(Value::from("3")));
    let empty = follower.apply_log(&[LogEntry {
        lsn: Lsn(900),
        ops: vec![],
    }]);
    assert!(empty.is_err(), "an entry without operations is refused");
    let behind = follower.install_snapshot_page(Lsn(499), &[put("x", "y")]);
    assert!(behind.is_err(), "a snapshot behind the log is refused");
    follower
        .apply_log(&[
            LogEntry {
                lsn: Lsn(500),
                ops: vec![put("ignored", "already applied")],
            },
            LogEntry {
                lsn: Lsn(501),
                ops: vec![put("a", "10"), put("d", "4")],
            },
            LogEntry {
                lsn: Lsn(502),
                ops: vec![BatchOp::Delete {
                    key: Key::from("b"),
                }],
            },
        ])
        .unwrap();
    let want = |e: &FsEngine| {
        assert_eq!(e.last_lsn(), Lsn(502));
        let got: Vec<(Vec<u8>, Vec<u8>)> = contents(e).into_iter().collect();
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), b"10".to_vec()),
                (b"c".to_vec(), b"3".to_vec()),
                (b"d".to_vec(), b"4".to_vec()),
            ]
        );
    };
    want(&follower);
    drop(follower);
    want(&open(&fs, "/follower", Durability::Always));
}

#[test]
fn the_log_is_readable_while_writers_append() {
    let dir = tempfile::tempdir().unwrap();
    let leader = std::sync::Arc::new(common::open_real(dir.path(), Durability::Always, 4096));
    let writer = {
        let leader = leader.clone();
        std::thread::spawn(move || {
            for i in 0..3000u32 {
                leader
                    .put(format!("k{}", i % 100).as_bytes(), &i.to_le_bytes())
                    .unwrap();
            }
        })
    };
    let mut cursor = LogCursor::default();
    let mut seen = 0u64;
    while seen < 3000 {
        if let LogRead::Entries { entries, next } = leader.read_log(&cursor, 1000).unwrap() {
            for e in &entries {
                seen += 1;
                assert_eq!(e.lsn, Lsn(seen), "entries arrive gap-free in LSN order");
                assert!(e.lsn <= leader.durable_lsn());
            }
            cursor = next;
        }
    }
    writer.join().unwrap();
}

/// `apply_log_unsynced`, a Raft state machine's apply: in `never` mode (how a cluster member's engine
/// runs) what it applied is visible at once, without an fsync, and a power loss right after may take it
/// (the Raft log holds it); once the engine syncs, it survives. In `always` mode, where a write is
/// published by its group's fsync, it waits for that fsync like `apply_log`.
#[test]
fn unsynced_applies_are_visible_at_once_and_durable_from_the_next_sync() {
    let entry = |lsn: u64, key: &str| LogEntry {
        lsn: Lsn(lsn),
        ops: vec![BatchOp::Put {
            key: Key::from(key),
            value: Value::from("v"),
        }],
    };
    let fs = SimFs::new();
    let engine = open(&fs, "/n", Durability::Never);
    let syncs = fs.syncs();
    assert_eq!(
        engine
            .apply_log_unsynced(&[entry(1, "a"), entry(2, "b")])
            .unwrap(),
        Lsn(2)
    );
    assert_eq!(fs.syncs(), syncs, "no fsync for an unsynced apply");
    assert_eq!(engine.get(b"b").unwrap(), Some(Value::from("v")));
    let after_power_loss = || {
        let image = fs.crash_image().materialize(None);
        FsEngine::open("/n", sim_options(&image, Durability::Never, SEGMENT)).unwrap()
    };
    let lost = after_power_loss();
    assert_eq!(lost.get(b"b").unwrap(), None, "not durable before a sync");
    engine.sync().unwrap();
    let kept = after_power_loss();
    assert_eq!(kept.get(b"b").unwrap(), Some(Value::from("v")));
    assert_eq!(kept.last_lsn(), Lsn(2));

    let fs = SimFs::new();
    let engine = open(&fs, "/a", Durability::Always);
    let syncs = fs.syncs();
    engine.apply_log_unsynced(&[entry(1, "a")]).unwrap();
    assert!(
        fs.syncs() > syncs,
        "`always` publishes a write with its group's fsync"
    );
    assert_eq!(engine.get(b"a").unwrap(), Some(Value::from("v")));
}

/// Reads `view` to its end in pages of at most `page` entries, checking they come in key order.
fn read_frozen(view: &mut dyn FrozenView, page: usize, out: &mut Model) -> usize {
    let mut pages = 0;
    loop {
        let got = view.next_page(page).unwrap();
        assert!(
            got.len() <= page,
            "a page of {} entries asked for {page}",
            got.len()
        );
        if got.is_empty() {
            return pages;
        }
        pages += 1;
        for e in got {
            let key = e.key.into_bytes();
            assert!(
                out.keys().next_back().is_none_or(|last| *last < key),
                "key order"
            );
            out.insert(key, e.value.into_bytes());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// A frozen view (a Raft snapshot's source) reads exactly the contents of the moment it was taken,
    /// whatever is written, deleted and rotated into new segments after it (and between its pages), and
    /// holds compaction off while it lives: a compaction would retire the segments it reads. Once it is
    /// dropped, compaction runs and the contents are the model's.
    #[test]
    fn a_frozen_view_reads_the_contents_of_its_moment_while_writes_go_on(
        before in prop::collection::vec((0u8..4, 0u8..30, 0u8..200), 1..80),
        after in prop::collection::vec((0u8..4, 0u8..30, 0u8..200), 1..80),
        page in 1usize..12,
        always in any::<bool>(),
    ) {
        let fs = SimFs::new();
        let durability = if always { Durability::Always } else { Durability::Never };
        let engine = open(&fs, "/f", durability);
        let model = MemoryEngine::new();
        write_both(&engine, &model, &before);
        let expected = contents(&model);
        let mut view = engine.freeze().unwrap().expect("no compaction runs, so a view is taken");
        let mut model_view = model.freeze().unwrap().unwrap();

        let mut got = Model::new();
        for e in view.next_page(page).unwrap() {
            got.insert(e.key.into_bytes(), e.value.into_bytes());
        }
        write_both(&engine, &model, &after);
        let refused = engine.compact();
        prop_assert!(matches!(refused, Err(EngineError::Busy(_))), "compaction while a view lives: {:?}", refused);
        // A refused manual compaction does not hold views off (the automatic compactor's does, until it
        // has run: `no_view_is_taken_while_a_compaction_runs_or_waits`).
        prop_assert!(engine.freeze().unwrap().is_some());
        read_frozen(&mut *view, page, &mut got);
        prop_assert_eq!(&got, &expected);
        let mut from_model = Model::new();
        read_frozen(&mut *model_view, page, &mut from_model);
        prop_assert_eq!(&from_model, &expected);

        drop(view);
        engine.compact().unwrap();
        prop_assert_eq!(contents(&engine), contents(&model));

    }
}
