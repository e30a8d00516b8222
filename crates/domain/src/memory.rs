//! An in-memory [`Engine`] and [`LogShipping`] for tests of the layers above (no disk, no durability).
//!
//! It refuses exactly what the file engine refuses, with the same error variants (the shared checks are
//! [`check_record`] and [`check_batch`]; the LSN rules of the log-applying methods are restated here):
//! `kv-infra-fs`'s mirror test runs the same random operations on both and compares every answer.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::{
    check_batch, check_record, BatchOp, CompactionStats, Durability, Engine, EngineError,
    EngineResult, EngineStatus, Entry, FrozenView, Key, KeyRange, LogCursor, LogEntry, LogRead,
    LogShipping, Lsn, Value, WriteBatch,
};

/// A `BTreeMap` behind a mutex. A std `Mutex` is right here: every critical section is a short map operation
/// and no guard is ever held across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    map: BTreeMap<Key, Value>,
    last_lsn: Lsn,
    writes: u64,
    /// Every write ever made, for [`LogShipping::read_log`] (this engine never compacts its history).
    log: Vec<LogEntry>,
}

impl State {
    fn apply(&mut self, op: &BatchOp) {
        match op {
            BatchOp::Put { key, value } => self.map.insert(key.clone(), value.clone()),
            BatchOp::Delete { key } => self.map.remove(key),
        };
    }

    /// Applies `ops` as one write at `lsn` and logs it.
    fn commit(&mut self, lsn: Lsn, ops: Vec<BatchOp>) -> Lsn {
        ops.iter().for_each(|op| self.apply(op));
        self.writes += 1;
        self.last_lsn = lsn;
        self.log.push(LogEntry { lsn, ops });
        lsn
    }
}

/// The check of one operation (what the file engine runs on each record it writes).
fn check_op(op: &BatchOp) -> EngineResult<()> {
    match op {
        BatchOp::Put { key, value } => check_record(key, value),
        BatchOp::Delete { key } => check_record(key, &[]),
    }
}

/// Refuses a write at LSN `at` when the log is at `last`: a single record may share the last LSN (the
/// pages of a snapshot all carry its base LSN), a batch must be above it (recovery requires it).
fn check_lsn(at: Lsn, last: Lsn, single: bool) -> EngineResult<()> {
    if at > last || (at == last && single) {
        Ok(())
    } else {
        Err(EngineError::InvalidInput(format!(
            "cannot write at LSN {at}: the log is already at LSN {last}"
        )))
    }
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A panic while holding the lock cannot leave the map half-updated (each operation is one map call),
        // so a poisoned mutex is safe to keep using.
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl Engine for MemoryEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> EngineResult<Lsn> {
        check_record(key, value)?;
        let op = BatchOp::Put {
            key: Key::from(key),
            value: Value::from(value),
        };
        Ok(self.with(|s| s.commit(s.last_lsn.next(), vec![op])))
    }

    fn get(&self, key: &[u8]) -> EngineResult<Option<Value>> {
        Ok(self.with(|s| s.map.get(key).cloned()))
    }

    fn delete(&self, key: &[u8]) -> EngineResult<Lsn> {
        check_record(key, &[])?;
        let op = BatchOp::Delete {
            key: Key::from(key),
        };
        Ok(self.with(|s| s.commit(s.last_lsn.next(), vec![op])))
    }

    fn write_batch(&self, batch: &WriteBatch) -> EngineResult<Lsn> {
        check_batch(batch.ops())?;
        Ok(self.with(|s| s.commit(s.last_lsn.next(), batch.ops().to_vec())))
    }

    fn scan(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Entry>> {
        if range.is_empty() {
            // `BTreeMap::range` panics on such bounds; the answer is known anyway.
            return Ok(Vec::new());
        }
        Ok(self.with(|s| {
            s.map
                .range((range.start.clone(), range.end.clone()))
                .take(limit)
                .map(|(k, v)| Entry {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect()
        }))
    }

    fn scan_keys(&self, range: &KeyRange, limit: usize) -> EngineResult<Vec<Key>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.with(|s| {
            s.map
                .range((range.start.clone(), range.end.clone()))
                .take(limit)
                .map(|(k, _)| k.clone())
                .collect()
        }))
    }

    fn last_lsn(&self) -> Lsn {
        self.with(|s| s.last_lsn)
    }

    fn sync(&self) -> EngineResult<()> {
        Ok(())
    }

    fn compact(&self) -> EngineResult<CompactionStats> {
        // Nothing to reclaim in memory; a run that merged nothing.
        Ok(CompactionStats {
            runs: 1,
            ..CompactionStats::default()
        })
    }

    fn status(&self) -> EngineStatus {
        self.with(|s| EngineStatus {
            last_lsn: s.last_lsn,
            keys: s.map.len() as u64,
            durability: Durability::Never,
            writes: s.writes,
            ..EngineStatus::default()
        })
    }
}

impl LogShipping for MemoryEngine {
    fn durable_lsn(&self) -> Lsn {
        self.last_lsn()
    }

    fn read_log(&self, from: &LogCursor, max_bytes: usize) -> EngineResult<LogRead> {
        Ok(self.with(|s| {
            let start = s.log.partition_point(|e| e.lsn <= from.after);
            let mut bytes = 0;
            let entries: Vec<LogEntry> = s.log[start..]
                .iter()
                .take_while(|e| {
                    let take = bytes == 0 || bytes + e.payload_bytes() <= max_bytes;
                    bytes += e.payload_bytes().max(1);
                    take
                })
                .cloned()
                .collect();
            let next = LogCursor::after(entries.last().map_or(from.after, |e| e.lsn));
            LogRead::Entries { entries, next }
        }))
    }

    fn retain_log_after(&self, _lsn: Option<Lsn>) {}

    fn apply_log(&self, entries: &[LogEntry]) -> EngineResult<Lsn> {
        self.with(|s| {
            let applied = s.last_lsn;
            for e in entries.iter().filter(|e| e.lsn > applied) {
                match e.ops.as_slice() {
                    [op] => check_op(op)?,
                    ops => check_batch(ops)?,
                }
                check_lsn(e.lsn, s.last_lsn, e.ops.len() == 1)?;
                s.commit(e.lsn, e.ops.clone());
            }
            Ok(s.last_lsn)
        })
    }

    fn install_snapshot_page(&self, at: Lsn, ops: &[BatchOp]) -> EngineResult<()> {
        self.with(|s| {
            for op in ops {
                check_op(op)?;
                check_lsn(at, s.last_lsn, true)?;
                s.apply(op);
                s.last_lsn = at;
                // A snapshot replaces history: readers of this engine's log must snapshot too.
                s.log.clear();
            }
            Ok(())
        })
    }

    fn freeze(&self) -> EngineResult<Option<Box<dyn FrozenView>>> {
        let entries: Vec<Entry> = self.with(|s| {
            s.map
                .iter()
                .map(|(key, value)| Entry {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect()
        });
        Ok(Some(Box::new(Copied(entries.into_iter()))))
    }
}

/// This engine's [`FrozenView`]: a copy of its map (the values too: it is for tests).
struct Copied(std::vec::IntoIter<Entry>);

impl FrozenView for Copied {
    fn next_page(&mut self, max: usize) -> EngineResult<Vec<Entry>> {
        Ok(self.0.by_ref().take(max.max(1)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Bound;

    #[test]
    fn put_get_delete_and_lsns_increase() {
        let e = MemoryEngine::new();
        let a = e.put(b"a", b"1").unwrap();
        let b = e.put(b"b", b"").unwrap();
        assert!(b > a);
        assert_eq!(
            e.get(b"b").unwrap(),
            Some(Value::from("")),
            "empty value is present"
        );
        let d = e.delete(b"a").unwrap();
        assert!(d > b);
        assert_eq!(e.get(b"a").unwrap(), None);
        assert!(
            e.delete(b"missing").is_ok(),
            "deleting an absent key succeeds"
        );
        assert_eq!(e.last_lsn(), Lsn(4));
    }

    #[test]
    fn scan_is_ordered_bounded_and_limited() {
        let e = MemoryEngine::new();
        for k in ["d", "a", "c", "b", "e"] {
            e.put(k.as_bytes(), k.as_bytes()).unwrap();
        }
        let got: Vec<_> = e.scan(&KeyRange::inclusive("aa", "d"), 10).unwrap();
        let keys: Vec<_> = got.iter().map(|x| x.key.as_bytes().to_vec()).collect();
        assert_eq!(keys, vec![b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
        let page = e.scan(&KeyRange::all(), 2).unwrap();
        assert_eq!(page.len(), 2);
        let rest = e.scan(&KeyRange::all().after(&page[1].key), 10).unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].key, Key::from("c"));
        let r = KeyRange {
            start: Bound::Excluded(Key::from("a")),
            end: Bound::Excluded(Key::from("c")),
        };
        assert!(r.contains(b"b") && !r.contains(b"a") && !r.contains(b"c"));
    }

    #[test]
    fn batch_applies_in_order_under_one_lsn() {
        let e = MemoryEngine::new();
        let mut b = WriteBatch::new();
        b.put("k", "1").put("k", "2").delete("x").put("y", "3");
        let lsn = e.write_batch(&b).unwrap();
        assert_eq!(lsn, Lsn(1));
        assert_eq!(e.get(b"k").unwrap(), Some(Value::from("2")));
        assert!(matches!(
            e.write_batch(&WriteBatch::new()),
            Err(EngineError::InvalidInput(_))
        ));
    }
}
