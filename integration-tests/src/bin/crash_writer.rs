//! Child process of the crash tests: many threads write to a data directory with durability `always`
//! and print every acknowledged write on stdout, until they are killed.
//!
//! Usage: `crash_writer DATA_DIR WRITERS SEGMENT_BYTES RUN_ID [compact]` — with `compact`, another thread
//! compacts the store over and over while the writers run.
//!
//! Lines printed (each only after the engine acknowledged the write):
//! - `put KEY VALUE` for a single put;
//! - `batch RUN-THREAD-SEQ` for a batch of three puts `RUN-THREAD-SEQ/0..3`, each with value `RUN-THREAD-SEQ`.

use std::io::Write;
use std::sync::Arc;

use kv_domain::{Durability, Engine, WriteBatch};
use kv_infra_fs::{FsEngine, Options};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(writers), Some(segment), Some(run)) =
        (args.get(1), args.get(2), args.get(3), args.get(4))
    else {
        eprintln!("usage: crash_writer DATA_DIR WRITERS SEGMENT_BYTES RUN_ID");
        std::process::exit(2);
    };
    let writers: usize = writers.parse().unwrap_or(16);
    let segment: u64 = segment.parse().unwrap_or(1 << 16);
    let opts = Options {
        durability: Durability::Always,
        max_segment_bytes: segment,
        ..Options::default()
    };
    let engine = match FsEngine::open(dir, opts) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(3);
        }
    };
    if args.get(5).map(String::as_str) == Some("compact") {
        let engine = engine.clone();
        std::thread::spawn(move || loop {
            if let Err(e) = engine.compact() {
                eprintln!("compaction failed: {e}");
                return;
            }
        });
    }
    println!("ready");
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let engine = engine.clone();
            let run = run.clone();
            std::thread::spawn(move || {
                for seq in 0u64.. {
                    let id = format!("{run}-{t}-{seq}");
                    let line = if seq % 5 == 4 {
                        let mut b = WriteBatch::new();
                        for j in 0..3 {
                            b.put(format!("b/{id}/{j}"), id.as_str());
                        }
                        engine.write_batch(&b).map(|_| format!("batch {id}\n"))
                    } else {
                        // Values of varying size so segments rotate often.
                        let value = format!("{id}:{}", "x".repeat((seq as usize * 37) % 700));
                        engine
                            .put(format!("p/{id}").as_bytes(), value.as_bytes())
                            .map(|_| format!("put p/{id} {value}\n"))
                    };
                    match line {
                        Ok(line) => {
                            let mut out = std::io::stdout().lock();
                            if out
                                .write_all(line.as_bytes())
                                .and_then(|_| out.flush())
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            eprintln!("write failed: {e}");
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
