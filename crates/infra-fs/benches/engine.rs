//! Engine throughput benchmark (`cargo bench -p kv-infra-fs --bench engine`).
//!
//! Prints a Markdown table: put of 256-byte values under random 16-byte keys (1 and 64 writers, each
//! durability mode), get of random existing keys among 1 M (1 and 2 threads), range of 100 keys, batch of
//! 10, open time and RSS per key at 1 M keys, and this disk's `fdatasync` rate with the group-commit limit
//! it implies. Data lives under `BENCH_DIR` (default `target/bench-data`, i.e. the project's disk).
//! `BENCH_KEYS` sets the key count (default 1 000 000); `BENCH_SECS` each put run's length (default 3).

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{arg, machine, percentiles, random_keys, rss_bytes};
use kv_domain::{Durability, Engine, Key, KeyRange, Write, WriteBatch};
use kv_infra_fs::{FsEngine, IndexKind, Options};
use rand::{Rng, SeedableRng};

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn index_kind() -> IndexKind {
    match arg("index", "BENCH_INDEX").as_deref() {
        Some("concurrent-skiplist" | "ConcurrentSkipList") => IndexKind::ConcurrentSkipList,
        Some("locked-skiplist" | "LockedSkipList") => IndexKind::LockedSkipList,
        _ => IndexKind::BTree,
    }
}

fn open(dir: &Path, durability: Durability) -> FsEngine {
    FsEngine::open(
        dir,
        Options {
            durability,
            index: index_kind(),
            ..Options::default()
        },
    )
    .expect("open")
}

/// `fdatasync`s per second of a file on the bench disk, each after a 256-byte append.
fn fdatasync_rate(base: &Path, secs: f64) -> f64 {
    use std::io::Write;
    let path = base.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("create probe");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&[7u8; 256]).expect("write");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    n as f64 / start.elapsed().as_secs_f64()
}

/// Puts from `writers` threads for `secs` seconds; returns ops/s.
fn put_run(base: &Path, durability: Durability, writers: usize, secs: f64) -> (f64, u64) {
    let dir = fresh_dir(base, "put");
    let engine = Arc::new(open(&dir, durability));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let (engine, done) = (engine.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64);
                let value = [0xabu8; 256];
                let mut key = [0u8; 16];
                let mut n = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..64 {
                        rng.fill(&mut key);
                        engine.put(&key, &value).expect("put");
                    }
                    n += 64;
                }
                done.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let fsyncs = engine.status().fsyncs;
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    (done.load(Ordering::Relaxed) as f64 / elapsed, fsyncs)
}

/// Durable puts from `inflight` concurrent async writers for `secs` seconds, through `Engine::submit`: one
/// feeder thread keeps `inflight` writes submitted, each callback tells it one finished (no thread waits
/// per write, as the HTTP server uses it). Returns ops/s, fsyncs and writes.
fn submit_run(base: &Path, inflight: usize, secs: f64) -> (f64, u64, u64) {
    let dir = fresh_dir(base, "submit");
    let engine = open(&dir, Durability::Always);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let value = [0xabu8; 256];
    let submit = |rng: &mut rand::rngs::StdRng| {
        let mut key = [0u8; 16];
        rng.fill(&mut key);
        let tx = tx.clone();
        engine.submit(
            Write::Put {
                key: &key,
                value: &value,
            },
            Box::new(move |r| {
                r.expect("durable put");
                let _ = tx.send(());
            }),
        );
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    for _ in 0..inflight {
        submit(&mut rng);
    }
    let (mut done, mut pending) = (0u64, inflight);
    while pending > 0 {
        rx.recv().expect("a callback");
        let mut finished = 1;
        while rx.try_recv().is_ok() {
            finished += 1;
        }
        done += finished as u64;
        pending -= finished;
        if Instant::now() < deadline {
            for _ in 0..finished {
                submit(&mut rng);
            }
            pending += finished;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let fsyncs = engine.status().fsyncs;
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    (done as f64 / elapsed, fsyncs, done)
}

/// Runs `op` on `threads` threads over `n` iterations each; returns ops/s.
fn parallel(threads: usize, n: usize, op: impl Fn(usize, usize) + Sync) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let op = &op;
            s.spawn(move || (0..n).for_each(|i| op(t, i)));
        }
    });
    (threads * n) as f64 / start.elapsed().as_secs_f64()
}

/// Scans of 100 keys from 20 000 starting points spread over `sorted` (the store's keys, ascending), on one
/// thread; returns scans/s.
fn ranges_of_100(engine: &FsEngine, sorted: &[[u8; 16]]) -> f64 {
    parallel(1, 20_000, |_, i| {
        let start = &sorted[(i * 7919) % (sorted.len() - 200)];
        let got = engine
            .scan(
                &KeyRange {
                    start: std::ops::Bound::Included(Key::from(&start[..])),
                    end: std::ops::Bound::Unbounded,
                },
                100,
            )
            .expect("scan");
        assert_eq!(got.len(), 100);
    })
}

/// Child mode: open `dir` in a fresh process and print "seconds rss-growth-bytes keys".
fn open_child(dir: &Path) {
    let rss_before = rss_bytes();
    let start = Instant::now();
    let engine = open(dir, Durability::Never);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{secs} {} {}",
        rss_bytes().saturating_sub(rss_before),
        engine.status().keys
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--open-child") {
        if let Some(dir) = args.get(pos + 1) {
            open_child(Path::new(dir));
        }
        return;
    }
    let only = arg("only", "BENCH_ONLY").unwrap_or_else(|| "put,read,batch,open".into());
    let wants = |section: &str| only.split(',').any(|s| s.trim() == section);
    let base =
        PathBuf::from(arg("dir", "BENCH_DIR").unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-data").into()
        }));
    std::fs::create_dir_all(&base).expect("bench dir");
    let keys_n: usize = arg("keys", "BENCH_KEYS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let secs: f64 = arg("secs", "BENCH_SECS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    println!(
        "Machine: {}; data dir {}; keydir {:?}",
        machine(),
        base.display(),
        index_kind()
    );
    println!();

    let fsync_rate = fdatasync_rate(&base, 2.0);
    println!("fdatasync rate of this disk: {fsync_rate:.0}/s -> group-commit limit for 64 writers: {:.0} writes/s", fsync_rate * 64.0);
    println!();
    println!("| benchmark | durability | threads | ops/s | fsyncs | notes |");
    println!("|---|---|---|---:|---:|---|");
    let put_modes = if wants("put") {
        vec![
            (Durability::Never, "never"),
            (Durability::Interval { ms: 10 }, "interval 10ms"),
            (Durability::Always, "always"),
        ]
    } else if wants("put-always") {
        vec![(Durability::Always, "always")]
    } else {
        vec![]
    };
    for (durability, name) in put_modes {
        for writers in [1, 64] {
            let (ops, fsyncs) = put_run(&base, durability, writers, secs);
            let note = if durability == Durability::Always && writers == 64 {
                format!(
                    "{:.0}% of the group-commit limit",
                    100.0 * ops / (fsync_rate * 64.0)
                )
            } else if durability == Durability::Always {
                format!("{:.0}% of the fdatasync rate", 100.0 * ops / fsync_rate)
            } else {
                String::new()
            };
            println!("| put 256 B, random 16 B keys | {name} | {writers} | {ops:.0} | {fsyncs} | {note} |");
        }
        if durability == Durability::Always {
            let (ops, fsyncs, writes) = submit_run(&base, 64, secs);
            println!(
                "| put 256 B, random 16 B keys, `submit` | always | 64 async | {ops:.0} | {fsyncs} | {:.0}% of the group-commit limit; {:.1} writes per fdatasync |",
                100.0 * ops / (fsync_rate * 64.0),
                writes as f64 / fsyncs.max(1) as f64
            );
        }
    }

    if !(wants("read") || wants("batch") || wants("open") || wants("freeze")) {
        return;
    }
    // A store of `keys_n` keys for reads, ranges and open time.
    let dir = fresh_dir(&base, "read");
    let keys = random_keys(keys_n, 42);
    {
        let engine = open(&dir, Durability::Never);
        let value = [0x5au8; 256];
        for chunk in keys.chunks(1000) {
            let mut b = WriteBatch::new();
            for k in chunk {
                b.put(&k[..], &value[..]);
            }
            engine.write_batch(&b).expect("load");
        }
        engine.close().expect("close");
    }
    let engine = open(&dir, Durability::Never);
    if wants("freeze") {
        // A snapshot's frozen view copies the keydir's listing while applies wait (a Raft member
        // takes one every CLUSTER_SNAPSHOT_ENTRIES): how long that copy holds them.
        let mut ms: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let view = kv_domain::LogShipping::freeze(&engine)
                    .expect("freeze")
                    .expect("a view (no compaction runs)");
                let took = t.elapsed().as_secs_f64() * 1000.0;
                drop(view);
                took
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "| freeze: a snapshot's view of {keys_n} keys | - | 1 | {:.0} | - | median {:.1} ms, max {:.1} ms (5 views) |",
            1000.0 / ms[2],
            ms[2],
            ms[4]
        );
    }
    for threads in [1, 2] {
        if !wants("read") {
            break;
        }
        let n = 1_000_000 / threads;
        let ops = parallel(threads, n, |t, i| {
            let k = &keys[(i * 7919 + t * 104_729) % keys.len()];
            assert!(engine.get(k).expect("get").is_some());
        });
        println!("| get, random existing key among {keys_n} | - | {threads} | {ops:.0} | - | |");
    }
    let mut sorted: Vec<[u8; 16]> = keys.clone();
    sorted.sort_unstable();
    let ops = if !wants("read") {
        0.0
    } else {
        ranges_of_100(&engine, &sorted)
    };
    println!("| range of 100 keys, random write order | - | 1 | {ops:.0} | - | |");
    if wants("read") {
        // The same keys written in key order: the layout compaction gives its outputs, where neighbours
        // in the keydir are neighbours on disk.
        let sdir = fresh_dir(&base, "sorted");
        let sorted_engine = open(&sdir, Durability::Never);
        let value = [0x5au8; 256];
        for chunk in sorted.chunks(1000) {
            let mut b = WriteBatch::new();
            for k in chunk {
                b.put(&k[..], &value[..]);
            }
            sorted_engine.write_batch(&b).expect("load");
        }
        let ops = ranges_of_100(&sorted_engine, &sorted);
        println!(
            "| range of 100 keys, key write order (compaction's layout) | - | 1 | {ops:.0} | - | |"
        );
        drop(sorted_engine);
        let _ = std::fs::remove_dir_all(&sdir);
    }

    // Read latency while one writer puts flat out (durability never).
    if wants("read") {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (mut samples, puts) = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut n = 0u64;
                let mut rng = rand::rngs::StdRng::seed_from_u64(77);
                while !stop.load(Ordering::Relaxed) {
                    let k = &keys[rng.gen_range(0..keys.len())];
                    engine.put(k, &[0x6bu8; 256]).expect("put");
                    n += 1;
                }
                n
            });
            let mut samples = Vec::with_capacity(1 << 20);
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut i = 0usize;
            while Instant::now() < deadline {
                let k = &keys[(i * 7919) % keys.len()];
                let t = Instant::now();
                assert!(engine.get(k).expect("get").is_some());
                samples.push(t.elapsed().as_nanos() as u64);
                i += 1;
            }
            stop.store(true, Ordering::Relaxed);
            (samples, writer.join().expect("writer"))
        });
        let reads = samples.len() as f64 / secs;
        let (p50, p99, p999, max) = percentiles(&mut samples);
        println!("| get during 1 writer's puts | never | 1+1 | {reads:.0} | - | get p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.1} µs, max {max:.0} µs; {:.0} puts/s |", puts as f64 / secs);
    }
    drop(engine);
    for (durability, name) in [(Durability::Never, "never"), (Durability::Always, "always")] {
        if !wants("batch") {
            break;
        }
        let bdir = fresh_dir(&base, "batch");
        let engine = open(&bdir, durability);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let n = if durability == Durability::Always {
            5_000
        } else {
            100_000
        };
        let ops = parallel(1, n, |_, _| {
            let mut b = WriteBatch::new();
            for _ in 0..10 {
                let k: [u8; 16] = rand::random();
                b.put(&k[..], &[1u8; 256][..]);
            }
            engine.write_batch(&b).expect("batch");
        });
        let _ = rng.gen::<u8>();
        println!("| batch of 10 x 256 B | {name} | 1 | {ops:.0} | - | batches/s |");
        drop(engine);
        let _ = std::fs::remove_dir_all(&bdir);
    }
    if wants("open") {
        // In a fresh process, so the RSS growth is the keydir's alone.
        let exe = std::env::current_exe().expect("exe");
        let out = std::process::Command::new(exe)
            .arg("--open-child")
            .arg(&dir)
            .env("BENCH_INDEX", format!("{:?}", index_kind()))
            .output()
            .expect("open child");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text
            .split_whitespace()
            .map(|p| p.parse::<f64>().unwrap_or(0.0));
        let (secs, rss, keys) = (
            parts.next().unwrap_or(0.0),
            parts.next().unwrap_or(0.0),
            parts.next().unwrap_or(1.0),
        );
        println!();
        println!(
            "Open of {keys:.0} keys (256 B values, {} segments) in a fresh process: {secs:.2} s; RSS growth {:.0} bytes/key (16 of them key bytes)",
            std::fs::read_dir(&dir).map_or(0, |d| d.count()) - 1,
            rss / keys.max(1.0)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
