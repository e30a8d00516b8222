//! The use cases.

use std::sync::Arc;

use kv_domain::{
    BatchOp, Consensus, ConsensusError, Engine, EngineError, Entry, Key, KeyRange, Lsn, Value,
    Write, WriteBatch,
};

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
    /// The cluster did not commit the write (or confirm a linearizable read) here.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
}

/// An acknowledged write: its LSN, and in a cluster the term of the leader that committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The write's LSN.
    pub lsn: Lsn,
    /// The committing leader's term (`None` outside a cluster).
    pub term: Option<u64>,
}

/// The store's use cases over any [`Engine`]: a cheap, cloneable handle.
#[derive(Clone)]
pub struct KvService {
    engine: Arc<dyn Engine>,
    limits: Limits,
    /// In a cluster: where writes go (committed by a quorum, then applied to `engine`).
    consensus: Option<Arc<dyn Consensus>>,
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
        Self {
            engine,
            limits,
            consensus: None,
        }
    }

    /// The same use cases in a cluster: writes are proposed to `consensus`, which applies them to the
    /// engine once a quorum committed them; reads stay local (see [`KvService::read_barrier`]).
    pub fn with_consensus(mut self, consensus: Arc<dyn Consensus>) -> Self {
        self.consensus = Some(consensus);
        self
    }

    /// Whether writes go through a cluster's consensus.
    pub fn is_clustered(&self) -> bool {
        self.consensus.is_some()
    }

    /// Makes the next read linearizable: in a cluster, waits until this node applied every write
    /// committed before the call (confirmed by a quorum); alone, every acknowledged write is already
    /// readable. Returns the LSN the read reflects at least.
    pub async fn read_barrier(&self) -> Result<Lsn, AppError> {
        match &self.consensus {
            Some(c) => Ok(c.read_barrier().await?),
            None => Ok(self.engine.last_lsn()),
        }
    }

    /// The engine underneath (for status and sync).
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The synchronous writes go straight to the engine: in a cluster that would bypass consensus.
    fn check_local_write(&self) -> Result<(), AppError> {
        match self.consensus {
            Some(_) => Err(AppError::Consensus(ConsensusError::Unavailable(
                "a synchronous write would bypass the cluster's consensus; use KvService::write"
                    .into(),
            ))),
            None => Ok(()),
        }
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

    /// The service limits a write must pass (the engine then applies its own, see
    /// [`kv_domain::check_batch`]).
    fn check_write(&self, write: &Write<'_>) -> Result<(), AppError> {
        match *write {
            Write::Put { key, value } => {
                self.check_key(key)?;
                self.check_value(key, value)
            }
            Write::Delete { key } => self.check_key(key),
            Write::Batch(batch) => {
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
                Ok(())
            }
        }
    }

    /// Any write ([`KvService::put`], [`KvService::delete`], [`KvService::batch_put`]) for async callers,
    /// with no thread waiting for it: validated, handed to [`Engine::submit`], and awaited on a channel.
    /// `on_ack` runs with the LSN as soon as the engine acknowledges the write, even if this future was
    /// dropped by then (a request that timed out): once submitted, a write completes whatever happens to
    /// its caller, and whoever waits for its LSN must still learn of it. Dropping the future before its
    /// first poll writes nothing.
    pub async fn write(
        &self,
        write: Write<'_>,
        on_ack: impl FnOnce(Lsn) + Send + 'static,
    ) -> Result<Lsn, AppError> {
        Ok(self.write_acked(write, on_ack).await?.lsn)
    }

    /// [`KvService::write`], answering the committing leader's term as well in a cluster. There the
    /// write is proposed to the consensus, which applies it to the engine once committed; `on_ack` runs
    /// once it is applied here.
    pub async fn write_acked(
        &self,
        write: Write<'_>,
        on_ack: impl FnOnce(Lsn) + Send + 'static,
    ) -> Result<Acked, AppError> {
        self.check_write(&write)?;
        if let Some(consensus) = &self.consensus {
            let committed = consensus.propose(ops_of(&write)).await?;
            on_ack(committed.lsn);
            return Ok(Acked {
                lsn: committed.lsn,
                term: Some(committed.term),
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine.submit(
            write,
            Box::new(move |result| {
                if let Ok(lsn) = result {
                    on_ack(lsn);
                }
                // The receiver is gone when the caller gave up; the write stands all the same.
                let _ = tx.send(result);
            }),
        );
        match rx.await {
            Ok(result) => Ok(Acked {
                lsn: result?,
                term: None,
            }),
            Err(_) => Err(AppError::Engine(EngineError::Poisoned {
                reason: "the engine dropped a write without answering it".into(),
            })),
        }
    }

    /// Stores `value` under `key` (overwriting).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Lsn, AppError> {
        self.check_write(&Write::Put { key, value })?;
        self.check_local_write()?;
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
        self.check_write(&Write::Batch(batch))?;
        self.check_local_write()?;
        Ok(self.engine.write_batch(batch)?)
    }

    /// Compacts the store (reclaims the space of overwritten and deleted records).
    pub fn compact(&self) -> Result<kv_domain::CompactionStats, AppError> {
        Ok(self.engine.compact()?)
    }

    /// Deletes `key`; succeeds whether or not it exists.
    pub fn delete(&self, key: &[u8]) -> Result<Lsn, AppError> {
        self.check_write(&Write::Delete { key })?;
        self.check_local_write()?;
        Ok(self.engine.delete(key)?)
    }
}

/// The operations of a write, as a cluster proposes them.
fn ops_of(write: &Write<'_>) -> Vec<BatchOp> {
    match *write {
        Write::Put { key, value } => vec![BatchOp::Put {
            key: Key::from(key),
            value: Value::from(value.to_vec()),
        }],
        Write::Delete { key } => vec![BatchOp::Delete {
            key: Key::from(key),
        }],
        Write::Batch(batch) => batch.ops().to_vec(),
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

    /// A [`MemoryEngine`] whose `submit` applies the write at once but answers only when told to, as an
    /// engine waiting for its group commit does.
    #[derive(Default)]
    struct Deferred {
        inner: MemoryEngine,
        answers: std::sync::Mutex<Vec<(kv_domain::EngineResult<Lsn>, kv_domain::WriteDone)>>,
    }

    impl Deferred {
        fn answer_all(&self) -> usize {
            let answers = std::mem::take(&mut *self.answers.lock().unwrap());
            let n = answers.len();
            answers.into_iter().for_each(|(result, done)| done(result));
            n
        }
    }

    impl Engine for Deferred {
        fn put(&self, key: &[u8], value: &[u8]) -> kv_domain::EngineResult<Lsn> {
            self.inner.put(key, value)
        }
        fn submit(&self, write: Write<'_>, done: kv_domain::WriteDone) {
            let result = match write {
                Write::Put { key, value } => self.inner.put(key, value),
                Write::Delete { key } => self.inner.delete(key),
                Write::Batch(b) => self.inner.write_batch(b),
            };
            self.answers.lock().unwrap().push((result, done));
        }
        fn get(&self, key: &[u8]) -> kv_domain::EngineResult<Option<Value>> {
            self.inner.get(key)
        }
        fn delete(&self, key: &[u8]) -> kv_domain::EngineResult<Lsn> {
            self.inner.delete(key)
        }
        fn write_batch(&self, batch: &WriteBatch) -> kv_domain::EngineResult<Lsn> {
            self.inner.write_batch(batch)
        }
        fn scan(&self, range: &KeyRange, limit: usize) -> kv_domain::EngineResult<Vec<Entry>> {
            self.inner.scan(range, limit)
        }
        fn scan_keys(&self, range: &KeyRange, limit: usize) -> kv_domain::EngineResult<Vec<Key>> {
            self.inner.scan_keys(range, limit)
        }
        fn last_lsn(&self) -> Lsn {
            self.inner.last_lsn()
        }
        fn sync(&self) -> kv_domain::EngineResult<()> {
            self.inner.sync()
        }
        fn status(&self) -> kv_domain::EngineStatus {
            self.inner.status()
        }
        fn compact(&self) -> kv_domain::EngineResult<kv_domain::CompactionStats> {
            self.inner.compact()
        }
    }

    #[tokio::test]
    async fn an_async_write_is_validated_then_answered_when_the_engine_acknowledges() {
        let engine = Arc::new(Deferred::default());
        let s = KvService::new(engine.clone(), small());
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = |acked: &Arc<std::sync::Mutex<Vec<Lsn>>>| {
            let acked = Arc::clone(acked);
            move |lsn| acked.lock().unwrap().push(lsn)
        };
        // Refused by the service limits: nothing reaches the engine.
        let refused = s
            .write(
                Write::Put {
                    key: b"toolong",
                    value: b"v",
                },
                record(&acked),
            )
            .await;
        assert!(matches!(
            refused,
            Err(AppError::KeyTooLarge { len: 7, max: 4 })
        ));
        assert_eq!(engine.answer_all(), 0, "a refused write is never submitted");

        // The caller gives up before the engine answers (a request timeout): the write stands, and the
        // acknowledgement hook still runs when the engine answers.
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            s.write(
                Write::Put {
                    key: b"k",
                    value: b"v",
                },
                record(&acked),
            ),
        )
        .await;
        assert!(gave_up.is_err(), "no answer before the engine acknowledges");
        assert!(acked.lock().unwrap().is_empty());
        assert_eq!(engine.answer_all(), 1);
        assert_eq!(*acked.lock().unwrap(), vec![Lsn(1)]);

        // A caller that waits gets the LSN.
        let waiting = {
            let s = s.clone();
            let hook = record(&acked);
            tokio::spawn(async move { s.write(Write::Delete { key: b"k" }, hook).await })
        };
        while engine.answer_all() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(waiting.await.unwrap().unwrap(), Lsn(2));
        assert_eq!(*acked.lock().unwrap(), vec![Lsn(1), Lsn(2)]);
        assert_eq!(engine.get(b"k").unwrap(), None);
    }

    /// A consensus that commits by applying to a memory engine at growing LSNs, or refuses as told.
    #[derive(Debug)]
    struct FakeConsensus {
        engine: Arc<MemoryEngine>,
        refuse: std::sync::Mutex<Option<ConsensusError>>,
        proposed: std::sync::Mutex<Vec<Vec<BatchOp>>>,
    }

    #[async_trait::async_trait]
    impl Consensus for FakeConsensus {
        async fn propose(&self, ops: Vec<BatchOp>) -> Result<kv_domain::Committed, ConsensusError> {
            if let Some(e) = self.refuse.lock().unwrap().clone() {
                return Err(e);
            }
            self.proposed.lock().unwrap().push(ops.clone());
            let mut batch = WriteBatch::new();
            for op in &ops {
                match op {
                    BatchOp::Put { key, value } => {
                        batch.put(key.as_bytes(), value.as_bytes());
                    }
                    BatchOp::Delete { key } => {
                        batch.delete(key.as_bytes());
                    }
                }
            }
            let lsn = self.engine.write_batch(&batch).unwrap();
            Ok(kv_domain::Committed { lsn, term: 7 })
        }
        async fn read_barrier(&self) -> Result<Lsn, ConsensusError> {
            match self.refuse.lock().unwrap().clone() {
                Some(e) => Err(e),
                None => Ok(self.engine.last_lsn()),
            }
        }
    }

    #[tokio::test]
    async fn in_a_cluster_writes_are_validated_then_proposed_and_answer_the_term() {
        let engine = Arc::new(MemoryEngine::new());
        let consensus = Arc::new(FakeConsensus {
            engine: engine.clone(),
            refuse: std::sync::Mutex::new(None),
            proposed: std::sync::Mutex::new(Vec::new()),
        });
        let s = KvService::new(engine.clone(), small()).with_consensus(consensus.clone());
        assert!(s.is_clustered());
        let refused = s
            .write_acked(
                Write::Put {
                    key: b"toolong",
                    value: b"v",
                },
                |_| {},
            )
            .await;
        assert!(matches!(refused, Err(AppError::KeyTooLarge { .. })));
        assert!(
            consensus.proposed.lock().unwrap().is_empty(),
            "refused before proposing"
        );
        let acked = s
            .write_acked(
                Write::Put {
                    key: b"k",
                    value: b"v",
                },
                |_| {},
            )
            .await
            .unwrap();
        assert_eq!(acked.term, Some(7));
        assert_eq!(engine.get(b"k").unwrap().unwrap().as_bytes(), b"v");
        assert_eq!(s.read_barrier().await.unwrap(), acked.lsn);
        // The synchronous writes would bypass consensus: refused.
        assert!(matches!(s.put(b"k", b"w"), Err(AppError::Consensus(_))));
        *consensus.refuse.lock().unwrap() = Some(ConsensusError::NotLeader {
            leader_id: 2,
            leader_url: "http://b".into(),
        });
        assert!(matches!(
            s.write(Write::Delete { key: b"k" }, |_| {}).await,
            Err(AppError::Consensus(ConsensusError::NotLeader {
                leader_id: 2,
                ..
            }))
        ));
        assert!(matches!(
            s.read_barrier().await,
            Err(AppError::Consensus(_))
        ));
        // Alone, writes answer no term.
        let alone = KvService::new(engine, small());
        let acked = alone
            .write_acked(Write::Delete { key: b"k" }, |_| {})
            .await
            .unwrap();
        assert_eq!(acked.term, None);
    }
}
