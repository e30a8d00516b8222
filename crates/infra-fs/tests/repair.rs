//! Salvage (`repair`): a store that refuses to open because of a damaged sealed segment, a damaged
//! compaction output, a damaged hint or a missing segment file is brought back with every record that still
//! checks, and the report names exactly the LSNs (or keys) lost.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{contents, segment_ids, sim_options, Model};
use kv_domain::{Durability, Engine, EngineError, LogShipping, WriteBatch};
use kv_infra_fs::codec::{decode_record, RecordKind, SEGMENT_HEADER_LEN};
use kv_infra_fs::hint::hint_name;
use kv_infra_fs::repair::{repair, Lost};
use kv_infra_fs::segment::{segment_name, FIRST_SEGMENT_ID};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::vfs::FileSystem;
use kv_infra_fs::FsEngine;

const DIR: &str = "/data";
const SEGMENT: u64 = 400;

fn open(fs: &SimFs) -> Result<FsEngine, EngineError> {
    FsEngine::open(DIR, sim_options(fs, Durability::Always, SEGMENT))
}

fn path(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

/// One acknowledged write: its LSN and its operations (key, value or None for a delete).
type Write = (u64, Vec<(String, Option<String>)>);

/// The store's contents after `history` without the writes whose LSN `lost` says.
fn replay(history: &[Write], lost: impl Fn(u64) -> bool) -> Model {
    let mut m = Model::new();
    for (lsn, ops) in history.iter().filter(|(l, _)| !lost(*l)) {
        let _ = lsn;
        for (k, v) in ops {
            match v {
                Some(v) => m.insert(k.clone().into_bytes(), v.clone().into_bytes()),
                None => m.remove(k.as_bytes()),
            };
        }
    }
    m
}

/// Puts, deletes and batches over a few keys across many small segments.
fn populated() -> (SimFs, Vec<Write>) {
    let fs = SimFs::new();
    let engine = open(&fs).unwrap();
    let mut history = Vec::new();
    for i in 0..60u32 {
        let key = format!("k{}", i % 9);
        let ops = if i % 10 == 7 {
            let mut b = WriteBatch::new();
            b.put(format!("b{i}"), "batch")
                .put(key.clone(), format!("vb{i}"));
            let lsn = engine.write_batch(&b).unwrap().0;
            (
                lsn,
                vec![
                    (format!("b{i}"), Some("batch".to_string())),
                    (key, Some(format!("vb{i}"))),
                ],
            )
        } else if i % 6 == 5 {
            (engine.delete(key.as_bytes()).unwrap().0, vec![(key, None)])
        } else {
            let v = format!("v{i}");
            (
                engine.put(key.as_bytes(), v.as_bytes()).unwrap().0,
                vec![(key, Some(v))],
            )
        };
        history.push(ops);
    }
    assert_eq!(contents(&engine), replay(&history, |_| false));
    (fs, history)
}

/// The records of a segment file: (offset, LSN, kind).
fn records(bytes: &[u8]) -> Vec<(usize, u64, RecordKind)> {
    let mut out = Vec::new();
    let mut at = SEGMENT_HEADER_LEN;
    while let Ok(r) = decode_record(&bytes[at..]) {
        out.push((at, r.header.lsn, r.header.kind));
        at += r.header.record_len();
    }
    out
}

fn flip(fs: &SimFs, name: &str, offset: usize) {
    let mut bytes = fs.read_file(&path(name)).unwrap();
    bytes[offset] ^= 0x40;
    fs.set_file(&path(name), bytes);
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_loses_exactly_its_write() {
    let (fs, history) = populated();
    let ids = segment_ids(&fs);
    // A sealed segment holding a single (non-batch) record in its middle.
    let (name, (offset, lsn, _)) = ids[..ids.len() - 1]
        .iter()
        .find_map(|&id| {
            let name = segment_name(id);
            let recs = records(&fs.read_file(&path(&name)).unwrap());
            let mid = recs
                .get(1..recs.len().saturating_sub(1))?
                .iter()
                .find(|r| {
                    r.2 == RecordKind::Put && recs.iter().filter(|o| o.1 == r.1).count() == 1
                })?;
            Some((name, *mid))
        })
        .unwrap();
    flip(&fs, &name, offset + 30);
    let err = open(&fs).unwrap_err();
    assert!(matches!(err, EngineError::Corrupted { .. }), "{err}");

    let report = repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
    assert_eq!(report.salvaged.len(), 1, "{report}");
    let s = &report.salvaged[0];
    assert_eq!(s.file, name);
    assert_eq!(s.damage.len(), 1, "{report}");
    assert_eq!(
        s.damage[0].lost,
        Lost::Lsns {
            first: lsn,
            last: Some(lsn)
        },
        "{report}"
    );
    assert_eq!(s.damage[0].offset, offset as u64);
    assert!(
        report.to_string().contains(&format!("LSNs {lsn}..={lsn}")),
        "{report}"
    );
    assert!(
        fs.read_file(&path(&s.original_saved_to)).is_some(),
        "the original is kept aside"
    );

    let engine = open(&fs).unwrap();
    assert_eq!(contents(&engine), replay(&history, |l| l == lsn));
    let last = history.last().unwrap().0;
    assert_eq!(engine.last_lsn().0, last, "LSNs do not go back");
    engine.put(b"after", b"repair").unwrap();
    drop(engine);
    let again = repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
    assert!(again.is_clean(), "{again}");
}

#[test]
fn damage_inside_a_batch_drops_the_whole_batch() {
    let (fs, history) = populated();
    let ids = segment_ids(&fs);
    let (name, member, lsn) = ids[..ids.len() - 1]
        .iter()
        .find_map(|&id| {
            let name = segment_name(id);
            let recs = records(&fs.read_file(&path(&name)).unwrap());
            let h = recs.iter().position(|r| r.2 == RecordKind::BatchHeader)?;
            let member = recs.get(h + 1)?;
            Some((name, member.0, member.1))
        })
        .unwrap();
    flip(&fs, &name, member + 35);
    assert!(open(&fs).is_err());
    let report = repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
    let d = &report.salvaged[0].damage[0];
    assert_eq!(
        d.lost,
        Lost::Lsns {
            first: lsn,
            last: Some(lsn)
        },
        "{report}"
    );
    assert!(
        d.records_dropped >= 1,
        "the batch header is dropped with its member: {report}"
    );
    let engine = open(&fs).unwrap();
    assert_eq!(contents(&engine), replay(&history, |l| l == lsn));
}

#[test]
fn a_damaged_compaction_output_is_salvaged_and_its_hint_rebuilt() {
    let (fs, history) = populated();
    let engine = open(&fs).unwrap();
    engine.compact().unwrap();
    drop(engine);
    let output = segment_ids(&fs)[0];
    assert!(output < FIRST_SEGMENT_ID);
    let name = segment_name(output);
    let recs = records(&fs.read_file(&path(&name)).unwrap());
    assert!(recs.len() >= 3);
    let (offset, _, _) = recs[1];
    // The key of the damaged record: it is lost (an output holds the only copy of a live key).
    let bytes = fs.read_file(&path(&name)).unwrap();
    let lost_key = decode_record(&bytes[offset..]).unwrap().key.to_vec();
    let before = decode_record(&bytes[recs[0].0..]).unwrap().key.to_vec();
    let after = decode_record(&bytes[recs[2].0..]).unwrap().key.to_vec();
    flip(&fs, &name, offset + 30);
    // Reads of a hinted output verify on read; the scan at repair finds the damage regardless.
    fs.remove(&path(&hint_name(output))).unwrap();
    assert!(open(&fs).is_err());
    let report = repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
    assert_eq!(
        report.salvaged[0].damage[0].lost,
        Lost::Keys {
            after: Some(before.into()),
            before: Some(after.into())
        },
        "{report}"
    );
    assert!(
        report.hints_rebuilt.contains(&hint_name(output)),
        "{report}"
    );
    let engine = open(&fs).unwrap();
    assert!(
        engine.recovery_report().hinted_segments >= 1,
        "the rebuilt hint is used"
    );
    let mut expected = replay(&history, |_| false);
    expected.remove(&lost_key);
    assert_eq!(contents(&engine), expected);
}

#[test]
fn a_damaged_hint_is_rebuilt() {
    let (fs, _) = populated();
    let engine = open(&fs).unwrap();
    engine.compact().unwrap();
    drop(engine);
    let output = segment_ids(&fs)[0];
    let mut hint = fs.read_file(&path(&hint_name(output))).unwrap();
    hint[30] ^= 1;
    fs.set_file(&path(&hint_name(output)), hint);
    let report = repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
    assert_eq!(report.hints_rebuilt, vec![hint_name(output)], "{report}");
    assert!(report.is_clean());
    let engine = open(&fs).unwrap();
    assert!(
        engine.recovery_report().notes.is_empty(),
        "{:?}",
        engine.recovery_report()
    );
    assert!(engine.recovery_report().hinted_segments >= 1);
}

#[test]
fn a_missing_segment_is_dropped_and_its_lsns_reported() {
    let (fs, history) = populated();
    let ids = segment_ids(&fs);
    let victim = segment_name(ids[2]);
    let held: Vec<u64> = records(&fs.read_file(&path(&victim)).unwrap())
        .iter()
        .map(|r| r.1)
        .collect();
    fs.remove(&path(&victim)).unwrap();
    assert!(open(&fs).is_err());
    let report = repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
    assert_eq!(report.missing.len(), 1, "{report}");
    assert_eq!(report.missing[0].file, victim);
    let (first, last) = (*held.first().unwrap(), *held.last().unwrap());
    assert_eq!(
        report.missing[0].lost,
        Lost::Lsns {
            first,
            last: Some(last)
        },
        "{report}"
    );
    let engine = open(&fs).unwrap();
    assert_eq!(
        contents(&engine),
        replay(&history, |l| (first..=last).contains(&l))
    );
}

#[test]
fn repair_refuses_a_directory_in_use() {
    let (fs, _) = populated();
    let _engine = open(&fs).unwrap();
    assert!(matches!(
        repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)),
        Err(EngineError::Locked { .. })
    ));
}

/// Random byte flips anywhere in a random sealed normal segment: every one is detected at open, and after
/// repair the store holds exactly the history minus the LSNs the report names (batches whole or absent).
/// `REPAIR_CASES` sets the count (`make soak` runs more).
#[test]
fn after_any_byte_flip_repair_loses_exactly_the_reported_lsns() {
    use rand::{Rng, SeedableRng};
    let cases: u64 = std::env::var("REPAIR_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let (pristine, history) = populated();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let (mut detected, mut lsns_lost) = (0u64, 0u64);
    for case in 0..cases {
        let fs = pristine.deep_copy();
        let ids = segment_ids(&fs);
        let id = ids[rng.gen_range(0..ids.len() - 1)];
        let name = segment_name(id);
        let len = fs.read_file(&path(&name)).unwrap().len();
        let offset = rng.gen_range(0..len);
        flip(&fs, &name, offset);
        assert!(
            open(&fs).is_err(),
            "case {case}: flip at {name}:{offset} not detected"
        );
        detected += 1;
        let report = repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
        let lost: Vec<(u64, u64)> = report
            .salvaged
            .iter()
            .flat_map(|s| &s.damage)
            .filter_map(|d| match d.lost {
                Lost::Lsns {
                    first,
                    last: Some(last),
                } => Some((first, last)),
                Lost::Nothing => None,
                ref other => panic!("case {case}: unexpected loss {other:?}"),
            })
            .collect();
        lsns_lost += lost
            .iter()
            .map(|(f, l)| (l + 1).saturating_sub(*f))
            .sum::<u64>();
        let engine = open(&fs).unwrap_or_else(|e| panic!("case {case}: {e}\n{report}"));
        assert_eq!(
            contents(&engine),
            replay(&history, |l| lost
                .iter()
                .any(|(f, z)| (*f..=*z).contains(&l))),
            "case {case}: flip at {name}:{offset}\n{report}"
        );
    }
    println!("repair: {detected}/{cases} flips detected at open, {lsns_lost} LSNs reported lost in all, contents exact after every repair");
}

#[test]
fn an_unfinished_rotation_is_left_to_recovery_not_salvaged_with_a_wrong_base() {
    let (fs, history) = populated();
    let newest = *segment_ids(&fs).last().unwrap();
    fs.set_file(&path(&segment_name(newest + 1)), b"MPKV".to_vec());
    let report = repair(DIR, &sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
    assert!(report.is_clean(), "{report}");
    let engine = open(&fs).unwrap();
    assert_eq!(contents(&engine), replay(&history, |_| false));
    // Replication reads the whole history back in order (a base LSN of 0 would make it skip).
    match engine
        .read_log(&kv_domain::LogCursor::after(kv_domain::Lsn(0)), usize::MAX)
        .unwrap()
    {
        kv_domain::LogRead::Entries { entries, .. } => {
            assert_eq!(entries.len(), history.len());
        }
        other => panic!("{other:?}"),
    }
}
