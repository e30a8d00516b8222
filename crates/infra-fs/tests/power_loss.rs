//! Simulated power loss at every sync point of many random histories (durability `always`).
//!
//! The simulated file system records a crash image just before and just after every sync (file and
//! directory), tagged with how many writes had been acknowledged. Each image is reopened as is, and again
//! with a random prefix of every file's unsynced bytes kept (a torn write). The reopened store must hold
//! exactly the state after the acknowledged writes, or after those plus the one in flight: no acknowledged
//! write lost, no batch half-visible, and recovery never mistakes a torn write for corruption.
#![allow(clippy::unwrap_used)]

mod common;

use common::{apply_batch, contents, sim_options, Model};
use kv_domain::{Durability, Engine, WriteBatch};
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::FsEngine;
use rand::{Rng, SeedableRng};

const DIR: &str = "/data";
const SEGMENT: u64 = 256;

#[test]
fn no_acknowledged_write_is_lost_at_any_sync_point() {
    let histories = std::env::var("POWER_LOSS_HISTORIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40u64);
    let mut images = 0u64;
    for seed in 0..histories {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let fs = SimFs::new();
        fs.capture_crash_points();
        let engine = FsEngine::open(DIR, sim_options(&fs, Durability::Always, SEGMENT)).unwrap();
        let mut model = Model::new();
        let mut states = vec![model.clone()];
        let ops = rng.gen_range(5..30);
        for i in 0..ops {
            let key = format!("k{}", rng.gen_range(0..8)).into_bytes();
            match rng.gen_range(0..4) {
                0 | 1 => {
                    let value = vec![b'a' + (i % 26) as u8; rng.gen_range(0..90)];
                    engine.put(&key, &value).unwrap();
                    model.insert(key, value);
                }
                2 => {
                    engine.delete(&key).unwrap();
                    model.remove(&key);
                }
                _ => {
                    let mut b = WriteBatch::new();
                    for j in 0..rng.gen_range(1..5) {
                        if rng.gen_bool(0.8) {
                            b.put(
                                format!("k{}", rng.gen_range(0..8)),
                                vec![b'A' + j as u8; rng.gen_range(0..60)],
                            );
                        } else {
                            b.delete(format!("k{}", rng.gen_range(0..8)));
                        }
                    }
                    engine.write_batch(&b).unwrap();
                    apply_batch(&mut model, &b);
                }
            }
            states.push(model.clone());
            fs.mark(i + 1);
        }
        drop(engine);
        for (n, point) in fs.crash_points().iter().enumerate() {
            for torn in [None, Some(seed * 1000 + n as u64)] {
                let crashed = point.materialize(torn);
                let engine =
                    FsEngine::open(DIR, sim_options(&crashed, Durability::Always, SEGMENT))
                        .unwrap_or_else(|e| {
                            panic!(
                                "history {seed}, crash point {n} (torn {torn:?}): open failed: {e}"
                            )
                        });
                let got = contents(&engine);
                let acked = point.mark as usize;
                let ok = got == states[acked] || states.get(acked + 1).is_some_and(|s| *s == got);
                assert!(ok, "history {seed}, crash point {n} (torn {torn:?}): state is neither after {acked} acked writes nor after the one in flight\n got {got:?}\nwant {:?}", states[acked]);
                images += 1;
            }
        }
    }
    assert!(
        images > histories * 10,
        "only {images} crash images checked"
    );
    eprintln!("checked {images} crash images from {histories} histories");
}
