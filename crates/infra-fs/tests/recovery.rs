//! Recovery: torn tails cut at every byte offset, bit flips in sealed segments, torn segment headers, and
//! corruption found on the read path.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{apply_batch, contents, sim_options, Model};
use kv_domain::{Durability, Engine, EngineError, WriteBatch};
use kv_infra_fs::segment::{parse_segment_name, segment_name, FIRST_SEGMENT_ID};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::FsEngine;
use rand::{Rng, SeedableRng};

const DIR: &str = "/data";

fn open(fs: &SimFs, segment_bytes: u64) -> Result<FsEngine, EngineError> {
    FsEngine::open(DIR, sim_options(fs, Durability::Always, segment_bytes))
}

fn segments(fs: &SimFs) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs
        .paths()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(parse_segment_name)
                .is_some()
        })
        .collect();
    v.sort();
    v
}

/// One write of the history: a put, a delete or a batch.
enum W {
    Put(&'static str, String),
    Del(&'static str),
    Batch(WriteBatch),
}

fn apply(engine: &FsEngine, model: &mut Model, w: &W) {
    match w {
        W::Put(k, v) => {
            engine.put(k.as_bytes(), v.as_bytes()).unwrap();
            model.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        W::Del(k) => {
            engine.delete(k.as_bytes()).unwrap();
            model.remove(k.as_bytes());
        }
        W::Batch(b) => {
            engine.write_batch(b).unwrap();
            apply_batch(model, b);
        }
    }
}

/// Writes `history`, returning the model after each prefix and the newest segment's length after each write.
fn write_history(fs: &SimFs, history: &[W]) -> (Vec<Model>, Vec<u64>, PathBuf) {
    let engine = open(fs, 1 << 20).unwrap();
    let mut model = Model::new();
    let mut states = vec![model.clone()];
    let mut ends = Vec::new();
    for w in history {
        apply(&engine, &mut model, w);
        states.push(model.clone());
        let newest = segments(fs).pop().unwrap();
        ends.push(fs.read_file(&newest).unwrap().len() as u64);
    }
    drop(engine);
    (states, ends, segments(fs).pop().unwrap())
}

#[test]
fn truncation_at_every_byte_of_the_last_two_writes_recovers_exactly_a_prefix() {
    let mut batch = WriteBatch::new();
    batch
        .put("b1", "batch-one")
        .delete("a")
        .put("b2", "batch-two-value");
    let history = vec![
        W::Put("a", "first".into()),
        W::Put("z", "x".repeat(50)),
        W::Del("z"),
        W::Batch(batch),
        W::Put("a", "last-value".into()),
    ];
    let fs = SimFs::new();
    let (states, ends, newest) = write_history(&fs, &history);
    let full = fs.read_file(&newest).unwrap();
    let n = history.len();
    let from = ends[n - 3]; // end of the third-to-last write = start of the last two
    assert_eq!(full.len() as u64, ends[n - 1]);
    let mut checked = 0;
    for cut in from..=full.len() as u64 {
        let copy = fs.deep_copy();
        copy.set_file(&newest, full[..cut as usize].to_vec());
        let engine = open(&copy, 1 << 20).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        // Writes wholly before the cut survive; nothing else does.
        let survivors = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(contents(&engine), states[survivors], "cut at {cut}");
        let report = engine.recovery_report().clone();
        let expect_cut = cut - ends[survivors - 1];
        assert_eq!(
            report.truncated_bytes, expect_cut,
            "cut at {cut}: reported bytes"
        );
        if expect_cut > 0 {
            let saved = report.truncated_copy.clone().unwrap();
            let saved_bytes = copy.read_file(&Path::new(DIR).join(&saved)).unwrap();
            assert_eq!(
                saved_bytes,
                full[ends[survivors - 1] as usize..cut as usize],
                "forensic copy holds the cut bytes"
            );
        }
        // The repaired store takes writes and reopens cleanly.
        engine.put(b"after", b"repair").unwrap();
        drop(engine);
        let engine = open(&copy, 1 << 20).unwrap();
        assert_eq!(engine.recovery_report().truncated_bytes, 0);
        assert_eq!(engine.get(b"after").unwrap().unwrap().as_bytes(), b"repair");
        checked += 1;
    }
    assert!(checked > 100, "checked {checked} offsets");
}

#[test]
fn bit_flips_in_sealed_segments_are_always_detected() {
    let fs = SimFs::new();
    {
        let engine = open(&fs, 400).unwrap();
        for i in 0..60 {
            engine
                .put(
                    format!("key{i:03}").as_bytes(),
                    format!("value-{i}").repeat(3).as_bytes(),
                )
                .unwrap();
            if i % 7 == 0 {
                let mut b = WriteBatch::new();
                b.put(format!("b{i}"), "v")
                    .delete(format!("key{:03}", i / 2));
                engine.write_batch(&b).unwrap();
            }
        }
    }
    let segs = segments(&fs);
    assert!(
        segs.len() >= 4,
        "need several sealed segments, got {}",
        segs.len()
    );
    let sealed = &segs[..segs.len() - 1];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for trial in 0..300 {
        let victim = &sealed[rng.gen_range(0..sealed.len())];
        let mut bytes = fs.read_file(victim).unwrap();
        let pos = rng.gen_range(0..bytes.len());
        bytes[pos] ^= 1 << rng.gen_range(0..8);
        let copy = fs.deep_copy();
        copy.set_file(victim, bytes);
        match open(&copy, 400) {
            Err(EngineError::Corrupted { file, offset, .. }) => {
                assert_eq!(
                    Path::new(DIR).join(&file),
                    *victim,
                    "trial {trial}: names the damaged segment"
                );
                assert!(
                    offset <= pos as u64,
                    "trial {trial}: reported offset {offset} is at or before the flip at {pos}"
                );
            }
            Err(e) => panic!("trial {trial}: wrong error {e}"),
            Ok(_) => panic!(
                "trial {trial}: flip at {pos} of {} went undetected",
                victim.display()
            ),
        }
    }
}

#[test]
fn damage_found_on_the_read_path_is_an_error_never_wrong_bytes() {
    let fs = SimFs::new();
    let engine = open(&fs, 1 << 20).unwrap();
    engine.put(b"k", b"the right value").unwrap();
    let seg = segments(&fs).pop().unwrap();
    let mut bytes = fs.read_file(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20; // a flip inside the value, behind the running engine's back
    fs.set_file(&seg, bytes);
    match engine.get(b"k") {
        Err(EngineError::Corrupted { file, .. }) => {
            assert_eq!(file, segment_name(FIRST_SEGMENT_ID))
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

/// A scan reads runs of neighbouring records with one `pread` (`engine/read.rs`): a flipped byte in any
/// record of such a run is still an error naming that record, never a wrong value or a skipped key.
#[test]
fn damage_inside_a_coalesced_scan_is_an_error_naming_the_record() {
    let fs = SimFs::new();
    let engine = open(&fs, 1 << 20).unwrap();
    let mut batch = WriteBatch::new();
    for i in 0..20 {
        batch.put(format!("k{i:02}"), format!("value {i:02}"));
    }
    engine.write_batch(&batch).unwrap();
    let all = kv_domain::KeyRange::all();
    assert_eq!(engine.scan(&all, 100).unwrap().len(), 20);
    let seg = segments(&fs).pop().unwrap();
    let clean = fs.read_file(&seg).unwrap();
    // Record i of the batch: the value is the last bytes of each record; flip one in the first, a middle
    // and the last record of the run.
    let starts: Vec<usize> = (0..20)
        .map(|i| {
            let needle = format!("value {i:02}");
            clean
                .windows(needle.len())
                .rposition(|w| w == needle.as_bytes())
                .unwrap()
        })
        .collect();
    for i in [0, 9, 19] {
        let mut bytes = clean.clone();
        bytes[starts[i]] ^= 0x01;
        fs.set_file(&seg, bytes);
        match engine.scan(&all, 100) {
            Err(EngineError::Corrupted { file, offset, .. }) => {
                assert_eq!(file, segment_name(FIRST_SEGMENT_ID));
                assert!(
                    offset < starts[i] as u64 && starts[i] as u64 - offset < 64,
                    "record {i}: offset {offset} names the damaged record (value at {})",
                    starts[i]
                );
            }
            other => panic!("record {i}: expected corruption, got {other:?}"),
        }
        // Single reads of the other keys are unaffected.
        let other = format!("k{:02}", (i + 1) % 20);
        assert!(engine.get(other.as_bytes()).unwrap().is_some());
    }
    fs.set_file(&seg, clean);
    assert_eq!(engine.scan(&all, 100).unwrap().len(), 20);
}

#[test]
fn a_newest_segment_with_a_torn_header_is_set_aside() {
    let fs = SimFs::new();
    {
        let engine = open(&fs, 1 << 20).unwrap();
        engine.put(b"k", b"v").unwrap();
    }
    // A rotation that crashed after creating the file but before its header was durable.
    for partial in [vec![], b"MPKVL".to_vec()] {
        let copy = fs.deep_copy();
        copy.set_file(
            &Path::new(DIR).join(segment_name(FIRST_SEGMENT_ID + 1)),
            partial.clone(),
        );
        let engine = open(&copy, 1 << 20).unwrap();
        assert_eq!(engine.get(b"k").unwrap().unwrap().as_bytes(), b"v");
        let report = engine.recovery_report();
        assert_eq!(report.truncated_bytes, partial.len() as u64);
        assert!(
            report.notes.iter().any(|n| n.contains("unfinished header")),
            "{:?}",
            report.notes
        );
        engine.put(b"k2", b"v2").unwrap();
        drop(engine);
        assert_eq!(
            open(&copy, 1 << 20)
                .unwrap()
                .get(b"k2")
                .unwrap()
                .unwrap()
                .as_bytes(),
            b"v2"
        );
    }
}

#[test]
fn a_bad_header_in_a_sealed_segment_is_corruption() {
    let fs = SimFs::new();
    {
        let engine = open(&fs, 100).unwrap();
        for i in 0..5 {
            engine.put(format!("k{i}").as_bytes(), &[b'v'; 60]).unwrap();
        }
    }
    let first = segments(&fs)[0].clone();
    let mut bytes = fs.read_file(&first).unwrap();
    bytes[8] = 99; // the id field
    fs.set_file(&first, bytes);
    assert!(matches!(
        open(&fs, 100),
        Err(EngineError::Corrupted { offset: 0 | 8, .. })
    ));
}

#[test]
fn mid_segment_damage_in_the_newest_segment_is_cut_and_reported_loudly() {
    let fs = SimFs::new();
    {
        let engine = open(&fs, 1 << 20).unwrap();
        for i in 0..10 {
            engine.put(format!("k{i}").as_bytes(), b"value").unwrap();
        }
    }
    let seg = segments(&fs).pop().unwrap();
    let mut bytes = fs.read_file(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs.set_file(&seg, bytes);
    let engine = open(&fs, 1 << 20).unwrap();
    let report = engine.recovery_report();
    assert!(report.truncated_bytes > 0);
    assert!(
        report.notes.iter().any(|n| n.contains("WARNING")),
        "{:?}",
        report.notes
    );
    let kept = contents(&engine);
    assert!(
        kept.len() < 10 && kept.values().all(|v| v == b"value"),
        "only an intact prefix survives"
    );
}

#[test]
fn reopen_preserves_lsns_and_new_writes_continue_above_them() {
    let fs = SimFs::new();
    let last = {
        let engine = open(&fs, 200).unwrap();
        let mut last = kv_domain::Lsn::ZERO;
        for i in 0..20 {
            last = engine
                .put(format!("k{i}").as_bytes(), b"0123456789")
                .unwrap();
        }
        last
    };
    let engine = open(&fs, 200).unwrap();
    assert_eq!(engine.last_lsn(), last);
    assert!(engine.put(b"n", b"v").unwrap() > last);
    assert!(engine.status().segments > 3);
}
