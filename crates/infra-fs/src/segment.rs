//! Segment files: naming, the open-file handle, and the sequential record scanner used by recovery and
//! `dump`.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::codec::{
    decode_record, decode_record_header, DecodeError, Record, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::mapped::Mapping;
use crate::vfs::{FileHandle, FileSystem};

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

/// A segment file. Sealed segments are immutable; the active one only grows, under the writer lock.
///
/// Its descriptor (and its memory map, see [`crate::mapped`]) is opened on demand and may be closed again by
/// the [`FdBudget`] it belongs to, so the number of open descriptors and of maps stays bounded however many
/// segments exist. A reader holds the `Arc` of the handle or map for the duration of one read, so closing
/// never interrupts a read.
pub struct Segment {
    /// Segment id (also in its header and its file name).
    pub id: u32,
    /// File name, for error messages.
    pub name: String,
    path: PathBuf,
    fs: Arc<dyn FileSystem>,
    budget: Arc<FdBudget>,
    handle: Mutex<Option<Open>>,
    last_used: AtomicU64,
    /// The active segment is never closed by the budget.
    pinned: AtomicBool,
}

/// An open segment: its descriptor, and its map once a reader asked for one.
struct Open {
    file: Arc<dyn FileHandle>,
    /// `None` until first asked for; `Some(None)` when the file system has no maps or mapping failed
    /// (readers then `pread`, and mapping is not retried until the segment is reopened).
    map: Option<Option<Arc<Mapping>>>,
}

impl Open {
    fn new(file: Arc<dyn FileHandle>) -> Self {
        Self { file, map: None }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Segment {
    /// A segment at `path`, with its file already open if `handle` is given.
    pub fn new(
        id: u32,
        path: PathBuf,
        fs: Arc<dyn FileSystem>,
        budget: Arc<FdBudget>,
        handle: Option<Arc<dyn FileHandle>>,
    ) -> Arc<Self> {
        let seg = Arc::new(Segment {
            id,
            name: segment_name(id),
            path,
            fs,
            budget: budget.clone(),
            handle: Mutex::new(None),
            last_used: AtomicU64::new(0),
            pinned: AtomicBool::new(false),
        });
        if let Some(h) = handle {
            *seg.handle.lock() = Some(Open::new(h));
            budget.admit(&seg);
        }
        seg
    }

    /// The open file, opening it (and perhaps closing the least recently used other segment) if needed.
    pub fn file(self: &Arc<Self>) -> io::Result<Arc<dyn FileHandle>> {
        self.last_used.store(self.budget.tick(), Ordering::Relaxed);
        if let Some(open) = self.handle.lock().as_ref() {
            return Ok(open.file.clone());
        }
        let h = self.fs.open(&self.path)?;
        *self.handle.lock() = Some(Open::new(h.clone()));
        self.budget.admit(self);
        Ok(h)
    }

    /// A read-only map of the file covering at least `reserve` bytes (the active segment's size limit, so
    /// the map of a growing segment covers what it will hold), mapping it on first use; `None` where the
    /// file system has no maps or mapping failed: the caller then reads with `pread`.
    pub fn mapping(self: &Arc<Self>, reserve: u64) -> io::Result<Option<Arc<Mapping>>> {
        if let Some(Open { map: Some(map), .. }) = self.handle.lock().as_ref() {
            self.last_used.store(self.budget.tick(), Ordering::Relaxed);
            return Ok(map.clone());
        }
        let file = self.file()?;
        let map = match file.len() {
            Ok(len) => match file.map(len.max(reserve)) {
                Ok(map) => map.map(Arc::new),
                Err(e) => {
                    tracing::warn!(segment = %self.name, error = %e, "cannot map segment; reading with pread");
                    None
                }
            },
            Err(e) => return Err(e),
        };
        let mut handle = self.handle.lock();
        match handle.as_mut() {
            // Another reader mapped it meanwhile: keep one map.
            Some(Open {
                map: Some(kept), ..
            }) => return Ok(kept.clone()),
            Some(open) if Arc::ptr_eq(&open.file, &file) => open.map = Some(map.clone()),
            // Closed (or closed and reopened) meanwhile: this map serves this read only.
            _ => {}
        }
        Ok(map)
    }

    /// Keeps this segment's descriptor open whatever the budget (the active segment).
    pub fn pin(&self, pinned: bool) {
        self.pinned.store(pinned, Ordering::Relaxed);
    }

    /// Closes the descriptor now (a retired segment: no descriptor stays on a deleted file).
    pub fn close(&self) {
        self.handle.lock().take();
    }

    fn is_open(&self) -> bool {
        self.handle.lock().is_some()
    }
}

/// Bounds the segment descriptors open at once: when opening one more would exceed `max`, the least recently
/// used unpinned segment is closed. (In-flight reads keep their handle until they finish, so the true count
/// can briefly exceed `max` by the number of concurrent reads.)
#[derive(Debug)]
pub struct FdBudget {
    max: usize,
    clock: AtomicU64,
    open: Mutex<Vec<Weak<Segment>>>,
}

impl FdBudget {
    /// A budget of `max` descriptors (at least 2: the active segment and one more).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(2),
            clock: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        })
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn admit(&self, seg: &Arc<Segment>) {
        let mut open = self.open.lock();
        open.retain(|w| {
            w.upgrade()
                .is_some_and(|s| s.is_open() && !Arc::ptr_eq(&s, seg))
        });
        open.push(Arc::downgrade(seg));
        while open.len() > self.max {
            let victim = open
                .iter()
                .enumerate()
                .filter_map(|(i, w)| w.upgrade().map(|s| (i, s)))
                .filter(|(_, s)| !s.pinned.load(Ordering::Relaxed) && !Arc::ptr_eq(s, seg))
                .min_by_key(|(_, s)| s.last_used.load(Ordering::Relaxed));
            match victim {
                Some((i, s)) => {
                    s.close();
                    open.swap_remove(i);
                }
                None => break,
            }
        }
    }
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
) -> io::Result<Result<(u32, u64), DecodeError>> {
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
