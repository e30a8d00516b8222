//! Small files replaced whole and atomically: the Raft log's `VOTE` and `PURGED`.
//!
//! Format: the payload, then its CRC32C (4 bytes, little-endian). Written to `<name>.tmp`, fsynced,
//! renamed over `<name>`, then the directory is fsynced (IMPORTANT: in that order), so a crash leaves the
//! old contents or the new ones, never a mix; a file whose checksum fails is reported as corrupt, never
//! read as empty (a vote that silently reverted would let this node vote twice in one term).

use std::path::Path;

use kv_domain::{EngineError, EngineResult};

use crate::codec::Crc;
use crate::vfs::{path_in, FileSystem};

/// Replaces `dir/name` with `payload`, durably.
pub fn store(fs: &dyn FileSystem, dir: &Path, name: &str, payload: &[u8]) -> EngineResult<()> {
    let tmp_name = format!("{name}.tmp");
    let tmp = path_in(dir, &tmp_name);
    let err = |e| EngineError::io(format!("writing {name}"), e);
    match fs.remove(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&Crc::of(payload).0.to_le_bytes());
    let file = fs.create(&tmp).map_err(err)?;
    file.write_all_at(&bytes, 0)
        .and_then(|_| file.sync_data())
        .and_then(|_| fs.rename(&tmp, &path_in(dir, name)))
        .and_then(|_| fs.sync_dir(dir))
        .map_err(err)
}

/// The payload of `dir/name`, `None` if there is no such file.
pub fn load(fs: &dyn FileSystem, dir: &Path, name: &str) -> EngineResult<Option<Vec<u8>>> {
    let file = match fs.open(&path_in(dir, name)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io(format!("opening {name}"), e)),
    };
    let io = |e| EngineError::io(format!("reading {name}"), e);
    let len = file.len().map_err(io)?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io)?;
    let corrupt = |reason: &str| EngineError::Corrupted {
        file: name.into(),
        offset: 0,
        reason: reason.into(),
    };
    if bytes.len() < 4 {
        return Err(corrupt("shorter than its checksum"));
    }
    let (payload, crc) = bytes.split_at(bytes.len() - 4);
    let mut stored = [0u8; 4];
    stored.copy_from_slice(crc);
    if Crc::of(payload).0 != u32::from_le_bytes(stored) {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(Some(payload.to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sim::SimFs;
    use std::path::PathBuf;

    #[test]
    fn round_trips_replaces_and_detects_damage() {
        let fs = SimFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).unwrap();
        assert_eq!(load(&fs, &dir, "VOTE").unwrap(), None);
        store(&fs, &dir, "VOTE", b"term 1").unwrap();
        store(&fs, &dir, "VOTE", b"term 2").unwrap();
        assert_eq!(load(&fs, &dir, "VOTE").unwrap().unwrap(), b"term 2");
        let mut bytes = fs.read_file(&dir.join("VOTE")).unwrap();
        bytes[0] ^= 1;
        fs.set_file(&dir.join("VOTE"), bytes);
        assert!(matches!(
            load(&fs, &dir, "VOTE"),
            Err(EngineError::Corrupted { .. })
        ));
    }

    #[test]
    fn a_crash_at_any_sync_leaves_the_old_or_the_new_contents() {
        let fs = SimFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        store(&fs, &dir, "VOTE", b"old").unwrap();
        fs.capture_crash_points();
        store(&fs, &dir, "VOTE", b"new").unwrap();
        let points = fs.crash_points();
        assert!(!points.is_empty());
        for (i, point) in points.iter().enumerate() {
            for seed in [None, Some(i as u64 + 1)] {
                let after = point.materialize(seed);
                let got = load(&after, &dir, "VOTE").unwrap().unwrap();
                assert!(got == b"old" || got == b"new", "{got:?}");
            }
        }
    }
}
