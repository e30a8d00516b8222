//! `kvctl repair --data-dir DIR`: salvage a store that refuses to open (see `kv_infra_fs::repair`), then
//! open it once to prove it opens, and report what was lost.

use std::io::Write;
use std::path::Path;

use kv_domain::Engine;
use kv_infra_fs::repair::{repair, Lost, RepairReport};
use kv_infra_fs::{FsEngine, Options};

use crate::error::CliError;

/// Repairs `dir` and prints the report (JSON with `json`).
pub fn run(dir: Option<&Path>, json: bool) -> Result<(), CliError> {
    let dir = dir.ok_or_else(|| {
        CliError::usage(
            "repair works offline on a data directory: stop the server and give --data-dir",
        )
    })?;
    if !dir.is_dir() {
        return Err(CliError::usage(format!(
            "data directory {} does not exist",
            dir.display()
        )));
    }
    let report = repair(dir, &Options::default())?;
    // The proof: the repaired store opens (recovery's strict checks all pass).
    let engine = FsEngine::open(dir, Options::default())?;
    let status = engine.status();
    engine.close()?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            report_json(&report, status.keys, status.last_lsn.0)
        )?;
    } else {
        write!(out, "{report}")?;
        writeln!(
            out,
            "the store opens: {} keys, last LSN {}",
            status.keys, status.last_lsn.0
        )?;
    }
    Ok(())
}

fn lost_json(lost: &Lost) -> serde_json::Value {
    match lost {
        Lost::Lsns { first, last } => serde_json::json!({ "first_lsn": first, "last_lsn": last }),
        Lost::Keys { after, before } => serde_json::json!({
            "after_key": after.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "before_key": before.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        }),
        Lost::Nothing => serde_json::json!({}),
    }
}

fn report_json(r: &RepairReport, keys: u64, last_lsn: u64) -> serde_json::Value {
    serde_json::json!({
        "clean": r.is_clean(),
        "salvaged": r.salvaged.iter().map(|s| serde_json::json!({
            "file": s.file,
            "original_saved_to": s.original_saved_to,
            "records_kept": s.records_kept,
            "damage": s.damage.iter().map(|d| serde_json::json!({
                "offset": d.offset,
                "bytes": d.bytes,
                "records_dropped": d.records_dropped,
                "lost": lost_json(&d.lost),
                "summary": d.lost.to_string(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "missing": r.missing.iter().map(|m| serde_json::json!({
            "file": m.file, "lost": lost_json(&m.lost), "summary": m.lost.to_string(),
        })).collect::<Vec<_>>(),
        "set_aside": r.set_aside,
        "hints_rebuilt": r.hints_rebuilt,
        "manifest_rebuilt": r.manifest_rebuilt,
        "keys": keys,
        "last_lsn": last_lsn,
    })
}
