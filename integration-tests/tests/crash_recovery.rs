//! Real process crashes: a child writes from many threads with durability `always` and prints every
//! acknowledged write; the test SIGKILLs it at a random moment, reopens the directory (the dead child's
//! lock must not block), and checks that every acknowledged write is present and every batch is
//! all-or-nothing. The directory is reused across cycles, so each cycle also recovers the torn tails of
//! the previous ones. `CRASH_CYCLES` sets the number of cycles (default 20; `make soak` runs 200).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_domain::{Durability, Engine, KeyRange};
use kv_infra_fs::{FsEngine, Options};
use rand::{Rng, SeedableRng};

fn all_pairs(engine: &FsEngine) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut range = KeyRange::all();
    loop {
        let page = engine.scan(&range, 1000).unwrap();
        let Some(last) = page.last() else { break };
        range = range.after(&last.key);
        out.extend(
            page.into_iter()
                .map(|e| (e.key.into_bytes(), e.value.into_bytes())),
        );
    }
    out
}

#[test]
fn sigkill_during_concurrent_writes_loses_no_acknowledged_write() {
    let cycles: u64 = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    crash_cycles(cycles, false);
}

/// The same while another thread of the child compacts over and over: a kill lands at random points of
/// compactions too. Reopen must hold every acknowledged write and leave no temporary file behind.
#[test]
fn sigkill_during_compaction_loses_nothing_and_leaves_no_leftovers() {
    let cycles: u64 = std::env::var("COMPACTION_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    crash_cycles(cycles, true);
}

fn crash_cycles(cycles: u64, compact: bool) {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xC0FFEE);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked_puts: HashMap<String, String> = HashMap::new();
    let mut acked_batches: Vec<String> = Vec::new();
    let (mut truncated_cycles, mut truncated_bytes) = (0u64, 0u64);
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
            .args([
                dir.path().to_str().unwrap(),
                "16",
                if compact { "16384" } else { "65536" },
                &format!("c{cycle}"),
            ])
            .args(compact.then_some("compact"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert_eq!(
            first.trim_end(),
            "ready",
            "cycle {cycle}: child did not open the store"
        );
        let reader =
            std::thread::spawn(move || stdout.lines().map_while(Result::ok).collect::<Vec<_>>());
        // Let it write for a while, then kill it at a random moment.
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        child.kill().unwrap();
        let alive = started.elapsed();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "cycle {cycle}: the child should have been killed"
        );
        let lines = reader.join().unwrap();
        for line in &lines {
            if let Some(rest) = line.strip_prefix("put ") {
                if let Some((k, v)) = rest.split_once(' ') {
                    acked_puts.insert(k.to_string(), v.to_string());
                }
            } else if let Some(id) = line.strip_prefix("batch ") {
                acked_batches.push(id.to_string());
            }
        }

        let engine = FsEngine::open(
            dir.path(),
            Options {
                durability: Durability::Always,
                max_segment_bytes: 65536,
                ..Options::default()
            },
        )
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen after SIGKILL failed: {e}"));
        let report = engine.recovery_report().clone();
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "cycle {cycle}: temporary files survived reopen: {leftovers:?}"
        );
        assert!(
            !report.notes.iter().any(|n| n.contains("WARNING")),
            "cycle {cycle}: {:?}",
            report.notes
        );
        if report.truncated_bytes > 0 {
            truncated_cycles += 1;
            truncated_bytes += report.truncated_bytes;
        }
        let pairs = all_pairs(&engine);
        for (k, v) in &acked_puts {
            assert_eq!(
                pairs.get(k.as_bytes()).map(|x| x.as_slice()),
                Some(v.as_bytes()),
                "cycle {cycle}: acknowledged put {k} lost"
            );
        }
        for id in &acked_batches {
            for j in 0..3 {
                assert!(
                    pairs.contains_key(format!("b/{id}/{j}").as_bytes()),
                    "cycle {cycle}: acknowledged batch {id} lost member {j}"
                );
            }
        }
        // All-or-nothing for every batch on disk, acknowledged or not.
        let mut members: HashMap<&[u8], usize> = HashMap::new();
        for k in pairs.keys().filter(|k| k.starts_with(b"b/")) {
            let id = &k[2..k.iter().rposition(|&b| b == b'/').unwrap()];
            *members.entry(id).or_default() += 1;
        }
        for (id, n) in members {
            assert_eq!(
                n,
                3,
                "cycle {cycle}: batch {} is half-visible",
                String::from_utf8_lossy(id)
            );
        }
        eprintln!(
            "cycle {cycle}: killed after {alive:?} of writing, {} acked lines, {} keys, cut {} bytes",
            lines.len(),
            pairs.len(),
            report.truncated_bytes
        );
        drop(engine);
    }
    assert!(
        acked_puts.len() as u64 > cycles,
        "the children acknowledged too few writes to prove anything"
    );
    eprintln!(
        "SUMMARY{}: {cycles} SIGKILL cycles, {} acknowledged puts and {} acknowledged batches verified, 0 lost; torn tails cut in {truncated_cycles} cycles ({truncated_bytes} bytes)",
        if compact { " (with compaction running)" } else { "" },
        acked_puts.len(),
        acked_batches.len()
    );
}
