//! [`FileMetaStore`]: replication metadata in `<data dir>/REPLICATION`.
//!
//! Format: UTF-8 lines `history=<id>` and `snapshot_base=<lsn>` (each optional). Written to
//! `REPLICATION.tmp`, fsynced, renamed over the old file, then the directory is fsynced (IMPORTANT: in
//! that order), so a crash leaves either the old or the new contents, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};

use kv_domain::{EngineError, EngineResult, Lsn, MetaStore, ReplicaMeta};

/// The metadata file of one data directory.
#[derive(Debug, Clone)]
pub struct FileMetaStore {
    dir: PathBuf,
}

const NAME: &str = "REPLICATION";

impl FileMetaStore {
    /// The store in data directory `dir` (created by the engine).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(NAME)
    }
}

fn corrupted(reason: String) -> EngineError {
    EngineError::Corrupted {
        file: NAME.into(),
        offset: 0,
        reason,
    }
}

impl MetaStore for FileMetaStore {
    fn load(&self) -> EngineResult<ReplicaMeta> {
        let text = match std::fs::read_to_string(self.path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ReplicaMeta::default()),
            Err(e) => {
                return Err(EngineError::io(
                    format!("reading {}", self.path().display()),
                    e,
                ))
            }
        };
        let mut meta = ReplicaMeta::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match line.split_once('=') {
                Some(("history", id)) if !id.is_empty() => meta.history = Some(id.to_string()),
                Some(("snapshot_base", n)) => {
                    meta.snapshot_base = Some(Lsn(n
                        .parse()
                        .map_err(|_| corrupted(format!("bad snapshot_base {n:?}")))?))
                }
                _ => return Err(corrupted(format!("unexpected line {line:?}"))),
            }
        }
        Ok(meta)
    }

    fn store(&self, meta: &ReplicaMeta) -> EngineResult<()> {
        let mut text = String::new();
        if let Some(h) = &meta.history {
            text.push_str(&format!("history={h}\n"));
        }
        if let Some(b) = meta.snapshot_base {
            text.push_str(&format!("snapshot_base={}\n", b.0));
        }
        let tmp = self.dir.join(format!("{NAME}.tmp"));
        let io = |what: &str, e| EngineError::io(format!("{what} {}", tmp.display()), e);
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(text.as_bytes()).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        std::fs::rename(&tmp, self.path()).map_err(|e| io("renaming", e))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| EngineError::io(format!("syncing {}", self.dir.display()), e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMetaStore::new(dir.path());
        assert_eq!(store.load().unwrap(), ReplicaMeta::default());
        let meta = ReplicaMeta {
            history: Some("abc123".into()),
            snapshot_base: Some(Lsn(42)),
        };
        store.store(&meta).unwrap();
        assert_eq!(store.load().unwrap(), meta);
        let done = ReplicaMeta {
            snapshot_base: None,
            ..meta
        };
        store.store(&done).unwrap();
        assert_eq!(store.load().unwrap(), done);
        std::fs::write(dir.path().join(NAME), "history=x\nwhat=1\n").unwrap();
        assert!(matches!(store.load(), Err(EngineError::Corrupted { .. })));
    }
}
