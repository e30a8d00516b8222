//! [`InPlaceHint`]: a small value rewritten in place, often, without an fsync: the Raft log's
//! `COMMITTED` (the last log id this node knows committed). Losing it, or reading an older one, must be
//! harmless to whoever uses it: it is a hint, never a record.
//!
//! Format of the file, all of it written by one `pwrite` at offset 0: the payload's length (4 bytes,
//! little-endian), the payload, then the CRC32C of both (4 bytes, little-endian). A longer file keeps
//! older bytes after that, which the length skips. Why no fsync: the file is written at every commit
//! advance, on the path of every write; a process that dies keeps what it wrote (the page cache
//! survives it), and after a power loss the file may be old, torn or empty, which the checksum turns
//! into "no hint" ([`InPlaceHint::open`] never fails on content).

use std::path::Path;
use std::sync::Arc;

use kv_domain::{EngineError, EngineResult};

use crate::codec::Crc;
use crate::vfs::{path_in, FileHandle, FileSystem};

/// Most bytes a hint holds: one write stays within a disk sector.
pub const MAX_HINT_BYTES: usize = 400;

/// An open hint file (see the module doc).
#[derive(Debug)]
pub struct InPlaceHint {
    file: Arc<dyn FileHandle>,
    name: String,
}

impl InPlaceHint {
    /// Opens (creating it if missing) `dir/name` and returns it with the value it holds, `None` when it
    /// is empty, torn or damaged.
    pub fn open(
        fs: &dyn FileSystem,
        dir: &Path,
        name: &str,
    ) -> EngineResult<(Self, Option<Vec<u8>>)> {
        let path = path_in(dir, name);
        let err = |e| EngineError::io(format!("opening {name}"), e);
        let file = match fs.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs.create(&path).map_err(err)?,
            Err(e) => return Err(err(e)),
        };
        let len = file.len().map_err(err)?.min(4 + MAX_HINT_BYTES as u64 + 4) as usize;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, 0).map_err(err)?;
        let value = decode(&bytes);
        Ok((
            Self {
                file,
                name: name.into(),
            },
            value,
        ))
    }

    /// Rewrites the hint with `payload` (at most [`MAX_HINT_BYTES`]), without an fsync.
    pub fn store(&self, payload: &[u8]) -> EngineResult<()> {
        if payload.len() > MAX_HINT_BYTES {
            return Err(EngineError::InvalidInput(format!(
                "{}: a hint of {} bytes, at most {MAX_HINT_BYTES}",
                self.name,
                payload.len()
            )));
        }
        let mut bytes = Vec::with_capacity(payload.len() + 8);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        let crc = Crc::of(&bytes).0;
        bytes.extend_from_slice(&crc.to_le_bytes());
        self.file
            .write_all_at(&bytes, 0)
            .map_err(|e| EngineError::io(format!("writing {}", self.name), e))
    }
}

fn decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_HINT_BYTES {
        return None;
    }
    let body = bytes.get(..4 + len)?;
    let stored = u32::from_le_bytes(bytes.get(4 + len..8 + len)?.try_into().ok()?);
    (Crc::of(body).0 == stored).then(|| body[4..].to_vec())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::sim::SimFs;
    use std::path::PathBuf;

    #[test]
    fn round_trips_shrinks_and_reads_damage_as_no_hint() {
        let fs = SimFs::new();
        let dir = PathBuf::from("/d");
        fs.create_dir_all(&dir).unwrap();
        let (hint, value) = InPlaceHint::open(&fs, &dir, "COMMITTED").unwrap();
        assert_eq!(value, None, "a new file holds no hint");
        hint.store(b"a longer value first").unwrap();
        hint.store(b"short").unwrap();
        drop(hint);
        let (hint, value) = InPlaceHint::open(&fs, &dir, "COMMITTED").unwrap();
        assert_eq!(value.unwrap(), b"short", "the length skips older bytes");
        assert!(hint.store(&[0u8; MAX_HINT_BYTES + 1]).is_err());

        let path = dir.join("COMMITTED");
        let good = fs.read_file(&path).unwrap();
        for i in 0..4 + 5 + 4 {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            fs.set_file(&path, bad);
            let (_, value) = InPlaceHint::open(&fs, &dir, "COMMITTED").unwrap();
            assert_eq!(value, None, "a flipped bit at byte {i}");
        }
        for cut in 0..4 + 5 + 4 {
            fs.set_file(&path, good[..cut].to_vec());
            let (_, value) = InPlaceHint::open(&fs, &dir, "COMMITTED").unwrap();
            assert_eq!(value, None, "cut to {cut} bytes");
        }
    }
}
