//! Injected I/O failures (EIO on fsync, ENOSPC), fail-stop, the directory lock, group commit and the
//! durability modes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{contents, sim_options, Model};
use kv_domain::{Durability, Engine, EngineError, Write};
use kv_infra_fs::sim::{Faults, SimFs};
use kv_infra_fs::{FsEngine, Options};

const DIR: &str = "/data";

/// Opens what a power loss right now would leave of `fs`.
fn reopen_after_power_loss(fs: &SimFs) -> FsEngine {
    FsEngine::open(
        DIR,
        sim_options(
            &fs.crash_image().materialize(None),
            Durability::Never,
            1 << 20,
        ),
    )
    .unwrap()
}

fn open(fs: &SimFs, durability: Durability) -> FsEngine {
    FsEngine::open(DIR, sim_options(fs, durability, 300)).unwrap()
}

/// Writes until one fails; returns the model of acknowledged writes, the failed write, and its error.
fn write_until_failure(engine: &FsEngine) -> (Model, (Vec<u8>, Vec<u8>), EngineError) {
    let mut model = Model::new();
    for i in 0..1000u32 {
        let (k, v) = (
            format!("k{}", i % 13).into_bytes(),
            format!("v{i}").into_bytes(),
        );
        match engine.put(&k, &v) {
            Ok(_) => {
                model.insert(k, v);
            }
            Err(e) => return (model, (k, v), e),
        }
    }
    panic!("no failure injected");
}

/// Fail-stop, as the engine module doc states it: once a write-path I/O failure poisoned the engine,
/// every write and sync is refused, *without touching the disk* (nothing is retried, even now that the
/// file system would let it succeed), and reads show exactly the acknowledged writes.
fn assert_fail_stop(fs: &SimFs, engine: &FsEngine, model: &Model) {
    // Lift the fault: an engine that retried would now succeed, and change the files.
    fs.set_faults(Faults::default());
    let files = |fs: &SimFs| -> Vec<_> {
        let mut paths = fs.paths();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let bytes = fs.read_file(&p);
                (p, bytes)
            })
            .collect()
    };
    let (before, syncs) = (files(fs), fs.syncs());
    for _ in 0..5 {
        assert!(
            matches!(
                engine.put(b"later", b"x"),
                Err(EngineError::Poisoned { .. })
            ),
            "writes after a failure are refused"
        );
        assert!(matches!(
            engine.delete(b"k1"),
            Err(EngineError::Poisoned { .. })
        ));
    }
    assert!(matches!(engine.sync(), Err(EngineError::Poisoned { .. })));
    assert!(engine.status().poisoned.is_some());
    assert_eq!(fs.syncs(), syncs, "a poisoned engine never syncs again");
    assert!(
        files(fs) == before,
        "a poisoned engine writes nothing more to any file"
    );
    assert_eq!(
        &contents(engine),
        model,
        "reads keep working and show exactly the acknowledged writes"
    );
}

#[test]
fn a_failed_fsync_poisons_the_engine_even_if_later_fsyncs_would_succeed() {
    for fail_at in [4, 5, 9, 17, 30] {
        let fs = SimFs::new();
        let engine = open(&fs, Durability::Always);
        // Counted from the first sync after open (opening syncs the first segment and the manifest).
        fs.set_faults(Faults {
            fail_sync_number: Some(fs.syncs() + fail_at),
            ..Faults::default()
        });
        let (model, (failed_key, failed_value), err) = write_until_failure(&engine);
        assert!(
            matches!(err, EngineError::Io { .. }),
            "sync #{fail_at}: {err}"
        );
        assert!(
            err.to_string().contains("EIO"),
            "the cause is reported: {err}"
        );
        assert_fail_stop(&fs, &engine, &model);
        drop(engine);
        // Reopen from what a power loss would leave, and from the live files: both hold every acknowledged
        // write. The failed write's outcome is unknown (its bytes reached the file before the fsync
        // failed), so it may or may not be there, but nothing else may differ.
        let mut with_failed = model.clone();
        with_failed.insert(failed_key, failed_value);
        for reopened in [fs.crash_image().materialize(None), fs.deep_copy()] {
            let engine = open(&reopened, Durability::Always);
            let got = contents(&engine);
            assert!(
                got == model || got == with_failed,
                "sync #{fail_at}: reopened state differs from the acknowledged writes"
            );
            engine.put(b"after-reopen", b"ok").unwrap();
        }
    }
}

#[test]
fn disk_full_is_reported_and_poisons_until_reopen() {
    let fs = SimFs::new();
    let engine = open(&fs, Durability::Always);
    fs.set_faults(Faults {
        disk_bytes: Some(2_000),
        ..Faults::default()
    });
    let (model, _, err) = write_until_failure(&engine);
    assert!(matches!(err, EngineError::DiskFull { .. }), "{err}");
    assert_fail_stop(&fs, &engine, &model);
    drop(engine);
    fs.set_faults(Faults::default());
    let engine = open(&fs, Durability::Always);
    assert_eq!(contents(&engine), model);
    engine.put(b"space", b"freed").unwrap();
}

#[test]
fn a_failure_while_rotating_poisons_too() {
    let fs = SimFs::new();
    let engine = FsEngine::open(DIR, sim_options(&fs, Durability::Never, 100)).unwrap();
    engine.put(b"a", &[1; 50]).unwrap();
    fs.set_faults(Faults {
        dead_after_syncs: Some(fs.syncs()),
        ..Faults::default()
    });
    // The next put needs a new segment: syncing the old one fails.
    let err = engine.put(b"b", &[2; 50]).unwrap_err();
    assert!(matches!(err, EngineError::Io { .. }), "{err}");
    assert!(matches!(
        engine.put(b"c", b"3"),
        Err(EngineError::Poisoned { .. })
    ));
    assert_eq!(engine.get(b"a").unwrap().unwrap().as_bytes(), &[1; 50]);
}

#[test]
fn invalid_records_are_rejected_before_anything_is_written() {
    let fs = SimFs::new();
    let engine = open(&fs, Durability::Always);
    assert!(matches!(
        engine.put(b"", b"v"),
        Err(EngineError::InvalidInput(_))
    ));
    assert!(matches!(
        engine.put(&vec![b'k'; (1 << 20) + 1], b"v"),
        Err(EngineError::InvalidInput(_))
    ));
    // An empty batch would take an LSN for nothing (or share the previous write's).
    assert!(matches!(
        engine.write_batch(&kv_domain::WriteBatch::new()),
        Err(EngineError::InvalidInput(_))
    ));
    assert_eq!(engine.last_lsn().0, 0);
    assert!(engine.status().poisoned.is_none());
}

#[test]
fn a_second_open_of_a_locked_directory_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let first = FsEngine::open(dir.path(), Options::default()).unwrap();
    match FsEngine::open(dir.path(), Options::default()) {
        Err(e @ EngineError::Locked { .. }) => {
            assert!(e.to_string().contains("locked by another process"))
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    first.put(b"k", b"v").unwrap();
    first.close().unwrap();
    let again = FsEngine::open(dir.path(), Options::default()).unwrap();
    assert_eq!(again.get(b"k").unwrap().unwrap().as_bytes(), b"v");
}

#[test]
fn concurrent_writers_share_fsyncs_in_always_mode() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(FsEngine::open(dir.path(), Options::default()).unwrap());
    let threads: Vec<_> = (0..64)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    engine
                        .put(
                            format!("t{t}-{i}").as_bytes(),
                            format!("{t}:{i}").as_bytes(),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let status = engine.status();
    assert_eq!(status.writes, 64 * 20);
    assert!(
        status.fsyncs < status.writes,
        "group commit: {} fsyncs for {} writes",
        status.fsyncs,
        status.writes
    );
    assert_eq!(
        status.group_commits.writes, status.writes,
        "every write was made durable by exactly one group"
    );
    assert!(
        status.group_commits.counts.iter().skip(1).any(|&c| c > 0),
        "some group held more than one write: {:?}",
        status.group_commits
    );
    for t in 0..64 {
        for i in 0..20 {
            assert_eq!(
                engine
                    .get(format!("t{t}-{i}").as_bytes())
                    .unwrap()
                    .unwrap()
                    .as_bytes(),
                format!("{t}:{i}").as_bytes()
            );
        }
    }
}

#[test]
fn interval_mode_syncs_in_the_background_and_never_mode_on_request() {
    let fs = SimFs::new();
    let engine = FsEngine::open(
        DIR,
        sim_options(&fs, Durability::Interval { ms: 5 }, 1 << 20),
    )
    .unwrap();
    engine.put(b"k", b"v").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while contents(&reopen_after_power_loss(&fs)).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "interval syncer never made the write durable"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(engine);

    let fs = SimFs::new();
    let engine = FsEngine::open(DIR, sim_options(&fs, Durability::Never, 1 << 20)).unwrap();
    engine.put(b"k", b"v").unwrap();
    let before = reopen_after_power_loss(&fs);
    assert!(
        contents(&before).is_empty(),
        "never mode does not fsync on its own"
    );
    engine.sync().unwrap();
    let after = reopen_after_power_loss(&fs);
    assert_eq!(after.get(b"k").unwrap().unwrap().as_bytes(), b"v");
}

#[test]
fn a_restart_on_a_full_disk_opens_read_only_and_leaves_the_torn_tail_alone() {
    let fs = SimFs::new();
    let engine = open(&fs, Durability::Always);
    let mut model = Model::new();
    for i in 0..40u32 {
        let (k, v) = (format!("k{i}").into_bytes(), format!("v{i}").into_bytes());
        engine.put(&k, &v).unwrap();
        model.insert(k, v);
    }
    drop(engine);
    // A torn write at the end of the newest segment, as a crash mid-append leaves it.
    let mut newest = fs
        .paths()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".seg"))
        .collect::<Vec<_>>();
    newest.sort();
    let newest = newest.pop().unwrap();
    let mut bytes = fs.read_file(&newest).unwrap();
    let clean_len = bytes.len();
    bytes.extend_from_slice(&[0xAB; 37]);
    fs.set_file(&newest, bytes);

    // No space at all: the forensic copy of the tail cannot be written.
    fs.set_faults(Faults {
        disk_bytes: Some(0),
        ..Faults::default()
    });
    let engine = open(&fs, Durability::Always);
    let why = engine.status().read_only.expect("opened read-only");
    assert!(why.contains("disk is full"), "{why}");
    assert_eq!(contents(&engine), model, "reads are served");
    for _ in 0..3 {
        let err = engine.put(b"new", b"x").unwrap_err();
        assert!(matches!(err, EngineError::DiskFull { .. }), "{err}");
    }
    assert!(matches!(
        engine.compact(),
        Err(EngineError::DiskFull { .. })
    ));
    drop(engine);
    assert!(
        !fs.paths()
            .iter()
            .any(|p| p.to_string_lossy().contains(".torn")),
        "no partial copy is left behind"
    );
    assert_eq!(
        fs.read_file(&newest).unwrap().len(),
        clean_len + 37,
        "the tail is left alone"
    );

    // Space is back: the next open repairs the tail as usual and takes writes.
    fs.set_faults(Faults::default());
    let engine = open(&fs, Durability::Always);
    assert_eq!(engine.status().read_only, None);
    assert_eq!(engine.recovery_report().truncated_bytes, 37);
    assert_eq!(contents(&engine), model);
    engine.put(b"new", b"x").unwrap();
}

#[test]
fn a_clean_store_on_a_full_disk_opens_and_serves_reads() {
    let fs = SimFs::new();
    let engine = open(&fs, Durability::Always);
    let mut model = Model::new();
    for i in 0..20u32 {
        let (k, v) = (format!("k{i}").into_bytes(), format!("v{i}").into_bytes());
        engine.put(&k, &v).unwrap();
        model.insert(k, v);
    }
    drop(engine);
    fs.set_faults(Faults {
        disk_bytes: Some(0),
        ..Faults::default()
    });
    // Nothing to repair and the manifest is current: open writes nothing.
    let engine = open(&fs, Durability::Always);
    assert_eq!(contents(&engine), model);
    assert!(matches!(
        engine.put(b"x", b"y"),
        Err(EngineError::DiskFull { .. })
    ));
}

/// What `Engine::submit` callbacks reported: each write's key, value and outcome, in callback order.
type Outcomes = Arc<std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>, Result<u64, EngineError>)>>>;

/// Submits `key = value` and records its outcome in `outcomes` when the callback runs.
fn submit(engine: &FsEngine, outcomes: &Outcomes, key: Vec<u8>, value: Vec<u8>) {
    let record = Arc::clone(outcomes);
    let write = Write::Put {
        key: &key,
        value: &value,
    };
    let (k, v) = (key.clone(), value.clone());
    engine.submit(
        write,
        Box::new(move |result| {
            record.lock().unwrap().push((k, v, result.map(|lsn| lsn.0)));
        }),
    );
}

#[test]
fn a_submitted_write_is_acknowledged_only_once_durable_and_visible() {
    let fs = SimFs::new();
    let engine = Arc::new(open(&fs, Durability::Always));
    let checked = Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..40u32 {
        let (key, value) = (format!("k{i}").into_bytes(), format!("v{i}").into_bytes());
        let (engine2, fs2, checked2) = (Arc::clone(&engine), fs.clone(), Arc::clone(&checked));
        let (k, v) = (key.clone(), value.clone());
        // The check runs inside the callback, at the moment of acknowledgement: a power loss then keeps
        // the write, and readers already see it.
        engine.submit(
            Write::Put {
                key: &key,
                value: &value,
            },
            Box::new(move |result| {
                let lsn = result.unwrap();
                let visible = engine2.get(&k).unwrap().map(|got| got.as_bytes() == v);
                let survivor = reopen_after_power_loss(&fs2);
                let durable = survivor.get(&k).unwrap().map(|got| got.as_bytes() == v);
                checked2.lock().unwrap().push((lsn.0, visible, durable));
            }),
        );
    }
    engine.sync().unwrap();
    let checked = checked.lock().unwrap().clone();
    assert_eq!(checked.len(), 40, "every callback ran exactly once");
    let mut lsns: Vec<u64> = checked.iter().map(|c| c.0).collect();
    lsns.sort_unstable();
    assert_eq!(lsns, (1..=40).collect::<Vec<_>>(), "one LSN per write");
    for (lsn, visible, durable) in checked {
        assert_eq!(visible, Some(true), "LSN {lsn} visible when acknowledged");
        assert_eq!(durable, Some(true), "LSN {lsn} durable when acknowledged");
    }
}

#[test]
fn a_failed_group_fails_its_submitted_writes_and_poisons() {
    for fail_at in [1, 2, 5] {
        let fs = SimFs::new();
        let engine = open(&fs, Durability::Always);
        fs.set_faults(Faults {
            fail_sync_number: Some(fs.syncs() + fail_at),
            ..Faults::default()
        });
        let outcomes: Outcomes = Arc::default();
        for i in 0..200u32 {
            let (k, v) = (
                format!("k{}", i % 13).into_bytes(),
                format!("v{i}").into_bytes(),
            );
            submit(&engine, &outcomes, k, v);
            // Waiting for each write keeps the groups small, so the failing sync is reached.
            let _ = engine.sync();
        }
        let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
        assert_eq!(outcomes.len(), 200, "sync #{fail_at}: every callback ran");
        let first_err = outcomes
            .iter()
            .position(|o| o.2.is_err())
            .expect("the injected failure fails a write");
        let failed = &outcomes[first_err].2;
        assert!(
            matches!(failed, Err(EngineError::Io { .. })) && format!("{failed:?}").contains("EIO"),
            "sync #{fail_at}: the failed group reports the I/O error: {failed:?}"
        );
        assert!(
            outcomes[first_err + 1..]
                .iter()
                .all(|o| matches!(o.2, Err(EngineError::Poisoned { .. }))),
            "sync #{fail_at}: every later write is refused as poisoned"
        );
        let mut model = Model::new();
        for (k, v, _) in &outcomes[..first_err] {
            model.insert(k.clone(), v.clone());
        }
        assert_fail_stop(&fs, &engine, &model);
    }
}

#[test]
fn dropping_the_engine_completes_the_writes_still_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let outcomes: Outcomes = Arc::default();
    {
        let engine = FsEngine::open(dir.path(), Options::default()).unwrap();
        for i in 0..100u32 {
            submit(
                &engine,
                &outcomes,
                format!("k{i}").into_bytes(),
                b"v".to_vec(),
            );
        }
    }
    let outcomes = outcomes.lock().unwrap();
    assert_eq!(outcomes.len(), 100, "no callback is lost on drop");
    assert!(
        outcomes.iter().all(|o| o.2.is_ok()),
        "the final sync made them durable"
    );
    let engine = FsEngine::open(dir.path(), Options::default()).unwrap();
    for (k, _, _) in outcomes.iter() {
        assert!(engine.get(k).unwrap().is_some());
    }
}

/// The last handle to the engine can be dropped by a write's callback, which runs on the commit thread:
/// closing must then neither wait for that thread (itself) nor lose the writes.
#[test]
fn a_callback_may_drop_the_last_handle_to_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let engine = Arc::new(FsEngine::open(dir.path(), Options::default()).unwrap());
        for i in 0..50u32 {
            let (held, tx) = (Arc::clone(&engine), tx.clone());
            let key = format!("k{i}");
            engine.submit(
                Write::Put {
                    key: key.as_bytes(),
                    value: b"v",
                },
                Box::new(move |result| {
                    // Dropped first: a close that waited for this thread, or joined it, would keep the
                    // answer from being sent.
                    drop(held);
                    let _ = tx.send(result.map(|lsn| lsn.0));
                }),
            );
        }
        // Dropped here, while callbacks still hold clones: one of them drops the last.
    }
    drop(tx);
    let answered: Vec<_> =
        std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(10)).ok()).collect();
    assert_eq!(answered.len(), 50, "every callback ran to its end");
    assert!(answered.iter().all(Result::is_ok));
    // The commit thread releases the directory once its callbacks are done.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let engine = loop {
        match FsEngine::open(dir.path(), Options::default()) {
            Ok(engine) => break engine,
            Err(EngineError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    for i in 0..50u32 {
        assert!(engine.get(format!("k{i}").as_bytes()).unwrap().is_some());
    }
}

/// `never` mode syncs the active segment in the background once per MiB written (so a rotation's fsync
/// under the writer lock has little left to flush): a power loss after 3 MiB of writes and no explicit
/// sync keeps at least the first 2 MiB, and the writes never waited for it.
#[test]
fn never_mode_syncs_in_the_background_every_mib_written() {
    let fs = SimFs::new();
    let engine = FsEngine::open(DIR, sim_options(&fs, Durability::Never, 64 << 20)).unwrap();
    let value = vec![b'v'; 1000];
    for i in 0..3000u32 {
        engine.put(format!("k{i:05}").as_bytes(), &value).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let kept = contents(&reopen_after_power_loss(&fs)).len();
        if kept >= 2000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {kept} of 3000 writes survive a power loss: no background sync"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(engine);
}
