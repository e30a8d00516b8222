//! The [`AppliedLsn`] port on a leader: its applied LSN is the engine's last LSN, and a wait for a higher
//! one wakes when the write path signals a new LSN ([`LsnSignal::advance`], called by every write the
//! server acknowledges), not by polling. A follower's implementation is on
//! [`crate::replication::FollowerNode`], woken by its apply path. A Raft member's is
//! [`ClusterApplied`]: woken by its state machine's applies (which no local write signals on a
//! follower or learner).

use std::time::Duration;

use async_trait::async_trait;
use kv_domain::{AppliedLsn, Engine, Lsn};
use tokio::sync::watch;

/// The latest LSN the write path acknowledged, for waiters to wake on.
#[derive(Debug)]
pub struct LsnSignal(watch::Sender<u64>);

impl Default for LsnSignal {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

impl LsnSignal {
    /// Records that a write was acknowledged at `lsn`, waking the reads waiting for it.
    pub fn advance(&self, lsn: Lsn) {
        self.0.send_if_modified(|l| {
            let grew = lsn.0 > *l;
            *l = (*l).max(lsn.0);
            grew
        });
    }
}

/// A leader's applied LSN: its engine's, with waits woken by the write path's [`LsnSignal`].
#[derive(Clone, Copy)]
pub struct LocalApplied<'a> {
    /// The engine whose last LSN is the applied one.
    pub engine: &'a dyn Engine,
    /// The write path's signal.
    pub signal: &'a LsnSignal,
}

impl std::fmt::Debug for LocalApplied<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalApplied")
            .field("signal", self.signal)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl AppliedLsn for LocalApplied<'_> {
    fn applied(&self) -> Lsn {
        self.engine.last_lsn()
    }

    async fn wait_applied(&self, lsn: Lsn, timeout: Duration) -> Result<(), Lsn> {
        // Subscribed before the first check, so a signal sent in between is not missed. The decision reads
        // the engine: a higher LSN may be in flight on another request, signalled once acknowledged.
        let mut rx = self.signal.0.subscribe();
        let reached = |_: &u64| self.engine.last_lsn() >= lsn;
        let waited = tokio::time::timeout(timeout, rx.wait_for(reached))
            .await
            .is_ok_and(|r| r.is_ok());
        if waited {
            Ok(())
        } else {
            Err(self.engine.last_lsn())
        }
    }
}

/// A Raft member's applied LSN: its engine's, with waits woken as its state machine applies entries.
#[derive(Clone, Copy)]
pub struct ClusterApplied<'a> {
    /// The engine whose last LSN is the applied one.
    pub engine: &'a dyn Engine,
    /// The member.
    pub cluster: &'a crate::cluster::ClusterNode,
}

impl std::fmt::Debug for ClusterApplied<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterApplied").finish_non_exhaustive()
    }
}

#[async_trait]
impl AppliedLsn for ClusterApplied<'_> {
    fn applied(&self) -> Lsn {
        self.engine.last_lsn()
    }

    async fn wait_applied(&self, lsn: Lsn, timeout: Duration) -> Result<(), Lsn> {
        // An LSN is a log index: once the state machine applied that index, the write at it is in the
        // engine (entries without operations, such as membership changes, have no LSN to wait for).
        if self.cluster.raft().wait_applied(lsn.0, timeout).await {
            Ok(())
        } else {
            Err(self.engine.last_lsn())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_domain::MemoryEngine;

    #[tokio::test]
    async fn a_wait_wakes_on_the_signal_not_on_a_timer() {
        let engine = std::sync::Arc::new(MemoryEngine::new());
        let signal = std::sync::Arc::new(LsnSignal::default());
        let (e, s) = (engine.clone(), signal.clone());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let lsn = e.put(b"k", b"v").unwrap();
            // Unsignalled, the waiter must not notice (no poll): give it time to prove it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.advance(lsn);
        });
        let applied = LocalApplied {
            engine: engine.as_ref(),
            signal: &signal,
        };
        let started = std::time::Instant::now();
        applied
            .wait_applied(Lsn(1), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "woke before the signal"
        );
        writer.await.unwrap();
        let err = applied
            .wait_applied(Lsn(2), Duration::from_millis(10))
            .await;
        assert_eq!(err, Err(Lsn(1)));
    }
}
