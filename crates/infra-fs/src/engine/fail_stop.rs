//! Fail-stop: the first write-path I/O failure poisons the engine (see the module doc of `engine`), and a
//! store opened on a full disk is read-only. Both refuse writes; reads keep working.

use kv_domain::{EngineError, EngineResult};

use super::Inner;

impl Inner {
    /// Fails if the engine was opened read-only (see [`Inner::read_only`]).
    pub(super) fn writable(&self) -> EngineResult<()> {
        match &self.read_only {
            Some(why) => Err(EngineError::DiskFull {
                context: format!("writing (the store opened read-only: {why})"),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn poisoned(&self) -> EngineResult<()> {
        match self.poison.get() {
            Some(reason) => Err(EngineError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Records the first write-path failure; later ones are logged only.
    pub(super) fn poison_with(&self, err: &EngineError) {
        let reason = err.to_string();
        if self.poison.set(reason.clone()).is_ok() {
            tracing::error!("engine poisoned, refusing writes until reopened: {reason}");
        }
    }

    pub(super) fn io_failure(&self, context: String, e: std::io::Error) -> EngineError {
        let err = EngineError::io(context, e);
        self.poison_with(&err);
        err
    }
}
