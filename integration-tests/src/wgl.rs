//! A linearizability checker for one register (one key), after Wing & Gong, with Lowe's memoisation of
//! (linearized set, register value) configurations. For small histories (at most 128 operations per key).
//!
//! An operation may be linearized next when it was invoked before every not-yet-linearized *completed*
//! operation returned. Operations whose outcome is unknown (`complete: None`: a timeout, a dropped
//! connection) may take effect at any point after their invocation, or never. Operations that definitely
//! failed are left out by the caller.

use std::collections::HashSet;

/// What an operation did. A delete is `Write(None)`; a read of an absent key is `Read(None)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set the register (`None`: delete).
    Write(Option<u64>),
    /// Observed this value.
    Read(Option<u64>),
}

/// One operation of a history, with its real-time interval.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// What it did.
    pub op: Op,
    /// When it was invoked (any monotonic clock).
    pub invoke: u128,
    /// When it returned; `None` when the outcome is unknown.
    pub complete: Option<u128>,
}

/// Whether `history` (for one key, starting from `initial`) is linearizable.
pub fn linearizable(history: &[Event], initial: Option<u64>) -> bool {
    assert!(history.len() <= 128, "the checker is for small histories");
    let all_done: u128 = history
        .iter()
        .enumerate()
        .filter(|(_, e)| e.complete.is_some())
        .fold(0, |m, (i, _)| m | (1u128 << i));
    let mut seen = HashSet::new();
    search(history, 0, initial, all_done, &mut seen)
}

fn search(
    h: &[Event],
    done: u128,
    value: Option<u64>,
    must: u128,
    seen: &mut HashSet<(u128, Option<u64>)>,
) -> bool {
    if done & must == must {
        return true;
    }
    if !seen.insert((done, value)) {
        return false;
    }
    // The earliest return among pending completed operations bounds what may go next.
    let horizon = h
        .iter()
        .enumerate()
        .filter(|(i, _)| done & (1 << i) == 0)
        .filter_map(|(_, e)| e.complete)
        .min()
        .unwrap_or(u128::MAX);
    for (i, e) in h.iter().enumerate() {
        if done & (1 << i) != 0 || e.invoke > horizon {
            continue;
        }
        let next = match e.op {
            Op::Write(v) => Some(v),
            Op::Read(v) if v == value => Some(value),
            Op::Read(_) => None,
        };
        if let Some(v) = next {
            if search(h, done | (1 << i), v, must, seen) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: Op, invoke: u128, complete: Option<u128>) -> Event {
        Event {
            op,
            invoke,
            complete,
        }
    }

    #[test]
    fn accepts_linearizable_and_rejects_stale_histories() {
        use Op::*;
        // Sequential write then read.
        assert!(linearizable(
            &[
                ev(Write(Some(1)), 0, Some(1)),
                ev(Read(Some(1)), 2, Some(3))
            ],
            None
        ));
        // A read after a completed write that sees the old value: not linearizable.
        assert!(!linearizable(
            &[ev(Write(Some(1)), 0, Some(1)), ev(Read(None), 2, Some(3))],
            None
        ));
        // A read concurrent with the write may see either value.
        for seen in [None, Some(1)] {
            assert!(linearizable(
                &[ev(Write(Some(1)), 0, Some(10)), ev(Read(seen), 2, Some(3))],
                None
            ));
        }
        // Two reads in sequence may not go back: new value, then old value.
        assert!(!linearizable(
            &[
                ev(Write(Some(1)), 0, Some(100)),
                ev(Read(Some(1)), 2, Some(3)),
                ev(Read(None), 4, Some(5)),
            ],
            None
        ));
        // A write with an unknown outcome may or may not have happened.
        assert!(linearizable(
            &[ev(Write(Some(7)), 0, None), ev(Read(Some(7)), 5, Some(6))],
            None
        ));
        assert!(linearizable(
            &[ev(Write(Some(7)), 0, None), ev(Read(None), 5, Some(6))],
            None
        ));
        // ... but not before it was invoked.
        assert!(!linearizable(
            &[ev(Read(Some(7)), 0, Some(1)), ev(Write(Some(7)), 5, None)],
            None
        ));
        // Deletes.
        assert!(!linearizable(
            &[
                ev(Write(Some(1)), 0, Some(1)),
                ev(Write(None), 2, Some(3)),
                ev(Read(Some(1)), 4, Some(5)),
            ],
            None
        ));
    }
}
