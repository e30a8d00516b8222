//! The Raft log (`kv_infra_fs::raft_log`): random histories of appends, truncations, purges and votes
//! against a model, with a reopen now and then; simulated power loss at every sync point of each history;
//! a torn tail, a damaged sealed segment and a missing segment; fail-stop after a failed sync.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kv_domain::EngineError;
use kv_infra_fs::raft_log::{RaftLog, RaftLogOptions};
use kv_infra_fs::sim::{Faults, SimFs};
use kv_infra_fs::vfs::FileSystem;
use rand::{Rng, SeedableRng};

const DIR: &str = "/data/raft";
/// Small segments, so histories rotate, truncate across segments and purge whole ones.
const SEGMENT: u64 = 300;

fn opts(fs: &SimFs) -> RaftLogOptions {
    RaftLogOptions {
        max_segment_bytes: SEGMENT,
        fs: Arc::new(fs.clone()),
    }
}

fn open(fs: &SimFs) -> RaftLog {
    RaftLog::open(DIR, opts(fs)).unwrap().0
}

/// What the log must hold after a sequence of acknowledged operations.
#[derive(Debug, Clone, Default, PartialEq)]
struct Model {
    entries: BTreeMap<u64, Vec<u8>>,
    purged: Option<u64>,
    vote: Option<Vec<u8>>,
}

impl Model {
    fn next(&self) -> u64 {
        let last = self.entries.keys().next_back().copied();
        match (last, self.purged) {
            (Some(l), _) => l + 1,
            (None, Some(p)) => p + 1,
            (None, None) => 0,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u64, Vec<u8>)>),
    TruncateFrom(u64),
    PurgeThrough(u64),
    Vote(Vec<u8>),
}

fn random_op(rng: &mut impl Rng, m: &Model) -> Op {
    let next = m.next();
    let floor = m.purged.map_or(0, |p| p + 1);
    match rng.gen_range(0..10) {
        0..=5 => {
            let n = rng.gen_range(1..5);
            Op::Append(
                (next..next + n)
                    .map(|i| {
                        let len = rng.gen_range(0..60);
                        (i, (0..len).map(|_| rng.gen()).collect())
                    })
                    .collect(),
            )
        }
        6 if next > floor => Op::TruncateFrom(rng.gen_range(floor..=next)),
        // Now and then past the last entry (a snapshot installed beyond the log).
        7 if next > floor => Op::PurgeThrough(rng.gen_range(floor..next + 2)),
        _ => Op::Vote(format!("vote {}", rng.gen::<u16>()).into_bytes()),
    }
}

fn apply(log: &mut RaftLog, m: &mut Model, op: &Op) {
    match op {
        Op::Append(entries) => {
            log.append(entries.iter().map(|(i, b)| (*i, b.as_slice())))
                .unwrap();
            m.entries.extend(entries.iter().cloned());
        }
        Op::TruncateFrom(i) => {
            log.truncate_from(*i).unwrap();
            m.entries.retain(|k, _| k < i);
        }
        Op::PurgeThrough(i) => {
            log.purge_through(*i, format!("id {i}").as_bytes()).unwrap();
            m.entries.retain(|k, _| k > i);
            m.purged = Some(m.purged.map_or(*i, |p| p.max(*i)));
        }
        Op::Vote(v) => {
            log.save_vote(v).unwrap();
            m.vote = Some(v.clone());
        }
    }
}

fn contents(log: &RaftLog) -> Model {
    Model {
        entries: log.entries(0, u64::MAX).unwrap().into_iter().collect(),
        purged: log.purged().map(|p| p.index),
        vote: log.vote().map(<[u8]>::to_vec),
    }
}

#[test]
fn random_histories_match_the_model_across_reopens() {
    for seed in 0..60 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let fs = SimFs::new();
        let mut log = open(&fs);
        let mut m = Model::default();
        for _ in 0..80 {
            let op = random_op(&mut rng, &m);
            apply(&mut log, &mut m, &op);
            if rng.gen_ratio(1, 10) {
                drop(log);
                log = open(&fs);
            }
            let got = contents(&log);
            assert_eq!(got, m, "seed {seed} after {op:?}");
            assert_eq!(log.first_index(), m.entries.keys().next().copied());
            assert_eq!(log.last_index(), m.entries.keys().next_back().copied());
            if let Some(p) = m.purged {
                assert_eq!(log.purged().unwrap().marker, format!("id {p}").into_bytes());
            }
        }
    }
}

#[test]
fn an_append_that_does_not_follow_the_last_entry_is_refused() {
    let fs = SimFs::new();
    let mut log = open(&fs);
    log.append([(5, &b"a"[..]), (6, b"b")]).unwrap();
    for bad in [[(8, &b"x"[..])], [(6, &b"x"[..])], [(4, &b"x"[..])]] {
        assert!(matches!(log.append(bad), Err(EngineError::InvalidInput(_))));
    }
    assert!(matches!(
        log.append([(7, &b"c"[..]), (9, b"d")]),
        Err(EngineError::InvalidInput(_))
    ));
    assert_eq!(log.last_index(), Some(6), "a refused append writes nothing");
    log.purge_through(10, b"m").unwrap();
    assert!(log.append([(7, &b"x"[..])]).is_err());
    log.append([(11, &b"e"[..])]).unwrap();
    assert_eq!(log.entries(0, 100).unwrap(), vec![(11, b"e".to_vec())]);
}

/// A crash image must reopen to the state after the acknowledged operations or after the one in flight
/// too, where every entry held matches one of the two, entries are consecutive, and every entry the two
/// agree on is kept (no acknowledged entry lost).
#[test]
fn power_loss_at_any_sync_point_keeps_every_acknowledged_entry() {
    let mut images = 0;
    for seed in 0..30 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + seed);
        let fs = SimFs::new();
        fs.create_dir_all(Path::new(DIR)).unwrap();
        fs.sync_dir(Path::new("/data")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let mut log = open(&fs);
        fs.capture_crash_points();
        let mut states = vec![Model::default()];
        let mut m = Model::default();
        for done in 0..40u64 {
            fs.mark(done);
            let op = random_op(&mut rng, &m);
            apply(&mut log, &mut m, &op);
            states.push(m.clone());
        }
        for point in fs.crash_points() {
            let mark = point.mark as usize;
            let (before, after) = (&states[mark], &states[(mark + 1).min(states.len() - 1)]);
            for torn in [None, Some(seed + point.mark + 7)] {
                images += 1;
                let crashed = point.materialize(torn);
                let (log, _) = RaftLog::open(DIR, opts(&crashed))
                    .unwrap_or_else(|e| panic!("seed {seed}, mark {mark}: open failed: {e}"));
                let got = contents(&log);
                let ctx = format!("seed {seed}, mark {mark}, torn {torn:?}: got {got:?}");
                assert!(got.vote == before.vote || got.vote == after.vote, "{ctx}");
                assert!(
                    got.purged == before.purged || got.purged == after.purged,
                    "{ctx}"
                );
                let keys: Vec<u64> = got.entries.keys().copied().collect();
                assert!(keys.windows(2).all(|w| w[1] == w[0] + 1), "hole: {ctx}");
                for (i, bytes) in &got.entries {
                    assert!(
                        before.entries.get(i) == Some(bytes) || after.entries.get(i) == Some(bytes),
                        "entry {i} matches neither state: {ctx}"
                    );
                }
                let floor = got.purged.map_or(0, |p| p + 1);
                // No hole between the purge point and the first entry either (these histories start at 0).
                if let Some(first) = keys.first() {
                    assert_eq!(*first, floor, "hole after the purge point: {ctx}");
                }
                for (i, bytes) in before.entries.range(floor..) {
                    if after.entries.get(i) == Some(bytes) {
                        assert_eq!(got.entries.get(i), Some(bytes), "entry {i} lost: {ctx}");
                    }
                }
            }
        }
    }
    assert!(images > 1000, "only {images} crash images");
}

fn segment_paths(fs: &SimFs) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = fs
        .paths()
        .into_iter()
        .filter(|p| p.starts_with(DIR) && p.extension().is_some_and(|e| e == "seg"))
        .collect();
    paths.sort();
    paths
}

fn filled(fs: &SimFs, n: u64) -> RaftLog {
    let mut log = open(fs);
    for i in 0..n {
        log.append([(i, format!("entry {i:03} {}", "x".repeat(40)).as_bytes())])
            .unwrap();
    }
    log
}

#[test]
fn a_torn_tail_of_the_newest_segment_is_cut_and_reported() {
    let fs = SimFs::new();
    drop(filled(&fs, 20));
    let newest = segment_paths(&fs).pop().unwrap();
    let mut bytes = fs.read_file(&newest).unwrap();
    bytes.truncate(bytes.len() - 5);
    fs.set_file(&newest, bytes);
    let (log, report) = RaftLog::open(DIR, opts(&fs)).unwrap();
    assert_eq!(log.last_index(), Some(18));
    assert!(report.cut_bytes > 0, "{report:?}");
    assert_eq!(report.entries, 19);
}

/// Opens `fs`'s log after damage: it must keep exactly entries `0..kept`, report the damage, and stay
/// recovering across a reopen (the marker was stored before the cut) until `finish_recovery`.
fn assert_damage_remembered(fs: &SimFs, kept: u64, what: &str) {
    let (log, report) = RaftLog::open(DIR, opts(fs)).unwrap();
    assert!(
        report.damage.is_some(),
        "{what}: no damage reported: {report:?}"
    );
    assert_eq!(log.last_index(), kept.checked_sub(1), "{what}: {report:?}");
    // Entries 0..20 were held: the node must get through entry 19 again, seen past the damage.
    assert_eq!(log.recovering().map(|r| r.through), Some(19), "{what}");
    drop(log);
    let (mut log, report) = RaftLog::open(DIR, opts(fs)).unwrap();
    assert_eq!(report.damage, None, "{what}: the cut left a clean log");
    assert!(
        log.recovering().is_some(),
        "{what}: the marker did not survive a reopen"
    );
    // New entries go after the valid prefix, and recovery ends only when told.
    log.append([(kept, &b"refetched"[..])]).unwrap();
    log.finish_recovery().unwrap();
    drop(log);
    let (log, _) = RaftLog::open(DIR, opts(fs)).unwrap();
    assert_eq!(log.recovering(), None, "{what}");
    assert_eq!(log.last_index(), Some(kept), "{what}");
}

/// Flips one byte `back` bytes before the end of `path`.
fn flip(fs: &SimFs, path: &Path, back: usize) {
    let mut bytes = fs.read_file(path).unwrap();
    let at = bytes.len() - back;
    bytes[at] ^= 0x40;
    fs.set_file(path, bytes);
}

/// Entries in the segment at `path` (each segment holds consecutive entries from its header's base).
fn first_entry(fs: &SimFs, path: &Path) -> u64 {
    let bytes = fs.read_file(path).unwrap();
    kv_infra_fs::codec::decode_segment_header(&bytes[..kv_infra_fs::codec::SEGMENT_HEADER_LEN])
        .unwrap()
        .1
}

#[test]
fn a_damaged_sealed_segment_keeps_the_prefix_and_is_remembered() {
    let fs = SimFs::new();
    drop(filled(&fs, 20));
    let paths = segment_paths(&fs);
    assert!(paths.len() >= 4, "{paths:?}");
    // The last entry of the second segment is damaged: everything from it on is gone.
    flip(&fs, &paths[1], 10);
    let kept = first_entry(&fs, &paths[2]) - 1;
    assert_damage_remembered(&fs, kept, "damaged sealed segment");
    assert!(segment_paths(&fs).len() <= 2, "later segments were removed");
}

#[test]
fn a_missing_segment_keeps_the_entries_before_it_and_is_remembered() {
    let fs = SimFs::new();
    drop(filled(&fs, 20));
    let paths = segment_paths(&fs);
    let kept = first_entry(&fs, &paths[2]);
    fs.remove(&paths[2]).unwrap();
    assert_damage_remembered(&fs, kept, "missing segment");
}

#[test]
fn a_missing_segment_just_before_the_newest_counts_the_newest_ones_entries() {
    let fs = SimFs::new();
    drop(filled(&fs, 20));
    let paths = segment_paths(&fs);
    let gone = &paths[paths.len() - 2];
    let kept = first_entry(&fs, gone);
    fs.remove(gone).unwrap();
    assert_damage_remembered(&fs, kept, "missing segment before the newest");
}

#[test]
fn a_damaged_header_of_the_newest_segment_before_valid_entries_is_damage() {
    let fs = SimFs::new();
    drop(filled(&fs, 20));
    let newest = segment_paths(&fs).pop().unwrap();
    let kept = first_entry(&fs, &newest);
    let mut bytes = fs.read_file(&newest).unwrap();
    bytes[2] ^= 0x40;
    fs.set_file(&newest, bytes);
    assert_damage_remembered(&fs, kept, "bad header of the newest segment");
}

#[test]
fn a_flipped_byte_before_valid_entries_of_the_newest_segment_is_damage_not_a_torn_tail() {
    // One segment holding entries 0..20, damaged `back` bytes before its end.
    let one_segment = |back: fn(usize) -> usize| {
        let fs = SimFs::new();
        let big = RaftLogOptions {
            max_segment_bytes: 1 << 20,
            fs: Arc::new(fs.clone()),
        };
        let mut log = RaftLog::open(DIR, big.clone()).unwrap().0;
        for i in 0..20u64 {
            log.append([(i, format!("entry {i:03} {}", "x".repeat(40)).as_bytes())])
                .unwrap();
        }
        drop(log);
        let newest = segment_paths(&fs).pop().unwrap();
        let len = fs.read_file(&newest).unwrap().len();
        flip(&fs, &newest, back(len));
        RaftLog::open(DIR, big).unwrap()
    };
    // A byte in the middle: the entries after it are intact, so they were written (and acknowledged)
    // after the damaged one; a torn append could not leave them.
    let (log, report) = one_segment(|len| len / 2);
    let kept = log.last_index().map_or(0, |l| l + 1);
    assert!(kept > 0 && kept < 20, "kept {kept}: {report:?}");
    assert!(report.damage.is_some(), "{report:?}");
    assert_eq!(log.recovering().map(|r| r.through), Some(19), "{report:?}");
    // Two damaged spots: the entries after the second still count.
    let two = {
        let fs = SimFs::new();
        let big = RaftLogOptions {
            max_segment_bytes: 1 << 20,
            fs: Arc::new(fs.clone()),
        };
        let mut log = RaftLog::open(DIR, big.clone()).unwrap().0;
        for i in 0..20u64 {
            log.append([(i, format!("entry {i:03} {}", "x".repeat(40)).as_bytes())])
                .unwrap();
        }
        drop(log);
        let newest = segment_paths(&fs).pop().unwrap();
        let len = fs.read_file(&newest).unwrap().len();
        flip(&fs, &newest, len / 2);
        flip(&fs, &newest, len / 4);
        RaftLog::open(DIR, big).unwrap().0
    };
    assert_eq!(two.recovering().map(|r| r.through), Some(19));
    // The same damage in the last entry is a torn tail: cut, not remembered.
    let (log, report) = one_segment(|_| 3);
    assert_eq!(log.last_index(), Some(18));
    assert_eq!(report.damage, None);
    assert_eq!(log.recovering(), None);
}

/// Ten single appends, then one append of entries 10..20, then `more` single appends; entry 12's record
/// damaged. Returns the reopened log.
fn torn_in_a_multi_entry_append(more: u64) -> RaftLog {
    let fs = SimFs::new();
    let big = RaftLogOptions {
        max_segment_bytes: 1 << 20,
        fs: Arc::new(fs.clone()),
    };
    let mut log = RaftLog::open(DIR, big.clone()).unwrap().0;
    let body = |i: u64| format!("entry {i:03} {}", "x".repeat(40));
    for i in 0..10u64 {
        log.append([(i, body(i).as_bytes())]).unwrap();
    }
    let batch: Vec<(u64, String)> = (10..20u64).map(|i| (i, body(i))).collect();
    log.append(batch.iter().map(|(i, b)| (*i, b.as_bytes())))
        .unwrap();
    for i in 20..20 + more {
        log.append([(i, body(i).as_bytes())]).unwrap();
    }
    drop(log);
    let newest = segment_paths(&fs).pop().unwrap();
    let mut bytes = fs.read_file(&newest).unwrap();
    let at = bytes.windows(9).position(|w| w == b"entry 012").unwrap();
    bytes[at + 3] ^= 0x40;
    fs.set_file(&newest, bytes);
    RaftLog::open(DIR, big).unwrap().0
}

#[test]
fn a_power_loss_inside_the_last_multi_entry_append_is_a_torn_tail_not_damage() {
    // A later page of the append in flight reached the disk before an earlier one: nothing after
    // the bad spot was acknowledged (the append had not returned).
    let log = torn_in_a_multi_entry_append(0);
    assert_eq!(log.last_index(), Some(11));
    assert_eq!(log.recovering(), None);
    // The same bad spot with a later append after it: that one was acknowledged after this one was
    // synced, so this is damage.
    let log = torn_in_a_multi_entry_append(3);
    assert_eq!(log.last_index(), Some(11));
    assert_eq!(log.recovering().map(|r| r.through), Some(22));
}

/// Power loss at every sync point of the repair itself: every image still knows it is recovering.
#[test]
fn power_loss_during_the_repair_of_damage_never_forgets_the_damage() {
    let fs = SimFs::new();
    drop(filled(&fs, 20));
    let paths = segment_paths(&fs);
    flip(&fs, &paths[1], 10);
    fs.capture_crash_points();
    let _ = RaftLog::open(DIR, opts(&fs)).unwrap();
    let points = fs.crash_points();
    assert!(points.len() >= 3, "the repair syncs: {}", points.len());
    for (n, point) in points.iter().enumerate() {
        for torn in [None, Some(n as u64)] {
            let crashed = point.materialize(torn);
            let (log, _) = RaftLog::open(DIR, opts(&crashed))
                .unwrap_or_else(|e| panic!("point {n}: open failed: {e}"));
            assert!(
                log.recovering().is_some(),
                "point {n}, torn {torn:?}: the damage was forgotten"
            );
        }
    }
}

/// A purge deletes segments oldest first and syncs the directory once at the end, so a crash may leave
/// an older purged segment while a younger one is gone, or leave one damaged: what they held is purged,
/// so neither is damage and the live entries stay.
#[test]
fn leftovers_of_an_interrupted_purge_are_not_damage() {
    for flip_it in [false, true] {
        let fs = SimFs::new();
        let mut log = filled(&fs, 20);
        let paths = segment_paths(&fs);
        let first_kept = first_entry(&fs, &paths[2]);
        let oldest = fs.read_file(&paths[0]).unwrap();
        log.purge_through(first_kept - 1, b"marker").unwrap();
        drop(log);
        // Segment 1 came back (its unlink was not durable), segment 2 is gone.
        fs.set_file(&paths[0], oldest);
        if flip_it {
            flip(&fs, &paths[0], 10);
        }
        let (log, report) = RaftLog::open(DIR, opts(&fs)).unwrap();
        assert_eq!(report.damage, None, "flip {flip_it}: {report:?}");
        assert_eq!(log.recovering(), None);
        assert_eq!(log.first_index(), Some(first_kept));
        assert_eq!(log.last_index(), Some(19));
    }
}

/// A crash right after a rotation leaves an empty newest segment (its header durable, no entry yet): a
/// truncation must still cut the entries before it, so the next append fits.
#[test]
fn a_truncation_behind_an_empty_newest_segment_still_cuts() {
    let fs = SimFs::new();
    drop(filled(&fs, 6));
    let paths = segment_paths(&fs);
    let newest = paths.last().unwrap();
    let id =
        kv_infra_fs::segment::parse_segment_name(&newest.file_name().unwrap().to_string_lossy())
            .unwrap();
    let empty = Path::new(DIR).join(kv_infra_fs::segment::segment_name(id + 1));
    fs.set_file(
        &empty,
        kv_infra_fs::codec::encode_segment_header(id + 1, 6).to_vec(),
    );
    let mut log = open(&fs);
    assert_eq!(log.last_index(), Some(5));
    log.truncate_from(3).unwrap();
    assert_eq!(log.last_index(), Some(2));
    log.append([(3, &b"after the cut"[..])]).unwrap();
    drop(log);
    let log = open(&fs);
    assert_eq!(log.last_index(), Some(3));
    assert_eq!(log.entries(3, 4).unwrap()[0].1, b"after the cut".to_vec());
}

#[test]
fn after_a_failed_sync_every_write_is_refused_until_reopened() {
    let fs = SimFs::new();
    let mut log = filled(&fs, 3);
    fs.set_faults(Faults {
        fail_sync_number: Some(fs.syncs() + 1),
        ..Faults::default()
    });
    assert!(log.append([(3, &b"lost"[..])]).is_err());
    assert!(matches!(
        log.append([(3, &b"again"[..])]),
        Err(EngineError::Poisoned { .. })
    ));
    assert!(matches!(
        log.save_vote(b"v"),
        Err(EngineError::Poisoned { .. })
    ));
    assert!(matches!(
        log.truncate_from(1),
        Err(EngineError::Poisoned { .. })
    ));
    assert_eq!(log.entries(0, 10).unwrap().len(), 3, "reads keep working");
    drop(log);
    let mut log = open(&fs);
    log.append([(log.last_index().unwrap() + 1, &b"after reopen"[..])])
        .unwrap();
}

/// A recovery started from outside (a wiped directory, told by the peers) is stored durably: it
/// survives a crash and a reopen, a second start keeps the higher `through`, and it ends like any
/// other.
#[test]
fn a_recovery_started_from_outside_survives_a_crash_and_ends_like_any_other() {
    use kv_infra_fs::raft_log::{Recovering, VoteFloor};
    let fs = SimFs::new();
    let mut log = open(&fs);
    assert_eq!(log.recovering(), None);
    let marker = |through, term| Recovering {
        through,
        vote_floor: Some(VoteFloor { term, node_id: 2 }),
        reason: "wiped".into(),
    };
    log.start_recovery(marker(40, 3)).unwrap();
    log.start_recovery(marker(30, 5)).unwrap();
    assert_eq!(
        log.recovering()
            .map(|r| (r.through, r.vote_floor.map(|f| f.term))),
        Some((40, Some(5))),
        "the higher of each"
    );
    let crashed = fs.crash_image().materialize(None);
    drop(log);
    let mut log = open(&crashed);
    assert_eq!(
        log.recovering(),
        Some(&marker(40, 5)),
        "durable across a crash"
    );
    log.finish_recovery().unwrap();
    let crashed = crashed.crash_image().materialize(None);
    drop(log);
    assert_eq!(open(&crashed).recovering(), None);
}
