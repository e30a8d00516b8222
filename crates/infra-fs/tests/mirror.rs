//! `MemoryEngine` against `FsEngine` (toydb's `Mirror` engine is the model): the same random operations,
//! valid and invalid, run on both, and every answer must agree: the `Ok` values, and for errors the
//! variant. The layers above are tested on `MemoryEngine`; this is what makes those tests pin the real
//! engine's behaviour.
//!
//! Two pairs: a *leader* pair takes the KV operations (puts, deletes, batches, gets, scans with random
//! bounds and limits, syncs, compactions) and reads its log back; a *follower* pair takes random
//! `apply_log` and `install_snapshot_page` sequences (LSNs that repeat, go back, skip; empty entries and
//! pages; empty keys). After every step both pairs are compared whole.
#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Debug;
use std::ops::Bound;

use common::{contents, sim_options};
use kv_domain::{
    BatchOp, Durability, Engine, EngineError, EngineResult, Key, KeyRange, LogCursor, LogEntry,
    LogRead, LogShipping, Lsn, MemoryEngine, Value, WriteBatch, MAX_KEY_LEN, MAX_VALUE_LEN,
};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::{FsEngine, Options};
use proptest::prelude::*;

/// Small segments, so that rotation happens all the time.
const SEGMENT: u64 = 2048;

/// The name of an error's variant: what the two engines must agree on (messages may differ).
fn variant(e: &EngineError) -> &'static str {
    match e {
        EngineError::InvalidInput(_) => "InvalidInput",
        EngineError::Corrupted { .. } => "Corrupted",
        EngineError::DiskFull { .. } => "DiskFull",
        EngineError::Io { .. } => "Io",
        EngineError::Poisoned { .. } => "Poisoned",
        EngineError::Busy(_) => "Busy",
        EngineError::Locked { .. } => "Locked",
    }
}

/// Compares two answers: equal `Ok` values (after `view`), or errors of the same variant.
fn same<T, U: PartialEq + Debug>(
    what: &str,
    fs: EngineResult<T>,
    mem: EngineResult<T>,
    view: impl Fn(T) -> U,
) -> Result<(), TestCaseError> {
    let fs = fs.map(&view).map_err(|e| variant(&e));
    let mem = mem.map(&view).map_err(|e| variant(&e));
    prop_assert_eq!(
        fs,
        mem,
        "{}: FsEngine (left) and MemoryEngine (right) disagree",
        what
    );
    Ok(())
}

/// A pair of engines that must behave alike.
struct Mirror {
    fs: FsEngine,
    mem: MemoryEngine,
}

impl Mirror {
    fn new(durability: Durability) -> Self {
        let opts = Options {
            auto_compaction: None,
            ..sim_options(&SimFs::new(), durability, SEGMENT)
        };
        Self {
            fs: FsEngine::open("/mirror", opts).unwrap(),
            mem: MemoryEngine::new(),
        }
    }

    /// Everything observable without a key: contents, positions, key count.
    fn check_state(&self) -> Result<(), TestCaseError> {
        prop_assert_eq!(contents(&self.fs), contents(&self.mem), "contents");
        prop_assert_eq!(self.fs.last_lsn(), self.mem.last_lsn(), "last LSN");
        prop_assert_eq!(self.fs.durable_lsn(), self.mem.durable_lsn(), "durable LSN");
        prop_assert_eq!(self.fs.status().keys, self.mem.status().keys, "key count");
        Ok(())
    }
}

/// A key: usually one of a few short ones (so operations collide), sometimes empty or over the limit.
#[derive(Debug, Clone)]
enum K {
    Short(u8),
    Empty,
    Oversized,
}

impl K {
    fn bytes(&self) -> Vec<u8> {
        match self {
            K::Short(k) => {
                format!("k{:02}", k % 24).into_bytes()[..if k % 3 == 0 { 2 } else { 3 }].to_vec()
            }
            K::Empty => Vec::new(),
            K::Oversized => vec![b'x'; MAX_KEY_LEN + 1],
        }
    }
}

fn key() -> impl Strategy<Value = K> {
    prop_oneof![
        20 => any::<u8>().prop_map(K::Short),
        2 => Just(K::Empty),
        1 => Just(K::Oversized),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..24),
        proptest::collection::vec(any::<u8>(), 200..600),
    ]
}

/// One operation of a batch, a log entry or a snapshot page: a put (`Some` value) or a delete.
type RawOp = (K, Option<Vec<u8>>);

fn raw_ops(max: usize) -> impl Strategy<Value = Vec<RawOp>> {
    proptest::collection::vec((key(), proptest::option::of(value())), 0..max)
}

fn batch_op((k, v): &RawOp) -> BatchOp {
    match v {
        Some(v) => BatchOp::Put {
            key: Key::from(k.bytes()),
            value: Value::from(v.clone()),
        },
        None => BatchOp::Delete {
            key: Key::from(k.bytes()),
        },
    }
}

fn bound() -> impl Strategy<Value = Bound<K>> {
    prop_oneof![
        any::<u8>().prop_map(|k| Bound::Included(K::Short(k))),
        any::<u8>().prop_map(|k| Bound::Excluded(K::Short(k))),
        Just(Bound::Included(K::Empty)),
        Just(Bound::Unbounded),
    ]
}

fn range(start: &Bound<K>, end: &Bound<K>) -> KeyRange {
    let b = |x: &Bound<K>| match x {
        Bound::Included(k) => Bound::Included(Key::from(k.bytes())),
        Bound::Excluded(k) => Bound::Excluded(Key::from(k.bytes())),
        Bound::Unbounded => Bound::Unbounded,
    };
    KeyRange {
        start: b(start),
        end: b(end),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(K, Vec<u8>),
    Delete(K),
    Batch(Vec<RawOp>),
    Get(K),
    Scan(Bound<K>, Bound<K>, usize),
    ScanKeys(Bound<K>, Bound<K>, usize),
    Sync,
    Compact,
    /// Reads the leader's log back from this LSN, in chunks of about this many bytes.
    ReadLog(u8, usize),
    /// Follower: applies entries at these LSN steps from the follower's last LSN (a step of 0 repeats
    /// the LSN; negative ones go back).
    ApplyLog(Vec<(i8, Vec<RawOp>)>),
    /// Follower: a snapshot page at this LSN step from the follower's last LSN.
    InstallPage(i8, Vec<RawOp>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key().prop_map(Op::Delete),
        3 => raw_ops(5).prop_map(Op::Batch),
        3 => key().prop_map(Op::Get),
        2 => (bound(), bound(), 0usize..8).prop_map(|(s, e, l)| Op::Scan(s, e, l)),
        2 => (bound(), bound(), 0usize..8).prop_map(|(s, e, l)| Op::ScanKeys(s, e, l)),
        1 => Just(Op::Sync),
        1 => Just(Op::Compact),
        1 => (any::<u8>(), 1usize..2000).prop_map(|(f, c)| Op::ReadLog(f, c)),
        3 => proptest::collection::vec((-1i8..4, raw_ops(4)), 0..4).prop_map(Op::ApplyLog),
        2 => (-1i8..3, raw_ops(4)).prop_map(|(d, ops)| Op::InstallPage(d, ops)),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![Just(Durability::Always), Just(Durability::Never)]
}

/// Every entry of `engine`'s log after `from`, read in chunks of `chunk` bytes; `None` when the history
/// is gone (compaction dropped it: `MemoryEngine` never does, so there is nothing to compare).
fn read_all(
    engine: &dyn LogShipping,
    from: Lsn,
    chunk: usize,
) -> EngineResult<Option<Vec<LogEntry>>> {
    let mut cursor = LogCursor::after(from);
    let mut out = Vec::new();
    loop {
        match engine.read_log(&cursor, chunk)? {
            LogRead::Gone { .. } => return Ok(None),
            LogRead::Entries { entries, next } => {
                if entries.is_empty() {
                    return Ok(Some(out));
                }
                out.extend(entries);
                cursor = next;
            }
        }
    }
}

fn step(lsn: Lsn, by: i8) -> Lsn {
    Lsn(lsn.0.saturating_add_signed(i64::from(by)))
}

fn run(ops: &[Op], leader: &Mirror, follower: &Mirror) -> Result<(), TestCaseError> {
    for op in ops {
        let (l, f) = (leader, follower);
        match op {
            Op::Put(k, v) => same(
                "put",
                l.fs.put(&k.bytes(), v),
                l.mem.put(&k.bytes(), v),
                |x| x,
            )?,
            Op::Delete(k) => same(
                "delete",
                l.fs.delete(&k.bytes()),
                l.mem.delete(&k.bytes()),
                |x| x,
            )?,
            Op::Batch(raw) => {
                let mut b = WriteBatch::new();
                for r in raw {
                    match batch_op(r) {
                        BatchOp::Put { key, value } => b.put(key, value),
                        BatchOp::Delete { key } => b.delete(key),
                    };
                }
                same(
                    "write_batch",
                    l.fs.write_batch(&b),
                    l.mem.write_batch(&b),
                    |x| x,
                )?;
            }
            Op::Get(k) => same("get", l.fs.get(&k.bytes()), l.mem.get(&k.bytes()), |x| x)?,
            Op::Scan(s, e, limit) => {
                let r = range(s, e);
                same("scan", l.fs.scan(&r, *limit), l.mem.scan(&r, *limit), |x| x)?;
            }
            Op::ScanKeys(s, e, limit) => {
                let r = range(s, e);
                same(
                    "scan_keys",
                    l.fs.scan_keys(&r, *limit),
                    l.mem.scan_keys(&r, *limit),
                    |x| x,
                )?;
            }
            Op::Sync => same("sync", l.fs.sync(), l.mem.sync(), |x| x)?,
            // Only the outcome: what there was to reclaim differs by nature.
            Op::Compact => same("compact", l.fs.compact(), l.mem.compact(), |_| ())?,
            Op::ReadLog(from, chunk) => {
                let from = Lsn(u64::from(*from) % (l.mem.last_lsn().0 + 2));
                let fs = read_all(&l.fs, from, *chunk);
                if !matches!(fs, Ok(None)) {
                    same("read_log", fs, read_all(&l.mem, from, *chunk), |x| x)?;
                }
            }
            Op::ApplyLog(steps) => {
                let mut lsn = f.mem.last_lsn();
                let entries: Vec<LogEntry> = steps
                    .iter()
                    .map(|(by, raw)| {
                        lsn = step(lsn, *by);
                        LogEntry {
                            lsn,
                            ops: raw.iter().map(batch_op).collect(),
                        }
                    })
                    .collect();
                same(
                    "apply_log",
                    f.fs.apply_log(&entries),
                    f.mem.apply_log(&entries),
                    |x| x,
                )?;
            }
            Op::InstallPage(by, raw) => {
                let at = step(f.mem.last_lsn(), *by);
                let ops: Vec<BatchOp> = raw.iter().map(batch_op).collect();
                same(
                    "install_snapshot_page",
                    f.fs.install_snapshot_page(at, &ops),
                    f.mem.install_snapshot_page(at, &ops),
                    |x| x,
                )?;
            }
        }
        leader.check_state()?;
        follower.check_state()?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn memory_engine_answers_like_the_file_engine(
        durability in durability(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(&ops, &Mirror::new(durability), &Mirror::new(durability))?;
    }
}

/// Values over the limit cost a GiB each, too much for every proptest case: one run of each operation
/// that takes a value. The buffers are zeroed lazily by the OS and never touched (both engines refuse
/// on the length alone).
#[test]
fn oversized_values_and_batches_are_refused_alike() {
    let m = Mirror::new(Durability::Always);
    let huge = vec![0u8; MAX_VALUE_LEN + 1];
    same("put", m.fs.put(b"k", &huge), m.mem.put(b"k", &huge), |x| x).unwrap();
    let mut b = WriteBatch::new();
    b.put("a", "1").put("k", huge);
    same(
        "write_batch",
        m.fs.write_batch(&b),
        m.mem.write_batch(&b),
        |x| x,
    )
    .unwrap();
    // Four values at the limit are each valid, but the batch would not fit a segment's u32 offsets.
    let mut b = WriteBatch::new();
    for k in ["a", "b", "c", "d"] {
        b.put(k, vec![0u8; MAX_VALUE_LEN]);
    }
    let refused = m.fs.write_batch(&b);
    assert!(
        matches!(refused, Err(EngineError::InvalidInput(_))),
        "{refused:?}"
    );
    same("write_batch", refused, m.mem.write_batch(&b), |x| x).unwrap();
    m.check_state().unwrap();
}
