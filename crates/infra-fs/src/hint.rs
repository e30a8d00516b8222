//! Hint files: `<segment>.hint` beside a compaction output lists every record of the segment (key and
//! location) so that opening the store rebuilds the keydir without reading values.
//!
//! ## Format (little-endian)
//!
//! | offset | size | meaning |
//! |---:|---:|---|
//! | 0 | 7 | magic `MPKVHNT` |
//! | 7 | 1 | format version (1) |
//! | 8 | 4 | segment id |
//! | 12 | 8 | length of the segment file the hints describe |
//! | 20 | 4 | number of entries n |
//! | 24 | … | n entries: LSN u64, offset u32, record length u32, key length u32, key |
//! | end − 4 | 4 | CRC32C of every preceding byte |
//!
//! A hint is used only if its checksum, segment id and segment length all match; anything else (missing,
//! truncated, corrupt, stale) falls back to scanning the segment, and recovery says so. Hints are written
//! after their segment is committed (`<id>.hint.tmp`, fsync, rename), so a crash at worst loses a hint.

use std::path::Path;

use kv_domain::{EngineError, EngineResult, Location};

use crate::codec::{u32_field, Crc};
use crate::vfs::{path_in, FileSystem};

const MAGIC: &[u8; 7] = b"MPKVHNT";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 24;

/// The hint file name of segment `id`.
pub fn hint_name(id: u32) -> String {
    format!("{id:010}.hint")
}

/// Encodes hints for segment `id` of `segment_len` bytes.
pub fn encode(id: u32, segment_len: u64, entries: &[(u64, &[u8], Location)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + entries.len() * 32 + 4);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&segment_len.to_le_bytes());
    // Both fit: one entry per record of a segment (under a u32 offset each, records of 29 bytes at
    // least), and keys that passed `kv_domain::check_record`.
    out.extend_from_slice(&u32_field(entries.len()).to_le_bytes());
    for (lsn, key, loc) in entries {
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(&loc.offset.to_le_bytes());
        out.extend_from_slice(&loc.len.to_le_bytes());
        out.extend_from_slice(&u32_field(key.len()).to_le_bytes());
        out.extend_from_slice(key);
    }
    let crc = Crc::of(&out);
    out.extend_from_slice(&crc.0.to_le_bytes());
    out
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("truncated".into());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn u32_of(b: &mut &[u8]) -> Result<u32, String> {
    let mut a = [0u8; 4];
    a.copy_from_slice(take(b, 4)?);
    Ok(u32::from_le_bytes(a))
}

fn u64_of(b: &mut &[u8]) -> Result<u64, String> {
    let mut a = [0u8; 8];
    a.copy_from_slice(take(b, 8)?);
    Ok(u64::from_le_bytes(a))
}

/// Checks the whole file first, then calls `each(lsn, key, location)` for every entry, without allocating:
/// either every entry is delivered or none is.
pub fn for_each(
    bytes: &[u8],
    id: u32,
    segment_len: u64,
    mut each: impl FnMut(u64, &[u8], Location),
) -> Result<usize, String> {
    let n = walk(bytes, id, segment_len, |_, _, _| {})?;
    walk(bytes, id, segment_len, &mut each)?;
    Ok(n)
}

fn walk(
    bytes: &[u8],
    id: u32,
    segment_len: u64,
    mut each: impl FnMut(u64, &[u8], Location),
) -> Result<usize, String> {
    if bytes.len() < HEADER_LEN + 4 {
        return Err("truncated".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    Crc(u32::from_le_bytes(c))
        .check(body)
        .map_err(|e| e.to_string())?;
    let mut b = body;
    if take(&mut b, 7)? != MAGIC || take(&mut b, 1)? != [VERSION] {
        return Err("bad magic or version".into());
    }
    if u32_of(&mut b)? != id {
        return Err("written for another segment".into());
    }
    if u64_of(&mut b)? != segment_len {
        return Err("the segment's length changed since the hints were written".into());
    }
    let n = u32_of(&mut b)? as usize;
    for _ in 0..n {
        let lsn = u64_of(&mut b)?;
        let offset = u32_of(&mut b)?;
        let len = u32_of(&mut b)?;
        let key_len = u32_of(&mut b)? as usize;
        let key = take(&mut b, key_len)?;
        if key.is_empty() || offset as u64 + len as u64 > segment_len {
            return Err("entry outside the segment".into());
        }
        each(
            lsn,
            key,
            Location {
                segment: id,
                offset,
                len,
            },
        );
    }
    if !b.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(n)
}

/// Writes `bytes` as the hint file of segment `id`, durably (temp file, fsync, rename, directory fsync).
pub fn write(fs: &dyn FileSystem, dir: &Path, id: u32, bytes: &[u8]) -> EngineResult<()> {
    let name = hint_name(id);
    let tmp = path_in(dir, &format!("{name}.tmp"));
    let file = fs
        .create(&tmp)
        .map_err(|e| EngineError::io(format!("creating {name}"), e))?;
    file.write_all_at(bytes, 0)
        .and_then(|_| file.sync_data())
        .and_then(|_| fs.rename(&tmp, &path_in(dir, &name)))
        .and_then(|_| fs.sync_dir(dir))
        .map_err(|e| EngineError::io(format!("writing {name}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry: a put record of the segment.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct HintEntry {
        /// The record's LSN.
        lsn: u64,
        /// Its key.
        key: Vec<u8>,
        /// Where it is.
        location: Location,
    }

    /// Decodes and checks hints for segment `id` whose file is `segment_len` bytes long.
    fn decode(bytes: &[u8], id: u32, segment_len: u64) -> Result<Vec<HintEntry>, String> {
        let mut out = Vec::new();
        for_each(bytes, id, segment_len, |lsn, key, location| {
            out.push(HintEntry {
                lsn,
                key: key.to_vec(),
                location,
            })
        })?;
        Ok(out)
    }

    #[test]
    fn round_trips_and_rejects_damage_and_staleness() {
        let loc = |o| Location {
            segment: 7,
            offset: o,
            len: 40,
        };
        let bytes = encode(7, 200, &[(3, b"a", loc(16)), (9, b"bb", loc(56))]);
        let got = decode(&bytes, 7, 200).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[1].lsn, got[1].key.as_slice(), got[1].location),
            (9, &b"bb"[..], loc(56))
        );
        assert!(decode(&bytes, 8, 200).is_err(), "another segment");
        assert!(decode(&bytes, 7, 201).is_err(), "stale length");
        assert!(
            decode(&bytes[..bytes.len() - 1], 7, 200).is_err(),
            "truncated"
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, 7, 200).is_err(), "flip at {i} undetected");
        }
    }
}
