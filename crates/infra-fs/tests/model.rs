//! The engine against a `BTreeMap` model: random put / delete / batch / get / range / reopen sequences, with
//! tiny segments so that rotation happens constantly. The engine must agree after every step and after
//! every reopen.
#![allow(clippy::unwrap_used)]

mod common;

use std::ops::Bound;

use common::{apply_batch, contents, open_real, sim_options, Model};
use kv_domain::{Durability, Engine, Key, KeyRange, Lsn, WriteBatch};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::{FsEngine, IndexKind, Options};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Batch(Vec<(u8, Option<Vec<u8>>)>),
    Get(u8),
    Range(u8, u8, bool, usize),
    Reopen,
    Compact,
}

fn key(k: u8) -> Vec<u8> {
    // Multi-byte keys that share prefixes, so byte order (not length) decides.
    format!("k{:02}", k % 40).into_bytes()[..if k.is_multiple_of(3) { 2 } else { 3 }].to_vec()
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 100..300)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => any::<u8>().prop_map(Op::Delete),
        2 => proptest::collection::vec((any::<u8>(), proptest::option::of(value())), 1..6).prop_map(Op::Batch),
        2 => any::<u8>().prop_map(Op::Get),
        2 => (any::<u8>(), any::<u8>(), any::<bool>(), 0usize..12).prop_map(|(a, b, x, l)| Op::Range(a, b, x, l)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

fn run(ops: &[Op], mut open: impl FnMut() -> FsEngine) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    let mut engine = open();
    let mut last = Lsn::ZERO;
    for op in ops {
        match op {
            Op::Put(k, v) => {
                let lsn = engine.put(&key(*k), v).unwrap();
                prop_assert!(lsn > last, "LSNs strictly increase");
                last = lsn;
                model.insert(key(*k), v.clone());
            }
            Op::Delete(k) => {
                last = engine.delete(&key(*k)).unwrap();
                model.remove(&key(*k));
            }
            Op::Batch(items) => {
                let mut b = WriteBatch::new();
                for (k, v) in items {
                    match v {
                        Some(v) => b.put(key(*k), v.clone()),
                        None => b.delete(key(*k)),
                    };
                }
                last = engine.write_batch(&b).unwrap();
                apply_batch(&mut model, &b);
            }
            Op::Get(k) => {
                let got = engine.get(&key(*k)).unwrap().map(|v| v.into_bytes());
                prop_assert_eq!(got, model.get(&key(*k)).cloned());
            }
            Op::Range(a, b, exclusive_end, limit) => {
                let (a, b) = (key(*a), key(*b));
                let end = if *exclusive_end {
                    Bound::Excluded(Key::from(b.clone()))
                } else {
                    Bound::Included(Key::from(b.clone()))
                };
                let range = KeyRange {
                    start: Bound::Included(Key::from(a.clone())),
                    end,
                };
                let got: Vec<_> = engine
                    .scan(&range, *limit)
                    .unwrap()
                    .into_iter()
                    .map(|e| (e.key.into_bytes(), e.value.into_bytes()))
                    .collect();
                let want: Vec<_> = model
                    .iter()
                    .filter(|(k, _)| range.contains(k))
                    .take(*limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(got, want);
            }
            Op::Compact => {
                engine.compact().unwrap();
                prop_assert_eq!(
                    contents(&engine),
                    model.clone(),
                    "compaction changes no contents"
                );
            }
            Op::Reopen => {
                drop(engine);
                engine = open();
                prop_assert_eq!(engine.last_lsn(), last, "last LSN survives reopen");
                prop_assert_eq!(
                    engine.status().recovery.truncated_bytes,
                    0,
                    "a clean close leaves no torn tail"
                );
                prop_assert!(
                    engine.status().recovery.notes.is_empty(),
                    "{:?}",
                    engine.status().recovery.notes
                );
            }
        }
        prop_assert_eq!(engine.status().keys, model.len() as u64);
    }
    prop_assert_eq!(contents(&engine), model.clone());
    drop(engine);
    let engine = open();
    prop_assert_eq!(contents(&engine), model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model_on_disk(ops in proptest::collection::vec(op(), 1..120), never in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let durability = if never { Durability::Never } else { Durability::Always };
        run(&ops, || open_real(dir.path(), durability, 512))?;
    }

    #[test]
    fn engine_matches_model_on_simulated_fs_with_every_index(ops in proptest::collection::vec(op(), 1..120), which in 0..3usize) {
        let fs = SimFs::new();
        let index = [IndexKind::ConcurrentSkipList, IndexKind::LockedSkipList, IndexKind::BTree][which];
        run(&ops, || FsEngine::open("/data", Options { index, ..sim_options(&fs, Durability::Always, 300) }).unwrap())?;
    }
}
