//! A simulated file system for crash and fault tests (redb's "live and durable image" technique).
//!
//! Every file has a *live* image (what reads see) and a *durable* image (what survives power loss); only
//! `sync_data` copies live to durable. Directory entries work the same way: a created, removed or renamed
//! file changes the live directory, and only `sync_dir` of its parent makes that durable. A crash image
//! ([`SimFs::crash_image`]) keeps exactly the durable state, optionally plus a random prefix of each file's
//! unsynced bytes (a torn write), and opens as a fresh file system.
//!
//! Faults ([`Faults`]) fail chosen syncs with EIO or writes with ENOSPC. With [`SimFs::capture_crash_points`]
//! the file system records a crash image just before and just after every sync, tagged with the test's
//! [`SimFs::mark`] (how many operations had been acknowledged), so one history checks every sync point.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::vfs::{DirLock, FileHandle, FileSystem};

/// Faults to inject. Syncs (file and directory) are numbered from 1 in the order they happen.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Exactly this sync fails with EIO (later ones succeed again: fail-stop must not depend on that).
    pub fail_sync_number: Option<u64>,
    /// Every sync after this many fails with EIO and persists nothing: the machine lost power then.
    pub dead_after_syncs: Option<u64>,
    /// Writes fail with ENOSPC once this many bytes have been written in total.
    pub disk_bytes: Option<u64>,
}

#[derive(Debug, Default, Clone)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
}

/// What a crash at one sync point leaves: per durable directory entry, the durable and live bytes.
#[derive(Debug, Clone)]
pub struct CrashPoint {
    /// The test's mark (operations acknowledged) when the image was taken.
    pub mark: u64,
    /// Path -> (durable bytes, live bytes).
    files: BTreeMap<PathBuf, (Vec<u8>, Vec<u8>)>,
}

impl CrashPoint {
    /// A file system holding this crash image. With `torn_seed`, each file also keeps a pseudo-random prefix
    /// of the bytes it had written but not synced (when the live image extends the durable one).
    pub fn materialize(&self, torn_seed: Option<u64>) -> SimFs {
        let fs = SimFs::new();
        {
            let mut st = fs.state.lock();
            let mut rng = torn_seed.unwrap_or(0) | 1;
            for (path, (durable, live)) in &self.files {
                let mut bytes = durable.clone();
                if torn_seed.is_some() && live.len() > durable.len() && live.starts_with(durable) {
                    // xorshift: deterministic per seed, no dependency.
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let extra = (rng % (live.len() - durable.len() + 1) as u64) as usize;
                    bytes.extend_from_slice(&live[durable.len()..durable.len() + extra]);
                }
                let ino = st.inodes.len();
                st.inodes.push(Inode {
                    live: bytes.clone(),
                    durable: bytes,
                });
                st.live_dir.insert(path.clone(), ino);
                st.durable_dir.insert(path.clone(), ino);
            }
        }
        fs
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: Vec<Inode>,
    live_dir: BTreeMap<PathBuf, usize>,
    durable_dir: BTreeMap<PathBuf, usize>,
    locks: HashSet<PathBuf>,
    faults: Faults,
    syncs: u64,
    bytes_written: u64,
    capture: bool,
    mark: u64,
    crash_points: Vec<CrashPoint>,
}

impl State {
    fn snapshot(&self) -> CrashPoint {
        let files = self
            .durable_dir
            .iter()
            .filter_map(|(p, &ino)| {
                self.inodes
                    .get(ino)
                    .map(|i| (p.clone(), (i.durable.clone(), i.live.clone())))
            })
            .collect();
        CrashPoint {
            mark: self.mark,
            files,
        }
    }

    /// Counts a sync and decides whether it fails; captures crash points around it.
    fn begin_sync(&mut self) -> io::Result<()> {
        self.syncs += 1;
        let n = self.syncs;
        if self.faults.dead_after_syncs.is_some_and(|d| n > d)
            || self.faults.fail_sync_number == Some(n)
        {
            return Err(io::Error::other(format!("injected EIO on sync #{n}")));
        }
        if self.capture {
            let cp = self.snapshot();
            self.crash_points.push(cp);
        }
        Ok(())
    }

    fn end_sync(&mut self) {
        if self.capture {
            let cp = self.snapshot();
            self.crash_points.push(cp);
        }
    }
}

/// The simulated file system: cheap to clone, every clone sees the same files.
#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

impl SimFs {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }
    /// Replaces the injected faults (sync and byte counters keep running).
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }
    /// Syncs made so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }
    /// Starts recording a crash image around every sync.
    pub fn capture_crash_points(&self) {
        self.state.lock().capture = true;
    }
    /// Records, for later crash images, that `acknowledged` operations have completed.
    pub fn mark(&self, acknowledged: u64) {
        self.state.lock().mark = acknowledged;
    }
    /// The crash images recorded so far.
    pub fn crash_points(&self) -> Vec<CrashPoint> {
        self.state.lock().crash_points.clone()
    }
    /// What a power loss right now would leave.
    pub fn crash_image(&self) -> CrashPoint {
        self.state.lock().snapshot()
    }
    /// An independent copy of the live state (as if everything had been synced), with no faults or locks.
    pub fn deep_copy(&self) -> SimFs {
        let st = self.state.lock();
        let files = st
            .live_dir
            .iter()
            .filter_map(|(p, &i)| {
                st.inodes
                    .get(i)
                    .map(|f| (p.clone(), (f.live.clone(), f.live.clone())))
            })
            .collect();
        CrashPoint {
            mark: st.mark,
            files,
        }
        .materialize(None)
    }
    /// Replaces (or creates) a file's contents, live and durable (for tests that damage files).
    pub fn set_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut st = self.state.lock();
        let ino = match st.live_dir.get(path) {
            Some(&i) => i,
            None => {
                st.inodes.push(Inode::default());
                st.inodes.len() - 1
            }
        };
        st.live_dir.insert(path.to_path_buf(), ino);
        st.durable_dir.insert(path.to_path_buf(), ino);
        if let Some(f) = st.inodes.get_mut(ino) {
            f.live = bytes.clone();
            f.durable = bytes;
        }
    }
    /// Paths of every file, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.state.lock().live_dir.keys().cloned().collect()
    }
    /// The live bytes of a file (for tests that damage or inspect files).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        st.live_dir
            .get(path)
            .and_then(|&i| st.inodes.get(i))
            .map(|i| i.live.clone())
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    ino: usize,
}

fn missing(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl FileHandle for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let st = self.fs.state.lock();
        let data = &st
            .inodes
            .get(self.ino)
            .ok_or_else(|| io::Error::other("bad inode"))?
            .live;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        if st
            .faults
            .disk_bytes
            .is_some_and(|cap| st.bytes_written + data.len() as u64 > cap)
        {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected ENOSPC",
            ));
        }
        st.bytes_written += data.len() as u64;
        let file = st
            .inodes
            .get_mut(self.ino)
            .ok_or_else(|| io::Error::other("bad inode"))?;
        let end = offset as usize + data.len();
        if file.live.len() < end {
            file.live.resize(end, 0);
        }
        file.live[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        st.begin_sync()?;
        if let Some(file) = st.inodes.get_mut(self.ino) {
            file.durable = file.live.clone();
        }
        st.end_sync();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let st = self.fs.state.lock();
        Ok(st.inodes.get(self.ino).map_or(0, |f| f.live.len() as u64))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        if let Some(file) = st.inodes.get_mut(self.ino) {
            file.live.resize(len as usize, 0);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SimLock {
    fs: SimFs,
    dir: PathBuf,
}
impl DirLock for SimLock {}
impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.state.lock().locks.remove(&self.dir);
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        Ok(st
            .live_dir
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let mut st = self.state.lock();
        if st.live_dir.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let ino = st.inodes.len();
        st.inodes.push(Inode::default());
        st.live_dir.insert(path.to_path_buf(), ino);
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            ino,
        }))
    }
    fn open(&self, path: &Path) -> io::Result<Arc<dyn FileHandle>> {
        let st = self.state.lock();
        let ino = *st.live_dir.get(path).ok_or_else(|| missing(path))?;
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            ino,
        }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.live_dir
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| missing(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let ino = st.live_dir.remove(from).ok_or_else(|| missing(from))?;
        st.live_dir.insert(to.to_path_buf(), ino);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.begin_sync()?;
        let st = &mut *st;
        st.durable_dir.retain(|p, _| p.parent() != Some(dir));
        for (p, &ino) in &st.live_dir {
            if p.parent() == Some(dir) {
                st.durable_dir.insert(p.clone(), ino);
            }
        }
        st.end_sync();
        Ok(())
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn DirLock>> {
        let mut st = self.state.lock();
        if !st.locks.insert(dir.to_path_buf()) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked"));
        }
        Ok(Box::new(SimLock {
            fs: self.clone(),
            dir: dir.to_path_buf(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_bytes_and_entries_survive_a_crash() {
        let fs = SimFs::new();
        let dir = Path::new("/d");
        let a = fs.create(&dir.join("a")).unwrap();
        a.write_all_at(b"hello", 0).unwrap();
        a.sync_data().unwrap();
        let crashed = fs.crash_image().materialize(None);
        assert!(
            crashed.list(dir).unwrap().is_empty(),
            "entry not durable before sync_dir"
        );
        fs.sync_dir(dir).unwrap();
        a.write_all_at(b" world", 5).unwrap();
        let crashed = fs.crash_image().materialize(None);
        assert_eq!(crashed.read_file(&dir.join("a")).unwrap(), b"hello");
        let torn = fs
            .crash_image()
            .materialize(Some(7))
            .read_file(&dir.join("a"))
            .unwrap();
        assert!(torn.starts_with(b"hello") && b"hello world".starts_with(&torn));
    }

    #[test]
    fn injected_faults_fire() {
        let fs = SimFs::new();
        fs.set_faults(Faults {
            fail_sync_number: Some(2),
            disk_bytes: Some(4),
            ..Faults::default()
        });
        let f = fs.create(Path::new("/d/f")).unwrap();
        f.sync_data().unwrap();
        assert!(f.sync_data().is_err());
        f.sync_data().unwrap();
        assert_eq!(
            f.write_all_at(b"12345", 0).unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        let _l = fs.lock_dir(Path::new("/d")).unwrap();
        assert_eq!(
            fs.lock_dir(Path::new("/d")).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
