//! Keydir benchmark (`cargo bench -p kv-infra-fs --bench index`): for each implementation and key count,
//! in a fresh child process so allocator state does not leak between runs:
//! - RAM per key: RSS growth after inserting N random 16-byte keys, minus the 16 key bytes;
//! - lookups/s of random existing keys on one thread;
//! - read latency (p50/p99/p99.9/max) of one reader while one writer overwrites and inserts keys flat out.
//!
//! `INDEX_BENCH_KEYS` lists the key counts (default `1000000,10000000`).

#[path = "common.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{arg, machine, percentiles, random_keys, rss_bytes};
use kv_domain::{Location, OrderedIndex};
use kv_infra_fs::IndexKind;

const KINDS: [(&str, IndexKind); 3] = [
    ("concurrent-skiplist", IndexKind::ConcurrentSkipList),
    ("locked-skiplist", IndexKind::LockedSkipList),
    ("btree-inline", IndexKind::BTree),
];

fn child(kind: IndexKind, name: &str, n: usize) {
    let keys = random_keys(n, 7);
    let extra = random_keys(n / 2, 8);
    let rss0 = rss_bytes();
    let index: Arc<dyn OrderedIndex> = Arc::from(kind.build());
    let start = Instant::now();
    for (i, k) in keys.iter().enumerate() {
        index.insert(
            k,
            Location {
                segment: 1,
                offset: i as u32,
                len: 300,
            },
        );
    }
    let insert_rate = n as f64 / start.elapsed().as_secs_f64();
    let per_key = rss_bytes().saturating_sub(rss0) as f64 / n as f64;

    let lookups = 1_000_000usize;
    let start = Instant::now();
    for i in 0..lookups {
        let k = &keys[(i * 7919) % n];
        std::hint::black_box(index.get(k));
    }
    let get_rate = lookups as f64 / start.elapsed().as_secs_f64();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (index, stop, writes) = (index.clone(), stop.clone(), writes.clone());
        let keys = keys.clone();
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // Alternate overwrites of existing keys with inserts of new ones.
                let k = if i.is_multiple_of(2) {
                    &keys[(i * 31) % keys.len()]
                } else {
                    &extra[(i / 2) % extra.len()]
                };
                index.insert(
                    k,
                    Location {
                        segment: 2,
                        offset: i as u32,
                        len: 300,
                    },
                );
                i += 1;
            }
            writes.store(i as u64, Ordering::Relaxed);
        })
    };
    let mut samples = Vec::with_capacity(2_000_000);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut i = 0usize;
    let mut misses = 0u64;
    while Instant::now() < deadline {
        let k = &keys[(i * 7919) % n];
        let t = Instant::now();
        let found = index.get(k);
        samples.push(t.elapsed().as_nanos() as u64);
        misses += u64::from(found.is_none());
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let (p50, p99, p999, max) = percentiles(&mut samples);
    println!(
        "| {name} | {n} | {per_key:.0} | {:.0} | {insert_rate:.0} | {get_rate:.0} | {p50:.2} | {p99:.2} | {p999:.2} | {max:.0} | {:.0} | {misses} |",
        per_key - 16.0,
        writes.load(Ordering::Relaxed) as f64 / 2.0
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let name = args.get(pos + 1).map_or("", String::as_str);
        let n: usize = args
            .get(pos + 2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        if let Some((name, kind)) = KINDS.iter().find(|(k, _)| *k == name) {
            child(*kind, name, n);
        }
        return;
    }
    let counts: Vec<usize> = arg("keys", "INDEX_BENCH_KEYS")
        .unwrap_or_else(|| "1000000,10000000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    println!("Machine: {}", machine());
    println!();
    println!("| index | keys | RSS bytes/key | beyond 16 key bytes | inserts/s | gets/s (1 thread) | read p50 µs | read p99 µs | read p99.9 µs | read max µs | concurrent writes/s | misses |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().expect("current exe");
    for n in counts {
        for (name, _) in KINDS {
            let out = std::process::Command::new(&exe)
                .args(["--child", name, &n.to_string()])
                .output()
                .expect("child");
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                eprintln!("{name} {n}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}
