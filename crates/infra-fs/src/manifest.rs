//! The manifest: `<data dir>/MANIFEST` names every segment file the store consists of, so that a missing
//! file is noticed at open instead of silently serving a different store (a deleted middle segment would
//! bring deleted keys back; a deleted newest one would take LSNs back; a deleted compaction output would
//! lose live keys).
//!
//! ## Format (UTF-8 text, so an operator can read it)
//!
//! ```text
//! MPKVMANIFEST 1
//! 0000000001.seg
//! 0001048576.seg
//! crc32c 1a2b3c4d
//! ```
//!
//! The first line is the magic and format version; then one segment file name per line in ascending id
//! order; the last line is the CRC32C (lower-case hex) of every byte before it. Anything else is
//! corruption. It is replaced atomically: written to `MANIFEST.tmp`, fsynced, renamed over `MANIFEST`,
//! then the directory is fsynced (IMPORTANT: in that order).
//!
//! ## When it changes, and the invariants that follow
//! - A new segment is created durably (header fsynced, directory fsynced) *before* the manifest lists it,
//!   so a listed segment always has a valid header, and a crash in between leaves at most one unlisted
//!   segment, the newest, holding only its header: recovery adopts it.
//! - A compaction output is renamed into place durably before the manifest lists it; a crash in between
//!   leaves an unlisted output below every listed id whose inputs are all still listed: recovery deletes it.
//! - Compaction's inputs leave the manifest before their files are deleted; a crash in between leaves
//!   unlisted files below the newest listed id whose live records were all copied: recovery deletes them.
//! - So at open every listed file must exist, and an unlisted file is explained by one of the three cases
//!   above or the store refuses to open.
//!
//! A store written before the manifest existed has none: recovery then checks that the normal segment ids
//! are consecutive (the only gaps such a store could have are missing files) and writes one. A newer
//! store whose manifest was deleted may have legitimate gaps (compaction keeps segments with nothing to
//! reclaim) and is refused too; `kvctl repair` rebuilds the manifest from the files present.

use std::collections::BTreeSet;
use std::path::Path;

use kv_domain::{EngineError, EngineResult};

use crate::codec::Crc;
use crate::segment::{parse_segment_name, segment_name};
use crate::vfs::{path_in, FileSystem};

/// File name of the manifest.
pub const MANIFEST: &str = "MANIFEST";
/// Its temporary name while being replaced (removed at open).
pub const MANIFEST_TMP: &str = "MANIFEST.tmp";
const MAGIC_LINE: &str = "MPKVMANIFEST 1";

/// Encodes the manifest listing `ids`.
pub fn encode(ids: &BTreeSet<u32>) -> String {
    let mut text = String::with_capacity(16 + ids.len() * 15 + 16);
    text.push_str(MAGIC_LINE);
    text.push('\n');
    for &id in ids {
        text.push_str(&segment_name(id));
        text.push('\n');
    }
    let crc = Crc::of(text.as_bytes());
    text.push_str(&format!("crc32c {:08x}\n", crc.0));
    text
}

/// Decodes a manifest; the error says what is wrong with it.
pub fn decode(text: &str) -> Result<BTreeSet<u32>, String> {
    let body_end = text
        .trim_end_matches('\n')
        .rfind('\n')
        .map(|i| i + 1)
        .ok_or("too short")?;
    let (body, crc_line) = text.split_at(body_end);
    let stored = crc_line
        .trim_end()
        .strip_prefix("crc32c ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("the last line is not a checksum")?;
    Crc(stored)
        .check(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut lines = body.lines();
    if lines.next() != Some(MAGIC_LINE) {
        return Err(format!("the first line is not {MAGIC_LINE:?}"));
    }
    let mut ids = BTreeSet::new();
    for line in lines {
        let id = parse_segment_name(line).ok_or_else(|| format!("not a segment name: {line:?}"))?;
        if !ids.insert(id) {
            return Err(format!("{line} is listed twice"));
        }
    }
    Ok(ids)
}

fn corrupted(reason: String) -> EngineError {
    EngineError::Corrupted {
        file: MANIFEST.into(),
        offset: 0,
        reason,
    }
}

/// The segment ids the manifest of `dir` lists, or `None` if there is no manifest.
pub fn load(fs: &dyn FileSystem, dir: &Path) -> EngineResult<Option<BTreeSet<u32>>> {
    let path = path_in(dir, MANIFEST);
    let file = match fs.open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io(format!("opening {MANIFEST}"), e)),
    };
    let io = |e| EngineError::io(format!("reading {MANIFEST}"), e);
    let len = file.len().map_err(io)?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| corrupted("not UTF-8".into()))?;
    decode(&text).map(Some).map_err(corrupted)
}

/// Replaces the manifest of `dir` with one listing `ids`, atomically and durably.
pub fn store(fs: &dyn FileSystem, dir: &Path, ids: &BTreeSet<u32>) -> EngineResult<()> {
    let tmp = path_in(dir, MANIFEST_TMP);
    let err = |e| EngineError::io(format!("writing {MANIFEST}"), e);
    match fs.remove(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let file = fs.create(&tmp).map_err(err)?;
    // IMPORTANT: contents durable, then the rename, then the directory entry.
    file.write_all_at(encode(ids).as_bytes(), 0)
        .and_then(|_| file.sync_data())
        .and_then(|_| fs.rename(&tmp, &path_in(dir, MANIFEST)))
        .and_then(|_| fs.sync_dir(dir))
        .map_err(err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sim::SimFs;

    #[test]
    fn round_trips_and_detects_damage() {
        let ids: BTreeSet<u32> = [3, 1 << 20, (1 << 20) + 1].into_iter().collect();
        let text = encode(&ids);
        assert_eq!(decode(&text).unwrap(), ids);
        assert_eq!(decode(&encode(&BTreeSet::new())).unwrap(), BTreeSet::new());
        let flipped = text.replacen("0001048576", "0001048577", 1);
        assert!(
            decode(&flipped).unwrap_err().contains("checksum"),
            "{flipped}"
        );
        assert!(decode(&text[..text.len() - 3]).is_err());
        assert!(decode("").is_err());
        let dup = format!("{MAGIC_LINE}\n0000000003.seg\n0000000003.seg\n");
        let dup = format!("{dup}crc32c {:08x}\n", Crc::of(dup.as_bytes()).0);
        assert!(decode(&dup).unwrap_err().contains("twice"));
    }

    #[test]
    fn store_replaces_atomically_and_load_reads_back() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        assert_eq!(load(&fs, dir).unwrap(), None);
        let a: BTreeSet<u32> = [1, 2].into_iter().collect();
        store(&fs, dir, &a).unwrap();
        let b: BTreeSet<u32> = [2, 3].into_iter().collect();
        store(&fs, dir, &b).unwrap();
        assert_eq!(load(&fs, dir).unwrap(), Some(b));
        // Only the durable state survives a crash, and it is the last stored manifest.
        let crashed = fs.crash_image().materialize(None);
        assert_eq!(load(&crashed, dir).unwrap().map(|s| s.len()), Some(2));
        assert!(!fs.paths().iter().any(|p| p.ends_with(MANIFEST_TMP)));
    }
}
