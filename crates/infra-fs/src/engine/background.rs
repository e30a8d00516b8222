//! Background threads: the interval syncer (`interval` mode) and the automatic compactor. Each holds only
//! a weak reference to the engine, so neither keeps it alive; [`FsEngine`](super::FsEngine) stops them
//! on close and on drop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use kv_domain::Durability;

use super::{compaction, Inner};

/// A running background thread and its stop flag.
pub(super) type Task = (Arc<AtomicBool>, JoinHandle<()>);

/// Starts the threads the options ask for.
pub(super) fn start(inner: &Arc<Inner>) -> Vec<Task> {
    let mut tasks = Vec::new();
    if let Durability::Interval { ms } = inner.opts.durability {
        tasks.extend(spawn_background(
            "kv-interval-sync",
            Arc::downgrade(inner),
            Duration::from_millis(ms.max(1)),
            interval_sync,
        ));
    }
    if let Some(auto) = inner.opts.auto_compaction {
        tasks.extend(spawn_background(
            "kv-compactor",
            Arc::downgrade(inner),
            auto.check_every,
            move |inner| {
                inner.compactor_ticks.fetch_add(1, Ordering::Relaxed);
                let garbage = inner.garbage_bytes.load(Ordering::Relaxed);
                let disk = inner.disk_bytes.load(Ordering::Relaxed).max(1);
                if inner.poison.get().is_none()
                    && inner.read_only.is_none()
                    && garbage >= auto.min_garbage_bytes
                    && garbage as f64 / disk as f64 >= auto.garbage_ratio
                {
                    tracing::info!(garbage, disk, "garbage over the threshold: compacting");
                    match compaction::compact(inner, false) {
                        Ok(_) => {}
                        // Tried again at the next tick.
                        Err(kv_domain::EngineError::Busy(why)) => {
                            tracing::info!("automatic compaction deferred: {why}")
                        }
                        Err(e) => tracing::warn!("automatic compaction failed: {e}"),
                    }
                }
            },
        ));
    }
    tasks
}

/// One tick of the interval syncer: makes everything written so far durable.
fn interval_sync(inner: &Inner) {
    if inner.poison.get().is_none() {
        // A failure poisons the engine and is reported to writers; nothing to do here.
        let _ = inner.sync_all();
    }
}

/// Runs `task` every `every` on a named thread until the engine is dropped. The thread holds only a weak
/// reference, so it never keeps the engine alive.
fn spawn_background(
    name: &str,
    inner: Weak<Inner>,
    every: Duration,
    task: impl Fn(&Inner) + Send + 'static,
) -> Option<Task> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while !flag.load(Ordering::Acquire) {
                std::thread::park_timeout(every);
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let Some(inner) = inner.upgrade() else { return };
                task(&inner);
            }
        });
    match spawned {
        Ok(handle) => Some((stop, handle)),
        Err(e) => {
            tracing::error!("cannot start the {name} thread: {e}");
            None
        }
    }
}
