//! Compaction benchmark (`cargo bench -p kv-infra-fs --bench compaction`).
//!
//! Phase 1 (`COMPACTION_BENCH_KEYS`, default 1 000 000 keys of 256-byte values): load, overwrite every key
//! ten times, then compact while one thread reads — space before and after against the live data,
//! compaction throughput, GET latency with and without a compaction running — and open time with and
//! without hint files. Phase 2 (`COMPACTION_BENCH_BIG_KEYS`, default 10 000 000, 0 to skip): load once,
//! compact, then open time with and without hints and RSS per key, each open in a fresh process.

#[path = "common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{arg, machine, percentiles, rss_bytes};
use kv_domain::{Durability, Engine, WriteBatch};
use kv_infra_fs::{FsEngine, Options};

fn open(dir: &Path) -> FsEngine {
    FsEngine::open(
        dir,
        Options {
            durability: Durability::Never,
            auto_compaction: None,
            ..Options::default()
        },
    )
    .expect("open")
}

fn key(i: u64) -> [u8; 16] {
    // Spread keys over the key space (a bijection on u64, printed as 16 hex digits).
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut k = [0u8; 16];
    k.copy_from_slice(format!("{x:016x}").as_bytes());
    k
}

fn load(engine: &FsEngine, n: u64, round: u8) {
    let value = [round; 256];
    let mut i = 0;
    while i < n {
        let mut b = WriteBatch::new();
        for j in i..(i + 1000).min(n) {
            b.put(&key(j)[..], &value[..]);
        }
        engine.write_batch(&b).expect("load");
        i += 1000;
    }
}

fn dir_bytes(dir: &Path, suffix: &str) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// GET latencies (ns) of random existing keys for `secs`, optionally while `during` runs on another thread.
fn read_latency(
    engine: &FsEngine,
    n: u64,
    secs: f64,
    during: Option<&(dyn Fn() + Sync)>,
) -> (Vec<u64>, f64) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let busy = during.map(|f| {
            s.spawn(|| {
                let t = Instant::now();
                f();
                stop.store(true, Ordering::Relaxed);
                t.elapsed().as_secs_f64()
            })
        });
        let mut samples = Vec::with_capacity(1 << 20);
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut i = 0u64;
        while if busy.is_some() {
            !stop.load(Ordering::Relaxed)
        } else {
            Instant::now() < deadline
        } {
            let k = key((i * 7919) % n);
            let t = Instant::now();
            assert!(engine.get(&k).expect("get").is_some());
            samples.push(t.elapsed().as_nanos() as u64);
            i += 1;
        }
        let took = busy.map_or(0.0, |b| b.join().expect("compaction thread"));
        (samples, took)
    })
}

/// Opens `dir` in a fresh process: (seconds, RSS growth per key, segments loaded from hints).
fn open_in_child(dir: &Path) -> (f64, f64, u64) {
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new(exe)
        .arg("--open-child")
        .arg(dir)
        .output()
        .expect("child");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|p| p.parse().unwrap_or(0.0))
        .collect();
    (
        v.first().copied().unwrap_or(0.0),
        v.get(1).copied().unwrap_or(0.0),
        v.get(2).copied().unwrap_or(0.0) as u64,
    )
}

fn remove_hints(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("dir").filter_map(Result::ok) {
        if e.file_name().to_string_lossy().ends_with(".hint") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--open-child") {
        let dir = PathBuf::from(args.get(pos + 1).cloned().unwrap_or_default());
        let rss0 = rss_bytes();
        let t = Instant::now();
        let engine = open(&dir);
        let secs = t.elapsed().as_secs_f64();
        let keys = engine.status().keys.max(1);
        println!(
            "{secs} {} {}",
            rss_bytes().saturating_sub(rss0) as f64 / keys as f64,
            engine.recovery_report().hinted_segments
        );
        return;
    }
    let base =
        PathBuf::from(arg("dir", "BENCH_DIR").unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/bench-data").into()
        }));
    let keep = arg("keep", "COMPACTION_BENCH_KEEP").is_some();
    let n: u64 = arg("keys", "COMPACTION_BENCH_KEYS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let big: u64 = arg("big-keys", "COMPACTION_BENCH_BIG_KEYS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    println!("Machine: {}; data dir {}", machine(), base.display());
    let dir = base.join("compaction");
    let _ = std::fs::remove_dir_all(&dir);
    let engine = open(&dir);
    let t = Instant::now();
    for round in 0..11u8 {
        load(&engine, n, round);
    }
    let live = n * (29 + 16 + 256);
    let before = engine.status().disk_bytes;
    println!("\nLoaded {n} keys and overwrote each 10 times in {:.1} s: {:.0} MB on disk, live data {:.0} MB ({:.1}x)", t.elapsed().as_secs_f64(), before as f64 / 1e6, live as f64 / 1e6, before as f64 / live as f64);
    let (mut quiet, _) = read_latency(&engine, n, 3.0, None);
    let compact = || {
        let s = engine.compact().expect("compact");
        println!(
            "Compaction: {} segments, {:.0} MB in, {:.0} MB out, {} records, {:.1} s",
            s.input_segments,
            s.input_bytes as f64 / 1e6,
            s.output_bytes as f64 / 1e6,
            s.records_copied,
            s.millis as f64 / 1e3
        );
    };
    let (mut busy, took) = read_latency(&engine, n, 0.0, Some(&compact));
    let after = engine.status().disk_bytes;
    println!(
        "Compaction throughput: {:.0} MB/s of input while a reader ran; space after: {:.0} MB = {:.2}x live data",
        before as f64 / 1e6 / took,
        after as f64 / 1e6,
        after as f64 / live as f64
    );
    let (q50, q99, q999, qmax) = percentiles(&mut quiet);
    let (b50, b99, b999, bmax) = percentiles(&mut busy);
    println!("GET latency without compaction: p50 {q50:.1} µs, p99 {q99:.1} µs, p99.9 {q999:.1} µs, max {qmax:.0} µs ({} reads)", quiet.len());
    println!("GET latency during compaction:  p50 {b50:.1} µs, p99 {b99:.1} µs, p99.9 {b999:.1} µs, max {bmax:.0} µs ({} reads)", busy.len());
    drop(engine);
    let (with, rss, hinted) = open_in_child(&dir);
    remove_hints(&dir);
    let (without, _, _) = open_in_child(&dir);
    println!("Open of {n} keys: {with:.2} s with hint files ({hinted} segments hinted), {without:.2} s without; RSS {rss:.0} bytes/key");
    let _ = std::fs::remove_dir_all(&dir);

    if big == 0 {
        return;
    }
    let dir = base.join("compaction-big");
    let _ = std::fs::remove_dir_all(&dir);
    let engine = open(&dir);
    let t = Instant::now();
    load(&engine, big, 1);
    println!(
        "\nLoaded {big} keys in {:.1} s ({:.0} MB of segments)",
        t.elapsed().as_secs_f64(),
        dir_bytes(&dir, ".seg") as f64 / 1e6
    );
    let s = engine.compact().expect("compact");
    println!(
        "Compaction of {} segments ({:.0} MB, nothing to drop): {:.1} s = {:.0} MB/s",
        s.input_segments,
        s.input_bytes as f64 / 1e6,
        s.millis as f64 / 1e3,
        s.input_bytes as f64 / 1e6 / (s.millis as f64 / 1e3).max(1e-3)
    );
    drop(engine);
    let (with, rss, hinted) = open_in_child(&dir);
    if keep {
        println!(
            "kept {} (with hints) for profiling; open took {with:.2} s",
            dir.display()
        );
        return;
    }
    remove_hints(&dir);
    let (without, _, _) = open_in_child(&dir);
    println!("Open of {big} keys: {with:.2} s with hint files ({hinted} segments hinted), {without:.2} s without; RSS {rss:.0} bytes/key");
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
