//! The use cases around replication that an adapter runs for a request: a read that needs a minimum LSN
//! waits for it ([`wait_for_lsn`]); a write on a leader is shipped and, under synchronous
//! acknowledgement, confirmed by followers ([`replicate_write`]), whose typed [`WriteOutcome`] the adapter
//! maps to its answer. Both run against the ports of `kv_domain` ([`AppliedLsn`], [`FollowerAcks`]).

use std::time::Duration;

use kv_domain::{AppliedLsn, FollowerAcks, Lsn};

/// A read's minimum LSN was not applied in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("this node has applied up to LSN {applied}; the requested min_lsn {min} was not reached within {} ms", .waited.as_millis())]
pub struct LsnNotReached {
    /// Where this node stood when the wait ended.
    pub applied: Lsn,
    /// The LSN asked for.
    pub min: Lsn,
    /// How long the read waited.
    pub waited: Duration,
}

/// Waits until `node` has applied `min`, at most `wait`. Returns at once when it already has.
pub async fn wait_for_lsn(
    node: &dyn AppliedLsn,
    min: Lsn,
    wait: Duration,
) -> Result<(), LsnNotReached> {
    if node.applied() >= min {
        return Ok(());
    }
    node.wait_applied(min, wait)
        .await
        .map_err(|applied| LsnNotReached {
            applied,
            min,
            waited: wait,
        })
}

/// What became of a write the engine acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed at `lsn`, with every confirmation the policy asks for.
    Committed {
        /// The write's LSN.
        lsn: Lsn,
    },
    /// Committed (durable here) at `lsn`, but only `confirmed` of the `required` followers confirmed it
    /// within `timeout`; replication continues.
    Unconfirmed {
        /// The write's LSN.
        lsn: Lsn,
        /// Followers that confirmed in time.
        confirmed: usize,
        /// Followers the policy asks for.
        required: usize,
        /// How long the write waited.
        timeout: Duration,
    },
}

impl WriteOutcome {
    /// The write's LSN, confirmed or not.
    pub fn lsn(&self) -> Lsn {
        match *self {
            WriteOutcome::Committed { lsn } | WriteOutcome::Unconfirmed { lsn, .. } => lsn,
        }
    }
}

/// After the engine acknowledged a write at `lsn`: on a leader with followers (`acks`), ships it and waits
/// for the confirmations the policy asks for.
pub async fn replicate_write(
    acks: Option<&dyn FollowerAcks>,
    lsn: Lsn,
    payload_bytes: usize,
) -> WriteOutcome {
    let Some(acks) = acks else {
        return WriteOutcome::Committed { lsn };
    };
    acks.record_write(lsn, payload_bytes);
    match acks.wait_acks(lsn).await {
        Ok(()) => WriteOutcome::Committed { lsn },
        Err(confirmed) => {
            let policy = acks.requirement();
            WriteOutcome::Unconfirmed {
                lsn,
                confirmed,
                required: policy.followers,
                timeout: policy.timeout,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use async_trait::async_trait;
    use kv_domain::AckRequirement;
    use std::sync::Mutex;

    /// A node at `now` that reaches `after_wait` if it waits (`None`: it never gets there).
    struct FakeNode {
        now: Lsn,
        after_wait: Option<Lsn>,
        waits: Mutex<Vec<(Lsn, Duration)>>,
    }

    #[async_trait]
    impl AppliedLsn for FakeNode {
        fn applied(&self) -> Lsn {
            self.now
        }
        async fn wait_applied(&self, lsn: Lsn, timeout: Duration) -> Result<(), Lsn> {
            self.waits.lock().unwrap().push((lsn, timeout));
            match self.after_wait {
                Some(reached) if reached >= lsn => Ok(()),
                _ => Err(self.now),
            }
        }
    }

    fn node(now: u64, after_wait: Option<u64>) -> FakeNode {
        FakeNode {
            now: Lsn(now),
            after_wait: after_wait.map(Lsn),
            waits: Mutex::new(Vec::new()),
        }
    }

    #[tokio::test]
    async fn a_read_waits_only_when_the_lsn_is_not_applied_yet() {
        let wait = Duration::from_millis(7);
        let n = node(5, None);
        assert_eq!(wait_for_lsn(&n, Lsn(5), wait).await, Ok(()));
        assert!(n.waits.lock().unwrap().is_empty(), "no wait when applied");
        let n = node(5, Some(9));
        assert_eq!(wait_for_lsn(&n, Lsn(8), wait).await, Ok(()));
        assert_eq!(*n.waits.lock().unwrap(), vec![(Lsn(8), wait)]);
        let n = node(5, Some(7));
        let err = wait_for_lsn(&n, Lsn(8), wait).await.unwrap_err();
        assert_eq!(
            err,
            LsnNotReached {
                applied: Lsn(5),
                min: Lsn(8),
                waited: wait
            }
        );
        assert_eq!(
            err.to_string(),
            "this node has applied up to LSN 5; the requested min_lsn 8 was not reached within 7 ms"
        );
    }

    /// Followers of which `confirming` confirm a write.
    struct FakeAcks {
        confirming: usize,
        required: usize,
        recorded: Mutex<Vec<(Lsn, usize)>>,
    }

    #[async_trait]
    impl FollowerAcks for FakeAcks {
        fn record_write(&self, lsn: Lsn, payload_bytes: usize) {
            self.recorded.lock().unwrap().push((lsn, payload_bytes));
        }
        fn requirement(&self) -> AckRequirement {
            AckRequirement {
                followers: self.required,
                timeout: Duration::from_millis(30),
            }
        }
        async fn wait_acks(&self, _lsn: Lsn) -> Result<(), usize> {
            if self.confirming >= self.required {
                Ok(())
            } else {
                Err(self.confirming)
            }
        }
    }

    fn acks(confirming: usize, required: usize) -> FakeAcks {
        FakeAcks {
            confirming,
            required,
            recorded: Mutex::new(Vec::new()),
        }
    }

    #[tokio::test]
    async fn a_write_is_recorded_for_shipping_and_reports_its_confirmations() {
        assert_eq!(
            replicate_write(None, Lsn(3), 10).await,
            WriteOutcome::Committed { lsn: Lsn(3) }
        );
        let a = acks(2, 2);
        assert_eq!(
            replicate_write(Some(&a), Lsn(4), 10).await,
            WriteOutcome::Committed { lsn: Lsn(4) }
        );
        assert_eq!(*a.recorded.lock().unwrap(), vec![(Lsn(4), 10)]);
        let a = acks(1, 2);
        let outcome = replicate_write(Some(&a), Lsn(5), 3).await;
        assert_eq!(
            outcome,
            WriteOutcome::Unconfirmed {
                lsn: Lsn(5),
                confirmed: 1,
                required: 2,
                timeout: Duration::from_millis(30)
            }
        );
        assert_eq!(outcome.lsn(), Lsn(5));
        assert_eq!(*a.recorded.lock().unwrap(), vec![(Lsn(5), 3)]);
    }
}
