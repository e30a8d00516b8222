//! Segment files: naming, the open-file handle, and the sequential record scanner used by recovery and
//! `dump`.

use std::io;
use std::sync::Arc;

use crate::codec::{
    decode_record, decode_record_header, DecodeError, Record, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::vfs::FileHandle;

/// File-name suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Suffix of a compaction output not yet committed (removed at open).
pub const TEMP_SUFFIX: &str = ".seg.tmp";
/// Id of a new store's first segment. New segments count up from it; compaction outputs take fresh ids
/// below the lowest existing one, so they always replay before the newer segments (see `compaction`).
pub const FIRST_SEGMENT_ID: u32 = 1 << 20;

/// The file name of segment `id`: zero-padded so that lexical order is id order.
pub fn segment_name(id: u32) -> String {
    format!("{id:010}{SEGMENT_SUFFIX}")
}

/// The id named by a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// An open segment file. Sealed segments are immutable; the active one only grows, under the writer lock.
#[derive(Debug)]
pub struct Segment {
    /// Segment id (also in its header and its file name).
    pub id: u32,
    /// File name, for error messages.
    pub name: String,
    /// The open file.
    pub file: Arc<dyn FileHandle>,
}

/// How a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte up to the end of the file was a valid record.
    Clean,
    /// The bytes at `offset` are not a valid record.
    Invalid {
        /// Where the first invalid record starts.
        offset: u64,
        /// Why it is invalid.
        error: DecodeError,
    },
}

/// Reads records sequentially from `start` to `end`, in chunks, calling `visit(offset, record)` for each
/// valid one; stops at the first invalid record. `visit` returns `false` to stop early (reported as
/// `Invalid` at that record, with the error it chose).
pub fn scan_records(
    file: &dyn FileHandle,
    start: u64,
    end: u64,
    mut visit: impl FnMut(u64, &Record<'_>) -> Result<(), DecodeError>,
) -> io::Result<ScanEnd> {
    const CHUNK: usize = 1 << 20;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = start;
    let mut pos = start;
    // Makes bytes [pos, pos + need) resident in `buf` if the file has them; returns how many are.
    let fill =
        |buf: &mut Vec<u8>, buf_start: &mut u64, pos: u64, need: usize| -> io::Result<usize> {
            let have_end = *buf_start + buf.len() as u64;
            if pos >= *buf_start && pos + need as u64 <= have_end {
                return Ok(need);
            }
            let available = (end.saturating_sub(pos)) as usize;
            let want = need.max(CHUNK).min(available);
            buf.clear();
            buf.resize(want, 0);
            file.read_exact_at(buf, pos)?;
            *buf_start = pos;
            Ok(want.min(need))
        };
    while pos < end {
        let got = fill(&mut buf, &mut buf_start, pos, RECORD_HEADER_LEN)?;
        let rel = (pos - buf_start) as usize;
        let header = match decode_record_header(buf.get(rel..rel + got).unwrap_or_default()) {
            Ok(h) => h,
            Err(error) => return Ok(ScanEnd::Invalid { offset: pos, error }),
        };
        let len = header.record_len();
        let got = fill(&mut buf, &mut buf_start, pos, len)?;
        let rel = (pos - buf_start) as usize;
        let bytes = buf.get(rel..rel + got).unwrap_or_default();
        let record = match decode_record(bytes) {
            Ok(r) => r,
            Err(error) => return Ok(ScanEnd::Invalid { offset: pos, error }),
        };
        if let Err(error) = visit(pos, &record) {
            return Ok(ScanEnd::Invalid { offset: pos, error });
        }
        pos += len as u64;
    }
    Ok(ScanEnd::Clean)
}

/// Reads and decodes a segment header from `file`.
pub fn read_segment_header(
    file: &dyn FileHandle,
    file_len: u64,
) -> io::Result<Result<u32, DecodeError>> {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    let n = (file_len as usize).min(SEGMENT_HEADER_LEN);
    file.read_exact_at(&mut h[..n], 0)?;
    Ok(crate::codec::decode_segment_header(&h[..n]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_id() {
        assert_eq!(segment_name(42), "0000000042.seg");
        assert_eq!(
            parse_segment_name(&segment_name(4_000_000_000)),
            Some(4_000_000_000)
        );
        assert_eq!(parse_segment_name("0000000042.seg.torn-16"), None);
        assert_eq!(parse_segment_name("42.seg"), None);
        assert!(segment_name(9) < segment_name(10));
    }
}
