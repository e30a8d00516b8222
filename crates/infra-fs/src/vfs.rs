//! The narrow I/O seam. The engine touches files only through [`FileSystem`] and [`FileHandle`], so tests can
//! swap in [`crate::sim::SimFs`] to simulate power loss and inject I/O errors. [`RealFs`] is the production
//! implementation over `std::fs` (positional reads and writes, `fdatasync`, `flock`).

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mapped::Mapping;

/// An open file. Positional I/O only (`pread`/`pwrite`), so one handle serves concurrent readers.
#[expect(
    clippy::len_without_is_empty,
    reason = "a file length is an I/O result, not a collection size"
)]
pub trait FileHandle: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `data` at `offset`.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// A read-only memory map of the first `len` bytes (`len` may exceed the file's length; see
    /// [`crate::mapped`] for when that is sound), or `None` where this file system has no maps (the
    /// simulated one): readers then use [`FileHandle::read_at`].
    fn map(&self, _len: u64) -> io::Result<Option<Mapping>> {
        Ok(None)
    }

    /// Reads exactly `buf.len()` bytes at `offset`, failing with `UnexpectedEof` if the file is shorter.
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, offset) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read")),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A held lock on a data directory; dropping it releases the lock.
pub trait DirLock: Send + Sync + Debug {}

/// A directory tree of files.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the regular files directly in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates a new, empty file for reading and writing; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` if it exists (atomic on POSIX file systems).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes `dir`'s entries (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock of `dir`; `ErrorKind::WouldBlock` when someone else holds it. The lock must be
    /// released by the OS when the holder dies, so a crashed process never leaves a stale lock behind.
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn DirLock>>;
}

/// Takes the lock of data directory `dir`: [`kv_domain::EngineError::Locked`] when another process (or
/// engine) holds it.
pub fn lock_data_dir(fs: &dyn FileSystem, dir: &Path) -> kv_domain::EngineResult<Box<dyn DirLock>> {
    fs.lock_dir(dir).map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            kv_domain::EngineError::Locked {
                path: dir.display().to_string(),
            }
        } else {
            kv_domain::EngineError::io(format!("locking {}", dir.display()), e)
        }
    })
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(File);

impl FileHandle for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(data, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn map(&self, len: u64) -> io::Result<Option<Mapping>> {
        Mapping::of(&self.0, len).map(Some)
    }
}

/// `flock(LOCK_EX)` on `<dir>/LOCK`, held for as long as the file stays open; the kernel drops it when the
/// process dies, so `kill -9` leaves no stale lock.
#[derive(Debug)]
struct RealLock {
    _file: File,
}
impl DirLock for RealLock {}

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile(f)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn DirLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(RealLock { _file: file })),
            Err(TryLockError::WouldBlock) => {
                Err(io::Error::new(io::ErrorKind::WouldBlock, "locked"))
            }
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Joins a directory and a file name (kept here so every path the engine builds goes through one place).
pub(crate) fn path_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
