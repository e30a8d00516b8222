//! The manifest: a store knows which segment files it consists of and refuses to open when one is missing
//! (a deleted middle, newest or compacted segment) instead of serving a silently different store.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{contents, segment_ids, sim_options, Model};
use kv_domain::{Durability, Engine, EngineError};
use kv_infra_fs::manifest::MANIFEST;
use kv_infra_fs::segment::{segment_name, FIRST_SEGMENT_ID};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::vfs::FileSystem;
use kv_infra_fs::FsEngine;

const DIR: &str = "/data";

fn open(fs: &SimFs) -> Result<FsEngine, EngineError> {
    FsEngine::open(DIR, sim_options(fs, Durability::Always, 300))
}

fn path(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

/// A store over several segments with overwrites and deletes (so a lost segment would change what reads
/// return, not only lose keys).
fn populated() -> (SimFs, Model) {
    let fs = SimFs::new();
    let engine = open(&fs).unwrap();
    let mut model = Model::new();
    for i in 0..60u32 {
        let key = format!("k{:02}", i % 15).into_bytes();
        if i % 7 == 3 {
            engine.delete(&key).unwrap();
            model.remove(&key);
        } else {
            let value = format!("v{i}").into_bytes();
            engine.put(&key, &value).unwrap();
            model.insert(key, value);
        }
    }
    assert!(segment_ids(&fs).len() >= 5);
    (fs, model)
}

fn refusal(fs: &SimFs) -> String {
    match open(fs) {
        Ok(_) => panic!("the store opened although a segment file is missing"),
        Err(e) => {
            assert!(matches!(e, EngineError::Corrupted { .. }), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn a_deleted_middle_segment_is_named_and_the_store_refuses_to_open() {
    let (fs, _) = populated();
    let ids = segment_ids(&fs);
    let victim = segment_name(ids[ids.len() / 2]);
    fs.remove(&path(&victim)).unwrap();
    let msg = refusal(&fs);
    assert!(msg.contains(&victim), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn a_deleted_newest_segment_is_noticed() {
    let (fs, _) = populated();
    let victim = segment_name(*segment_ids(&fs).last().unwrap());
    fs.remove(&path(&victim)).unwrap();
    let msg = refusal(&fs);
    assert!(msg.contains(&victim), "{msg}");
}

#[test]
fn a_deleted_compaction_output_is_noticed() {
    let (fs, model) = populated();
    let engine = open(&fs).unwrap();
    let stats = engine.compact().unwrap();
    assert!(stats.output_segments > 0);
    assert_eq!(contents(&engine), model);
    drop(engine);
    let output = *segment_ids(&fs).first().unwrap();
    assert!(
        output < FIRST_SEGMENT_ID,
        "outputs take ids below the normal ones"
    );
    fs.remove(&path(&segment_name(output))).unwrap();
    let msg = refusal(&fs);
    assert!(msg.contains(&segment_name(output)), "{msg}");
}

#[test]
fn a_store_without_a_manifest_is_checked_for_gaps_and_gets_one() {
    let (fs, model) = populated();
    // As written by a version before the manifest.
    fs.remove(&path(MANIFEST)).unwrap();
    let engine = open(&fs).unwrap();
    assert_eq!(contents(&engine), model);
    assert!(engine
        .recovery_report()
        .notes
        .iter()
        .any(|n| n.contains(MANIFEST)));
    drop(engine);
    assert!(
        fs.read_file(&path(MANIFEST)).is_some(),
        "a manifest was written"
    );

    // Without a manifest, a gap in the normal ids is a missing file too.
    fs.remove(&path(MANIFEST)).unwrap();
    let ids = segment_ids(&fs);
    let victim = segment_name(ids[1]);
    fs.remove(&path(&victim)).unwrap();
    let msg = refusal(&fs);
    assert!(msg.contains(&victim), "{msg}");
}

#[test]
fn unlisted_files_are_adopted_removed_or_refused_by_what_explains_them() {
    let (fs, model) = populated();
    let ids = segment_ids(&fs);
    let newest = *ids.last().unwrap();
    let newest_bytes = fs.read_file(&path(&segment_name(newest))).unwrap();

    // Below the newest listed id: a leftover of an interrupted compaction, removed.
    let leftover = ids[0] - 5;
    fs.set_file(&path(&segment_name(leftover)), b"leftover".to_vec());
    let engine = open(&fs).unwrap();
    assert_eq!(contents(&engine), model);
    drop(engine);
    assert!(fs.read_file(&path(&segment_name(leftover))).is_none());

    // Far above the newest: nothing explains it, so the store refuses and names it.
    let newest = *segment_ids(&fs).last().unwrap();
    let stranger = segment_name(newest + 7);
    fs.set_file(&path(&stranger), newest_bytes);
    let msg = refusal(&fs);
    assert!(msg.contains(&stranger), "{msg}");
    assert!(msg.contains("not in the MANIFEST"), "{msg}");
}

#[test]
fn a_damaged_manifest_is_corruption() {
    let (fs, _) = populated();
    let mut bytes = fs.read_file(&path(MANIFEST)).unwrap();
    bytes[20] ^= 1;
    fs.set_file(&path(MANIFEST), bytes);
    let msg = refusal(&fs);
    assert!(msg.contains(MANIFEST), "{msg}");
}

#[test]
fn an_unfinished_rotation_leaves_the_ids_consecutive() {
    let (fs, model) = populated();
    let newest = *segment_ids(&fs).last().unwrap();
    // A rotation that created the next segment but never finished its header (nor listed it).
    fs.set_file(&path(&segment_name(newest + 1)), b"MPKV".to_vec());
    let engine = open(&fs).unwrap();
    assert_eq!(contents(&engine), model);
    for i in 0..30u32 {
        engine.put(format!("n{i}").as_bytes(), b"after").unwrap();
    }
    drop(engine);
    let ids = segment_ids(&fs);
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap in the segment ids: {ids:?}"
    );
    open(&fs).unwrap();
}
