//! Golden scripts: each `tests/golden/*.txt` runs commands against an engine on a simulated file system and
//! pins their output, including `dump` (every record: offset, checksum, LSN, timestamp, kind, lengths in
//! hex, key, value). A change to the on-disk format shows up as a reviewed diff of these files. Regenerate
//! with `UPDATE_GOLDENFILES=1 cargo test -p kv-infra-fs --test golden`.
#![allow(clippy::unwrap_used)]

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use goldenscript::Command;
use kv_domain::{Durability, Engine, Key, KeyRange, WriteBatch};
use kv_infra_fs::dump::dump_dir;
use kv_infra_fs::sim::SimFs;
use kv_infra_fs::{Clock, FsEngine, Options};

const DIR: &str = "/data";

struct Runner {
    fs: SimFs,
    engine: Option<FsEngine>,
    segment_bytes: u64,
}

impl Runner {
    fn new() -> Self {
        let mut r = Runner {
            fs: SimFs::new(),
            engine: None,
            segment_bytes: 256,
        };
        r.engine = Some(r.open().unwrap());
        r
    }
    fn open(&self) -> Result<FsEngine, Box<dyn Error>> {
        let opts = Options {
            durability: Durability::Always,
            max_segment_bytes: self.segment_bytes,
            clock: Clock::Fixed(1_700_000_000_000_000),
            fs: Arc::new(self.fs.clone()),
            ..Options::default()
        };
        Ok(FsEngine::open(DIR, opts)?)
    }
    fn engine(&self) -> Result<&FsEngine, Box<dyn Error>> {
        self.engine.as_ref().ok_or_else(|| "engine closed".into())
    }
    fn reopen(&mut self) -> Result<String, Box<dyn Error>> {
        self.engine = None;
        let engine = self.open()?;
        let r = engine.recovery_report();
        let mut out = format!(
            "reopened: {} segments, {} records, last lsn {}\n",
            r.segments,
            r.records,
            engine.last_lsn()
        );
        for note in &r.notes {
            writeln!(out, "recovery: {note}")?;
        }
        self.engine = Some(engine);
        Ok(out)
    }
}

impl goldenscript::Runner for Runner {
    fn run(&mut self, command: &Command) -> Result<String, Box<dyn Error>> {
        let mut out = String::new();
        match command.name.as_str() {
            // put KEY=VALUE...: one write per pair.
            "put" => {
                for arg in &command.args {
                    let key = arg.key.as_deref().ok_or("put takes KEY=VALUE")?;
                    let lsn = self.engine()?.put(key.as_bytes(), arg.value.as_bytes())?;
                    writeln!(out, "put {key} → lsn {lsn}")?;
                }
            }
            // delete KEY...
            "delete" => {
                for arg in &command.args {
                    let lsn = self.engine()?.delete(arg.value.as_bytes())?;
                    writeln!(out, "delete {} → lsn {lsn}", arg.value)?;
                }
            }
            // batch KEY=VALUE... KEY: one atomic batch; a bare KEY is a delete.
            "batch" => {
                let mut b = WriteBatch::new();
                for arg in &command.args {
                    match &arg.key {
                        Some(k) => b.put(k.as_str(), arg.value.as_str()),
                        None => b.delete(arg.value.as_str()),
                    };
                }
                let lsn = self.engine()?.write_batch(&b)?;
                writeln!(out, "batch of {} → lsn {lsn}", b.len())?;
            }
            // get KEY...
            "get" => {
                for arg in &command.args {
                    match self.engine()?.get(arg.value.as_bytes())? {
                        Some(v) => writeln!(out, "{} → {:?}", arg.value, v)?,
                        None => writeln!(out, "{} → absent", arg.value)?,
                    }
                }
            }
            // scan [from=A] [to=B] [limit=N]: inclusive bounds.
            "scan" => {
                let mut args = command.consume_args();
                let bound = |v: Option<&str>| {
                    v.map_or(std::ops::Bound::Unbounded, |k| {
                        std::ops::Bound::Included(Key::from(k))
                    })
                };
                let range = KeyRange {
                    start: bound(args.lookup("from").map(|a| a.value.as_str())),
                    end: bound(args.lookup("to").map(|a| a.value.as_str())),
                };
                let limit = args.lookup_parse("limit")?.unwrap_or(usize::MAX);
                args.reject_rest()?;
                for e in self.engine()?.scan(&range, limit)? {
                    writeln!(out, "{:?} = {:?}", e.key, e.value)?;
                }
            }
            "dump" => out = dump_dir(&self.fs, Path::new(DIR))?,
            "compact" => {
                let s = self.engine()?.compact()?;
                writeln!(
                    out,
                    "compacted {} segments ({} bytes) into {} ({} bytes), {} live records",
                    s.input_segments,
                    s.input_bytes,
                    s.output_segments,
                    s.output_bytes,
                    s.records_copied
                )?;
            }
            "reopen" => out = self.reopen()?,
            // truncate BYTES: cut bytes off the newest segment (a torn write), then reopen.
            "truncate" => {
                let n: usize = command
                    .args
                    .first()
                    .ok_or("truncate BYTES")?
                    .value
                    .parse()?;
                self.engine = None;
                let newest = self
                    .fs
                    .paths()
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                    .max()
                    .ok_or("no segment")?;
                let mut bytes = self.fs.read_file(&newest).ok_or("unreadable")?;
                bytes.truncate(bytes.len().saturating_sub(n));
                self.fs.set_file(&newest, bytes);
                out = self.reopen()?;
            }
            "status" => {
                let s = self.engine()?.status();
                writeln!(
                    out,
                    "last_lsn={} keys={} segments={} disk_bytes={} garbage_bytes={}",
                    s.last_lsn, s.keys, s.segments, s.disk_bytes, s.garbage_bytes
                )?;
            }
            name => return Err(format!("unknown command {name}").into()),
        }
        Ok(out)
    }
}

#[test]
fn golden_scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    scripts.sort();
    assert!(!scripts.is_empty());
    for script in scripts {
        goldenscript::run(&mut Runner::new(), &script)
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    }
}
