//! The segment set: creating a segment durably, rotating the active one, and recording every change of
//! the set in the manifest before the table (see [`crate::manifest`]).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use kv_domain::{EngineError, EngineResult};

use super::{Inner, Writer};
use crate::codec::{encode_segment_header, SEGMENT_HEADER_LEN};
use crate::segment::{segment_name, FdBudget, Segment};
use crate::vfs::path_in;

/// Creates segment `id` with its header, durably (file and directory entry).
pub(super) fn create_segment(
    fs: &Arc<dyn crate::vfs::FileSystem>,
    dir: &Path,
    id: u32,
    base_lsn: u64,
    budget: &Arc<FdBudget>,
) -> EngineResult<Arc<Segment>> {
    let name = segment_name(id);
    let path = path_in(dir, &name);
    let file = fs
        .create(&path)
        .map_err(|e| EngineError::io(format!("creating {name}"), e))?;
    // IMPORTANT: header durable, then the directory entry, before any record is appended: recovery relies
    // on "a segment with a bad header holds no acknowledged record".
    file.write_all_at(&encode_segment_header(id, base_lsn), 0)
        .and_then(|_| file.sync_data())
        .and_then(|_| fs.sync_dir(dir))
        .map_err(|e| EngineError::io(format!("initialising {name}"), e))?;
    Ok(Segment::new(
        id,
        path,
        fs.clone(),
        budget.clone(),
        Some(file),
    ))
}

impl Inner {
    /// Records a change of the segment set: rewrites the manifest to list the table plus `add` minus
    /// `remove`, then makes the same change to the table, both under the manifest lock so concurrent
    /// changes (a rotation during a compaction) never drop each other's entries. IMPORTANT: a segment is
    /// added only once its file and directory entry are durable, and removed before its file is deleted
    /// (see [`crate::manifest`]).
    pub(super) fn update_segments(
        &self,
        add: Option<Arc<Segment>>,
        remove: &[u32],
    ) -> EngineResult<()> {
        let _serialised = self.manifest.lock();
        let mut ids: BTreeSet<u32> = self.segments.read().keys().copied().collect();
        if let Some(seg) = &add {
            ids.insert(seg.id);
        }
        for id in remove {
            ids.remove(id);
        }
        crate::manifest::store(&*self.opts.fs, &self.dir, &ids)?;
        let mut table = self.segments.write();
        if let Some(seg) = add {
            table.insert(seg.id, seg);
        }
        for id in remove {
            if let Some(seg) = table.remove(id) {
                // No descriptor stays on a file about to be deleted (reads in flight keep theirs).
                seg.close();
            }
        }
        Ok(())
    }

    /// Seals the active segment and starts the next one. Called with the writer lock held.
    pub(super) fn rotate(&self, w: &mut Writer) -> EngineResult<()> {
        self.flush_buffer(w)?;
        // IMPORTANT: fsync the old segment before its successor exists, so only the newest can be torn.
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        w.active_file
            .sync_data()
            .map_err(|e| self.io_failure(format!("syncing {}", w.active.name), e))?;
        let seg = create_segment(
            &self.opts.fs,
            &self.dir,
            w.active.id + 1,
            w.last_lsn,
            &self.budget,
        )
        .inspect_err(|e| self.poison_with(e))?;
        seg.pin(true);
        let file = seg
            .file()
            .map_err(|e| self.io_failure(format!("opening {}", seg.name), e))?;
        self.fsyncs.fetch_add(2, Ordering::Relaxed);
        self.update_segments(Some(seg.clone()), &[])
            .inspect_err(|e| self.poison_with(e))?;
        self.disk_bytes
            .fetch_add(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
        w.active.pin(false);
        w.active = seg;
        w.active_file = file;
        w.offset = SEGMENT_HEADER_LEN as u64;
        w.unsynced = 0;
        Ok(())
    }
}
