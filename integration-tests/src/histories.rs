//! Histories for the linearizability checker ([`crate::wgl`]): client threads writing unique values to,
//! and reading linearizably (`consistency=linearizable`), a few keys through any node of a cluster, while
//! a test injects faults; then a per-key check.
//!
//! How answers enter the history (the API's contract): a write answered 200 completed; a 503 wrote
//! nothing and is left out; a 504 or a broken connection has an unknown outcome (it may take effect at
//! any time after its invocation, or never). A read answered 200 or 404 observed a value (or none);
//! any other read observed nothing and is left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::wgl::{linearizable, Event, Op};
use crate::Client;

/// Microseconds since the first call: the clock of the histories.
fn now() -> u128 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros()
}

/// Client threads under way; [`Histories::finish`] waits for them.
#[derive(Debug)]
pub struct Histories {
    keys: usize,
    prefix: String,
    history: Arc<Mutex<Vec<(usize, Event)>>>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Histories {
    /// Starts `workers` clients, each doing `ops` operations `gap` apart on keys `{prefix}0..{prefix}{keys}`
    /// through the nodes behind `clients` in turn (followers forward to the leader): a third of them
    /// linearizable reads, the rest writes of values unique across the run.
    pub fn start(
        clients: Vec<Client>,
        prefix: &str,
        keys: usize,
        workers: usize,
        ops: usize,
        gap: Duration,
    ) -> Self {
        let history: Arc<Mutex<Vec<(usize, Event)>>> = Arc::default();
        let next_value = Arc::new(AtomicU64::new(1));
        let workers = (0..workers)
            .map(|client| {
                let (clients, history, next_value) =
                    (clients.clone(), history.clone(), next_value.clone());
                let prefix = prefix.to_string();
                std::thread::spawn(move || {
                    for i in 0..ops {
                        // Before the operation: a refused one `continue`s past the end of the body.
                        std::thread::sleep(gap);
                        let key = (client * 7 + i) % keys;
                        let node = clients[(client + i) % clients.len()];
                        let path = format!("/v1/kv/{prefix}{key}");
                        let event = if (client + i) % 3 == 0 {
                            let invoke = now();
                            let answer = node.try_request(
                                "GET",
                                &format!("{path}?consistency=linearizable"),
                                b"",
                            );
                            let seen = match answer {
                                Ok((200, body)) => {
                                    Some(std::str::from_utf8(&body).unwrap().parse().unwrap())
                                }
                                Ok((404, _)) => None,
                                _ => continue,
                            };
                            Event {
                                op: Op::Read(seen),
                                invoke,
                                complete: Some(now()),
                            }
                        } else {
                            let v = next_value.fetch_add(1, Ordering::Relaxed);
                            let invoke = now();
                            let answer = node.try_request("PUT", &path, v.to_string().as_bytes());
                            let complete = match answer {
                                Ok((200, _)) => Some(now()),
                                Ok((503, _)) => continue,
                                _ => None,
                            };
                            Event {
                                op: Op::Write(Some(v)),
                                invoke,
                                complete,
                            }
                        };
                        history.lock().unwrap().push((key, event));
                    }
                })
            })
            .collect();
        Self {
            keys,
            prefix: prefix.to_string(),
            history,
            workers,
        }
    }

    /// Waits for the clients, then panics unless every key's history is linearizable (from an absent
    /// key). Returns (operations, acknowledged writes, writes of unknown outcome).
    pub fn finish(self, context: &str) -> (usize, usize, usize) {
        for w in self.workers {
            w.join().unwrap();
        }
        let history = self.history.lock().unwrap();
        for key in 0..self.keys {
            let events: Vec<Event> = history
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, e)| *e)
                .collect();
            assert!(
                linearizable(&events, None),
                "key {}{key}: not linearizable {context}: {events:?}",
                self.prefix
            );
        }
        let acked = history
            .iter()
            .filter(|(_, e)| matches!(e.op, Op::Write(_)) && e.complete.is_some())
            .count();
        let unknown = history.iter().filter(|(_, e)| e.complete.is_none()).count();
        (history.len(), acked, unknown)
    }
}
