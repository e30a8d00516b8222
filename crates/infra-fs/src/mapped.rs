//! Read-only memory maps of segment files: the workspace's only `unsafe` code (an audit test,
//! `tests/unsafe_audit.rs`, fails if `unsafe` appears anywhere else).
//!
//! Why: a read through a map is a copy out of the page cache with no system call, which is what lets a
//! `get` and a range read run at memory speed (`docs/benchmarks.md`, goal 7). Reads fall back to `pread`
//! whenever no map exists (the simulated file system, a failed `mmap`, a record past the mapped length).
//!
//! ## Why mapping a segment is sound here
//! `memmap2::Mmap::map` is `unsafe` because a mapped file's bytes can change or disappear under the
//! program while it holds a `&[u8]` of them. The engine rules both out for every byte it reads:
//! 1. **No other writer.** The data directory is locked (`flock`, [`crate::vfs::lock_data_dir`]) for as
//!    long as the engine is open, so no second engine writes its segments.
//! 2. **Bytes read are never rewritten.** Segments are append-only: the engine writes only past the end
//!    of what it wrote before, and reads only locations the keydir published, which were written (and,
//!    in `always` mode, fsynced) before being published. A sealed segment is immutable.
//! 3. **No truncation while open.** The only truncation of a segment (recovery cutting a torn tail) runs
//!    inside `FsEngine::open`, before any read, so before any map exists.
//! 4. **Deletion is harmless.** Compaction retires a segment by unlinking it; the kernel keeps the inode
//!    and its pages for as long as a map of it exists, so a read in flight finishes on the old bytes.
//!
//! A map may be longer than its file (the active segment is mapped at its full reserved size, so it
//! need not be remapped as it grows); pages past the end of the file are never touched, by rule 2.
//!
//! What stays outside the engine's control, as for every store that maps its files (LMDB, ...): another
//! process truncating a segment of a running server makes a read of the cut part fault (`SIGBUS`).
//! `docs/architecture.md` ("Reads through memory maps") says so to operators.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

/// A read-only map of the first `len` bytes of a segment file.
pub struct Mapping {
    map: memmap2::Mmap,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("len", &self.map.len())
            .finish()
    }
}

impl Mapping {
    /// Maps `len` bytes of `file` (which may be longer than the file: see the module doc) read-only.
    pub(crate) fn of(file: &File, len: u64) -> io::Result<Self> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping too long"))?;
        // SAFETY: the file is a segment of a locked data directory, whose bytes the engine never rewrites
        // and never truncates while it is open, and reads only where it wrote (rules 1–3 of the module
        // doc); unlinking it keeps the map valid (rule 4).
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(Self { map })
    }

    /// The bytes `[offset, offset + len)`, or `None` if they lie (partly) past the mapped length, in
    /// which case the caller reads them with `pread`.
    pub fn get(&self, offset: u64, len: u32) -> Option<&[u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len as usize)?;
        self.map.get(start..end)
    }
}
