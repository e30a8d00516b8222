//! The use cases.

use std::sync::Arc;

use kv_domain::{BatchOp, Engine, EngineError, Entry, KeyRange, Lsn, Value, WriteBatch};

use crate::Limits;

/// What a use case can fail with. Edges (HTTP, CLI) map these to statuses and exit codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The key was empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// The key exceeded [`Limits::max_key_bytes`].
    #[error("key is {len} bytes; the limit is {max}")]
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value exceeded [`Limits::max_value_bytes`].
    #[error("value of key {key:?} is {len} bytes; the limit is {max}")]
    ValueTooLarge {
        /// The key, lossily printed.
        key: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The batch held more operations than [`Limits::max_batch_ops`].
    #[error("batch has {len} operations; the limit is {max}")]
    BatchTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A range whose start is after its end.
    #[error("range start {start:?} is after its end {end:?}")]
    InvertedRange {
        /// The start, lossily printed.
        start: String,
        /// The end, lossily printed.
        end: String,
    },
    /// The key is absent.
    #[error("key {0:?} not found")]
    NotFound(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The store's use cases over any [`Engine`]: a cheap, cloneable handle.
#[derive(Clone)]
pub struct KvService {
    engine: Arc<dyn Engine>,
    limits: Limits,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

pub(crate) fn lossy(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]).into_owned();
    if bytes.len() > SHOWN {
        s.push('…');
    }
    s
}

impl KvService {
    /// Use cases over `engine` with the given limits.
    pub fn new(engine: Arc<dyn Engine>, limits: Limits) -> Self {
        Self { engine, limits }
    }

    /// The engine underneath (for status and sync).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn check_key(&self, key: &[u8]) -> Result<(), AppError> {
        if key.is_empty() {
            return Err(AppError::EmptyKey);
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(AppError::KeyTooLarge {
                len: key.len(),
                max: self.limits.max_key_bytes,
            });
        }
        Ok(())
    }

    fn check_value(&self, key: &[u8], value: &[u8]) -> Result<(), AppError> {
        if value.len() > self.limits.max_value_bytes {
            return Err(AppError::ValueTooLarge {
                key: lossy(key),
                len: value.len(),
                max: self.limits.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Stores `value` under `key` (overwriting).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Lsn, AppError> {
        self.check_key(key)?;
        self.check_value(key, value)?;
        Ok(self.engine.put(key, value)?)
    }

    /// The value of `key`; [`AppError::NotFound`] when absent.
    pub fn read(&self, key: &[u8]) -> Result<Value, AppError> {
        self.check_key(key)?;
        self.engine
            .get(key)?
            .ok_or_else(|| AppError::NotFound(lossy(key)))
    }

    /// Up to `limit` live entries with `start <= key <= end`, ascending. The bounds need not exist. Memory is
    /// bounded by `limit`; page with [`KvService::read_range_page`].
    pub fn read_range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, AppError> {
        let range = KeyRange::inclusive(start, end);
        crate::pager::check_range(&range)?;
        Ok(self.engine.scan(&range, limit)?)
    }

    /// Up to `limit` entries of `range` (any bounds), ascending: one page of a listing.
    pub fn read_range_page(&self, range: &KeyRange, limit: usize) -> Result<Vec<Entry>, AppError> {
        Ok(self.engine.scan(range, limit)?)
    }

    /// Applies every operation of `batch` atomically. Every key and value is validated first: one invalid
    /// operation rejects the whole batch and nothing is written.
    pub fn batch_put(&self, batch: &WriteBatch) -> Result<Lsn, AppError> {
        if batch.len() > self.limits.max_batch_ops {
            return Err(AppError::BatchTooLarge {
                len: batch.len(),
                max: self.limits.max_batch_ops,
            });
        }
        for op in batch.ops() {
            self.check_key(op.key())?;
            if let BatchOp::Put { key, value } = op {
                self.check_value(key, value)?;
            }
        }
        Ok(self.engine.write_batch(batch)?)
    }

    /// Compacts the store (reclaims the space of overwritten and deleted records).
    pub fn compact(&self) -> Result<kv_domain::CompactionStats, AppError> {
        Ok(self.engine.compact()?)
    }

    /// Deletes `key`; succeeds whether or not it exists.
    pub fn delete(&self, key: &[u8]) -> Result<Lsn, AppError> {
        self.check_key(key)?;
        Ok(self.engine.delete(key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_domain::{Key, MemoryEngine};

    fn service(limits: Limits) -> (KvService, Arc<MemoryEngine>) {
        let engine = Arc::new(MemoryEngine::new());
        (KvService::new(engine.clone(), limits), engine)
    }

    fn small() -> Limits {
        Limits {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_batch_ops: 3,
        }
    }

    #[test]
    fn put_read_delete_round_trip() {
        let (s, _) = service(Limits::default());
        s.put(b"k", b"v").unwrap();
        assert_eq!(s.read(b"k").unwrap(), Value::from("v"));
        s.put(b"k", b"").unwrap();
        assert_eq!(
            s.read(b"k").unwrap(),
            Value::from(""),
            "empty value is distinct from absent"
        );
        s.delete(b"k").unwrap();
        assert!(matches!(s.read(b"k"), Err(AppError::NotFound(_))));
        s.delete(b"k").unwrap();
    }

    #[test]
    fn invalid_input_is_rejected_and_writes_nothing() {
        let (s, e) = service(small());
        assert!(matches!(s.put(b"", b"v"), Err(AppError::EmptyKey)));
        assert!(matches!(
            s.put(b"12345", b"v"),
            Err(AppError::KeyTooLarge { len: 5, max: 4 })
        ));
        assert!(matches!(
            s.put(b"k", b"123456789"),
            Err(AppError::ValueTooLarge { len: 9, .. })
        ));
        assert!(matches!(s.delete(b""), Err(AppError::EmptyKey)));
        assert!(matches!(s.read(b""), Err(AppError::EmptyKey)));
        let mut b = WriteBatch::new();
        b.put("ok", "v").put("toolong", "v");
        assert!(matches!(s.batch_put(&b), Err(AppError::KeyTooLarge { .. })));
        let mut b = WriteBatch::new();
        b.put("a", "1").put("b", "2").put("c", "3").put("d", "4");
        assert!(matches!(
            s.batch_put(&b),
            Err(AppError::BatchTooLarge { len: 4, max: 3 })
        ));
        assert_eq!(e.last_lsn(), Lsn::ZERO, "nothing reached the engine");
        assert_eq!(e.get(b"ok").unwrap(), None);
    }

    #[test]
    fn read_range_is_inclusive_ordered_and_limited() {
        let (s, _) = service(Limits::default());
        for k in ["b", "d", "f", "h"] {
            s.put(k.as_bytes(), b"x").unwrap();
        }
        let keys = |v: Vec<Entry>| v.into_iter().map(|e| e.key).collect::<Vec<_>>();
        assert_eq!(
            keys(s.read_range(b"b", b"f", 10).unwrap()),
            vec![Key::from("b"), Key::from("d"), Key::from("f")]
        );
        assert_eq!(
            keys(s.read_range(b"c", b"g", 10).unwrap()),
            vec![Key::from("d"), Key::from("f")],
            "bounds need not exist"
        );
        assert_eq!(keys(s.read_range(b"a", b"z", 2).unwrap()).len(), 2);
        assert!(matches!(
            s.read_range(b"z", b"a", 10),
            Err(AppError::InvertedRange { .. })
        ));
    }
}
