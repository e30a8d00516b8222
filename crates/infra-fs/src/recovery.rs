//! Recovery on open: rebuild the keydir from the segments and repair a torn tail.
//!
//! ## Policy: "tolerate a corrupt tail of the newest segment"
//! - Every record of every segment is checksum-verified and sequence-checked (LSNs never decrease; batches
//!   complete and not interleaved).
//! - In a **sealed** segment (every segment but the newest) any invalid byte is a hard
//!   [`EngineError::Corrupted`] naming the file and offset: sealed segments were fsynced before the next
//!   segment was created, so damage there is real corruption, never a torn write.
//! - In the **newest** segment, everything from the first invalid record (or from the header of a batch
//!   that is incomplete) to the end is a torn write: those bytes were never acknowledged in `always` mode
//!   (acknowledgement follows `fdatasync`, and the log is append-only). They are copied to
//!   `<segment>.torn-<offset>` for forensics, cut off, the cut is fsynced, and the cut is reported (logged
//!   and returned in the [`RecoveryReport`]). If a valid record is found *after* the cut point, the report
//!   says so loudly: it may be mid-segment corruption rather than a torn write, and the copy holds it.
//! - A newest segment whose header is incomplete or invalid was created by a rotation that did not finish
//!   (records are appended only after the header is durable); it is saved aside and removed.
//!
//! - A sealed segment with a valid hint file (see [`crate::hint`]) is loaded from the hints without reading
//!   its records (their checksums are then verified when read); an unusable hint is reported and the
//!   segment scanned instead.
//!
//! ## Invariants after recovery
//! - The keydir holds exactly the latest put of every key not deleted afterwards, over the valid records.
//! - Every batch is either wholly applied or wholly absent.
//! - The newest segment ends on a record boundary, so appends continue from its end.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kv_domain::{EngineError, EngineResult, Location, OrderedIndex, RecoveryReport};

use crate::codec::{
    decode_record, DecodeError, Record, RecordKind, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::hint::{self, hint_name};
use crate::segment::{
    parse_segment_name, read_segment_header, scan_records, segment_name, FdBudget, ScanEnd,
    Segment, FIRST_SEGMENT_ID, TEMP_SUFFIX,
};
use crate::vfs::{path_in, FileHandle, FileSystem};

/// One change to the keydir, with the garbage accounting that goes with it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Update<'a> {
    /// `key` now lives at the location.
    Put(&'a [u8], Location),
    /// `key` was deleted by the tombstone at the location.
    Delete(&'a [u8], Location),
    /// A batch header record (garbage from the start: it carries no data).
    Framing(Location),
}

/// Applies `update` to the keydir and adds the bytes it makes obsolete to `garbage`.
pub(crate) fn apply_update(index: &dyn OrderedIndex, garbage: &AtomicU64, update: Update<'_>) {
    let dead = match update {
        Update::Put(key, loc) => index.insert(key, loc).map_or(0, |old| old.len as u64),
        Update::Delete(key, loc) => {
            index.remove(key).map_or(0, |old| old.len as u64) + loc.len as u64
        }
        Update::Framing(loc) => loc.len as u64,
    };
    garbage.fetch_add(dead, Ordering::Relaxed);
}

/// What recovery hands the engine.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Every segment, by id.
    pub segments: BTreeMap<u32, Arc<Segment>>,
    /// The newest segment and its length, to continue appending to.
    pub newest: Option<(Arc<Segment>, u64)>,
    /// Highest segment id seen, including a removed unfinished one (new segments get higher ids).
    pub max_id: u32,
    /// Highest LSN found.
    pub last_lsn: u64,
    /// Bytes of all segments.
    pub disk_bytes: u64,
    /// What was done.
    pub report: RecoveryReport,
}

/// A batch whose members are still being read.
struct OpenBatch {
    header_offset: u64,
    lsn: u64,
    remaining: u32,
    members: Vec<(Vec<u8>, RecordKind, Location)>,
    header: Location,
}

/// Replays one segment into the keydir. Returns how the scan ended (an incomplete batch becomes an `Invalid`
/// end at the batch's header), the highest LSN applied, and the highest LSN seen (which includes the LSN of
/// an incomplete batch).
fn replay_segment(
    seg: &Segment,
    file: &dyn FileHandle,
    file_len: u64,
    index: &dyn OrderedIndex,
    garbage: &AtomicU64,
    records: &mut u64,
) -> EngineResult<(ScanEnd, u64, u64)> {
    let mut last_lsn = 0u64;
    let mut applied_lsn = 0u64;
    let mut batch: Option<OpenBatch> = None;
    let loc = |offset: u64, r: &Record<'_>| Location {
        segment: seg.id,
        offset: offset as u32,
        len: (RECORD_HEADER_LEN + r.key.len() + r.value.len()) as u32,
    };
    let end = scan_records(file, SEGMENT_HEADER_LEN as u64, file_len, |offset, r| {
        let lsn = r.header.lsn;
        if let Some(b) = batch.as_mut() {
            if r.header.kind == RecordKind::BatchHeader || lsn != b.lsn {
                return Err(DecodeError::OutOfSequence(
                    "batch member missing or interleaved",
                ));
            }
            b.members
                .push((r.key.to_vec(), r.header.kind, loc(offset, r)));
            b.remaining -= 1;
            if b.remaining == 0 {
                if let Some(done) = batch.take() {
                    apply_update(index, garbage, Update::Framing(done.header));
                    for (key, kind, l) in &done.members {
                        let u = if *kind == RecordKind::Put {
                            Update::Put(key, *l)
                        } else {
                            Update::Delete(key, *l)
                        };
                        apply_update(index, garbage, u);
                    }
                    *records += done.members.len() as u64 + 1;
                    applied_lsn = done.lsn;
                }
            }
            return Ok(());
        }
        // Compaction outputs (every id below FIRST_SEGMENT_ID) are in key order, not LSN order.
        let ordered = seg.id >= FIRST_SEGMENT_ID;
        if ordered
            && (lsn < last_lsn || (lsn == last_lsn && r.header.kind == RecordKind::BatchHeader))
        {
            return Err(DecodeError::OutOfSequence(
                "LSN lower than its predecessor's",
            ));
        }
        last_lsn = last_lsn.max(lsn);
        match r.header.kind {
            RecordKind::BatchHeader => {
                let count = r.batch_count();
                if count == 0 {
                    return Err(DecodeError::OutOfSequence("empty batch"));
                }
                batch = Some(OpenBatch {
                    header_offset: offset,
                    lsn,
                    remaining: count,
                    members: Vec::new(),
                    header: loc(offset, r),
                });
            }
            RecordKind::Put => {
                apply_update(index, garbage, Update::Put(r.key, loc(offset, r)));
                *records += 1;
                applied_lsn = applied_lsn.max(lsn);
            }
            RecordKind::Tombstone => {
                apply_update(index, garbage, Update::Delete(r.key, loc(offset, r)));
                *records += 1;
                applied_lsn = applied_lsn.max(lsn);
            }
        }
        Ok(())
    })
    .map_err(|e| EngineError::io(format!("reading segment {}", seg.name), e))?;
    // Members of a batch that never completed were not applied: the cut starts at its header.
    let end = match batch {
        Some(b) => ScanEnd::Invalid {
            offset: b.header_offset,
            error: DecodeError::OutOfSequence("batch incomplete"),
        },
        None => end,
    };
    Ok((end, applied_lsn, last_lsn))
}

/// Whether any valid record with an LSN above `after_lsn` starts anywhere in `tail` (bytes after a cut).
fn valid_record_follows(tail: &[u8], after_lsn: u64) -> bool {
    (1..tail.len()).any(|i| {
        tail.get(i..)
            .and_then(|b| decode_record(b).ok())
            .is_some_and(|r| r.header.lsn > after_lsn)
    })
}

/// Opens every segment in `dir`, replays them into `index`, repairs a torn tail of the newest one.
pub(crate) fn recover(
    fs_arc: &Arc<dyn FileSystem>,
    dir: &Path,
    index: &dyn OrderedIndex,
    garbage: &AtomicU64,
    budget: &Arc<FdBudget>,
) -> EngineResult<Recovered> {
    let fs: &dyn FileSystem = &**fs_arc;
    let mut report = RecoveryReport::default();
    // Leftovers of an interrupted compaction: outputs never committed (their inputs are all still there).
    for name in fs
        .list(dir)
        .map_err(|e| EngineError::io(format!("listing {}", dir.display()), e))?
    {
        if name.ends_with(TEMP_SUFFIX) || name.ends_with(".hint.tmp") {
            fs.remove(&path_in(dir, &name))
                .map_err(|e| EngineError::io(format!("removing {name}"), e))?;
            report
                .notes
                .push(format!("removed {name}, an uncommitted compaction output"));
        }
    }
    let names = fs
        .list(dir)
        .map_err(|e| EngineError::io(format!("listing {}", dir.display()), e))?;
    let mut ids: Vec<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    ids.sort_unstable();
    let mut segments = BTreeMap::new();
    let mut newest = None;
    let mut last_lsn = 0u64;
    let mut disk_bytes = 0u64;
    for (i, &id) in ids.iter().enumerate() {
        let is_newest = i + 1 == ids.len();
        let name = segment_name(id);
        let path = path_in(dir, &name);
        let file = fs
            .open(&path)
            .map_err(|e| EngineError::io(format!("opening {name}"), e))?;
        let file_len = file
            .len()
            .map_err(|e| EngineError::io(format!("reading length of {name}"), e))?;
        let corrupted = |offset: u64, reason: String| EngineError::Corrupted {
            file: name.clone(),
            offset,
            reason,
        };
        match read_segment_header(&*file, file_len)
            .map_err(|e| EngineError::io(format!("reading {name}"), e))?
        {
            Ok((found, base_lsn)) if found == id => last_lsn = last_lsn.max(base_lsn),
            Ok((found, _)) => return Err(corrupted(8, format!("header names segment {found}"))),
            Err(error) if is_newest => {
                // A rotation that never finished: the header was not durable, so no record was appended.
                let copy = save_tail(fs, dir, &name, &*file, 0, file_len)?;
                fs.remove(&path)
                    .map_err(|e| EngineError::io(format!("removing {name}"), e))?;
                fs.sync_dir(dir)
                    .map_err(|e| EngineError::io("syncing data directory", e))?;
                let note = format!("removed newest segment {name} with an unfinished header ({error}); {file_len} bytes saved to {}", copy.as_deref().unwrap_or("nowhere (empty)"));
                tracing::warn!("{note}");
                report.truncated_bytes += file_len;
                report.truncated_copy = copy;
                report.notes.push(note);
                continue;
            }
            Err(error) => return Err(corrupted(0, format!("segment header: {error}"))),
        }
        let seg = Segment::new(
            id,
            path.clone(),
            fs_arc.clone(),
            budget.clone(),
            Some(file.clone()),
        );
        // A sealed segment with a valid hint file is loaded from it, without reading values.
        if !is_newest && names.iter().any(|n| *n == hint_name(id)) {
            let mut hinted_lsn = last_lsn;
            let loaded = read_hints(fs, dir, id).and_then(|bytes| {
                hint::for_each(&bytes, id, file_len, |lsn, key, location| {
                    apply_update(index, garbage, Update::Put(key, location));
                    hinted_lsn = hinted_lsn.max(lsn);
                })
            });
            match loaded {
                Ok(entries) => {
                    last_lsn = hinted_lsn;
                    report.records += entries as u64;
                    report.hinted_segments += 1;
                    disk_bytes += file_len;
                    report.segments += 1;
                    segments.insert(id, seg);
                    continue;
                }
                Err(why) => {
                    let note = format!(
                        "hint file {} unusable ({why}); scanned {name} instead",
                        hint_name(id)
                    );
                    tracing::warn!("{note}");
                    report.notes.push(note);
                }
            }
        }
        let (end, seg_applied, seg_seen) =
            replay_segment(&seg, &*file, file_len, index, garbage, &mut report.records)?;
        let seen_before = last_lsn.max(seg_seen);
        last_lsn = last_lsn.max(seg_applied);
        let mut len = file_len;
        if let ScanEnd::Invalid { offset, error } = end {
            if !is_newest {
                return Err(corrupted(offset, error.to_string()));
            }
            let mut tail = vec![0u8; (file_len - offset) as usize];
            file.read_exact_at(&mut tail, offset)
                .map_err(|e| EngineError::io(format!("reading {name}"), e))?;
            // Members of a torn batch share its LSN and are expected after the cut; anything newer is not.
            let suspicious = valid_record_follows(&tail, seen_before);
            let copy = save_tail(fs, dir, &name, &*file, offset, file_len)?;
            // IMPORTANT: the copy is durable before the cut, so the bytes are never lost.
            file.set_len(offset)
                .and_then(|_| file.sync_data())
                .map_err(|e| EngineError::io(format!("truncating {name}"), e))?;
            let cut = file_len - offset;
            let note = format!(
                "cut {cut} bytes from the tail of {name} at offset {offset} ({error}); saved to {}{}",
                copy.as_deref().unwrap_or("-"),
                if suspicious { "; WARNING: a valid record follows the cut point, this may be mid-segment corruption rather than a torn write" } else { "" }
            );
            if suspicious {
                tracing::error!("{note}");
            } else {
                tracing::warn!("{note}");
            }
            report.truncated_bytes += cut;
            report.truncated_copy = copy;
            report.notes.push(note);
            len = offset;
        }
        disk_bytes += len;
        report.segments += 1;
        segments.insert(id, seg.clone());
        if is_newest {
            newest = Some((seg, len));
        }
    }
    let max_id = ids.last().copied().unwrap_or(0);
    Ok(Recovered {
        segments,
        newest,
        max_id,
        last_lsn,
        disk_bytes,
        report,
    })
}

/// Reads the hint file of segment `id`.
fn read_hints(fs: &dyn FileSystem, dir: &Path, id: u32) -> Result<Vec<u8>, String> {
    let file = fs
        .open(&path_in(dir, &hint_name(id)))
        .map_err(|e| e.to_string())?;
    let len = file.len().map_err(|e| e.to_string())?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Copies bytes `[from, to)` of a segment to a new durable file beside it; returns its name (None if empty).
fn save_tail(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    file: &dyn crate::vfs::FileHandle,
    from: u64,
    to: u64,
) -> EngineResult<Option<String>> {
    if to <= from {
        return Ok(None);
    }
    let mut bytes = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut bytes, from)
        .map_err(|e| EngineError::io(format!("reading {name}"), e))?;
    let existing = fs
        .list(dir)
        .map_err(|e| EngineError::io("listing data directory", e))?;
    let base = format!("{name}.torn-{from}");
    let copy_name = (0..)
        .map(|n| {
            if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            }
        })
        .find(|c| !existing.contains(c))
        .unwrap_or(base);
    let copy = fs
        .create(&path_in(dir, &copy_name))
        .map_err(|e| EngineError::io(format!("creating {copy_name}"), e))?;
    copy.write_all_at(&bytes, 0)
        .and_then(|_| copy.sync_data())
        .and_then(|_| fs.sync_dir(dir))
        .map_err(|e| EngineError::io(format!("writing {copy_name}"), e))?;
    Ok(Some(copy_name))
}
