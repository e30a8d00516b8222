//! The leader's history bootstrap: a leader serves one replication history, named by an id kept in the
//! replication metadata ([`MetaStore`]). A data directory that never had one gets a new id at its first
//! start as leader, so followers of any other history refuse this leader (see [`crate::Replica`]). A
//! directory holding an unfinished snapshot from a leader cannot lead: its contents are a mix.

use kv_domain::{EngineError, MetaStore};

/// Why a data directory cannot start as leader.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The metadata could not be read.
    #[error("reading replication metadata: {0}")]
    Load(#[source] EngineError),
    /// The directory holds a half-installed snapshot.
    #[error("this data directory holds an unfinished snapshot from a leader; it cannot lead (finish the sync as a follower first)")]
    UnfinishedSnapshot,
    /// A new history id could not be stored.
    #[error("writing replication metadata: {0}")]
    Store(#[source] EngineError),
}

/// The history a leader serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderHistory {
    /// Its id.
    pub id: String,
    /// It was created now (the directory had none).
    pub created: bool,
}

/// The history this data directory leads: the stored one, or a new one from `new_id` (stored before it is
/// returned, so a crash cannot hand out two ids for one directory's data).
pub fn leader_history(
    store: &dyn MetaStore,
    new_id: impl FnOnce() -> String,
) -> Result<LeaderHistory, HistoryError> {
    let mut meta = store.load().map_err(HistoryError::Load)?;
    if meta.snapshot_base.is_some() {
        return Err(HistoryError::UnfinishedSnapshot);
    }
    if let Some(id) = &meta.history {
        return Ok(LeaderHistory {
            id: id.clone(),
            created: false,
        });
    }
    let id = new_id();
    meta.history = Some(id.clone());
    store.store(&meta).map_err(HistoryError::Store)?;
    Ok(LeaderHistory { id, created: true })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::MemoryMetaStore;
    use kv_domain::{Lsn, ReplicaMeta};

    #[test]
    fn a_new_directory_gets_a_stored_history_and_keeps_it() {
        let store = MemoryMetaStore::default();
        let first = leader_history(&store, || "h1".into()).unwrap();
        assert_eq!(
            first,
            LeaderHistory {
                id: "h1".into(),
                created: true
            }
        );
        assert_eq!(store.load().unwrap().history.as_deref(), Some("h1"));
        let again =
            leader_history(&store, || panic!("no new id for a directory with one")).unwrap();
        assert_eq!(
            again,
            LeaderHistory {
                id: "h1".into(),
                created: false
            }
        );
    }

    #[test]
    fn an_unfinished_snapshot_cannot_lead() {
        let store = MemoryMetaStore::default();
        store
            .store(&ReplicaMeta {
                history: Some("h".into()),
                snapshot_base: Some(Lsn(3)),
            })
            .unwrap();
        let err = leader_history(&store, || "new".into()).unwrap_err();
        assert!(matches!(err, HistoryError::UnfinishedSnapshot), "{err}");
        assert_eq!(
            store.load().unwrap().history.as_deref(),
            Some("h"),
            "nothing written"
        );
    }

    /// A store whose writes fail.
    struct ReadOnly;
    impl MetaStore for ReadOnly {
        fn load(&self) -> kv_domain::EngineResult<ReplicaMeta> {
            Ok(ReplicaMeta::default())
        }
        fn store(&self, _: &ReplicaMeta) -> kv_domain::EngineResult<()> {
            Err(EngineError::InvalidInput("read-only".into()))
        }
    }

    #[test]
    fn a_history_that_cannot_be_stored_is_not_used() {
        let err = leader_history(&ReadOnly, || "h".into()).unwrap_err();
        assert!(matches!(err, HistoryError::Store(_)));
        assert!(
            err.to_string()
                .starts_with("writing replication metadata: "),
            "{err}"
        );
    }
}
