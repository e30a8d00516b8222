//! The engine's typed errors. One place per edge (HTTP status, CLI exit code) maps these; the variants say
//! what went wrong precisely enough for that mapping.

use std::io;

/// Result alias for engine operations.
pub type EngineResult<T> = Result<T, EngineError>;

/// Everything an [`crate::Engine`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request itself is invalid (empty key, key or value over a limit, ...). Nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Stored bytes failed verification. Names the file and byte offset so an operator can inspect them;
    /// the engine never turns such bytes into a value.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corrupted {
        /// The damaged file.
        file: String,
        /// Byte offset of the first damaged record or header.
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// The disk is full (ENOSPC). The engine is poisoned by it: see [`EngineError::Poisoned`].
    #[error("disk full while {context}")]
    DiskFull {
        /// What the engine was doing.
        context: String,
    },

    /// An I/O error, with what the engine was doing when it happened.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A write or fsync failed earlier, so the engine refuses every write until it is reopened (fail-stop:
    /// after a failed fsync the page cache may no longer match the disk, so retrying could acknowledge a
    /// write that is not durable). Reads keep working.
    #[error("engine is read-only after an earlier I/O failure (reopen to recover): {reason}")]
    Poisoned {
        /// The failure that poisoned the engine.
        reason: String,
    },

    /// The operation cannot run now because a conflicting one is running (e.g. a second compaction).
    #[error("busy: {0}")]
    Busy(String),

    /// Another process (or another engine in this process) holds the data directory's lock.
    #[error("data directory {path} is locked by another process")]
    Locked {
        /// The data directory.
        path: String,
    },
}

impl EngineError {
    /// Wraps an I/O error with context, classifying disk-full separately.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if source.kind() == io::ErrorKind::StorageFull {
            EngineError::DiskFull { context }
        } else {
            EngineError::Io { context, source }
        }
    }
}
