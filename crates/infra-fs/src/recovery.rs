//! Recovery on open: rebuild the keydir from the segments and repair a torn tail.
//!
//! One concern in one file (about 560 lines, over the usual ~500): the policy below is a single rule set
//! whose parts (manifest reconciliation, replay, hint loading, tail cut) must be read together to check
//! that every crash point leaves a store that opens; the keydir updates it makes live in `keydir.rs`.
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
//! - If the disk is too full to save the cut bytes aside (or the unfinished segment), nothing is cut or
//!   removed: the store opens **read-only** (reads are served from the valid records before the damage;
//!   writes fail with `DiskFull`, HTTP 507) and the next open with free space repairs the tail as above.
//!   A partial copy is removed, never left to look like a complete one.
//! - Which segment files exist is checked against the manifest first (see [`crate::manifest`]): a listed
//!   file that is missing is a hard [`EngineError::Corrupted`] naming it; unlisted leftovers of an
//!   interrupted compaction are removed, an unlisted newest segment left by an interrupted rotation is
//!   adopted, and any other unlisted segment file is refused. Only an *unlisted* newest segment can have an
//!   unfinished header (a segment is listed after its header is durable).
//!
//! - A sealed segment with a valid hint file (see [`crate::hint`]) is loaded from the hints without reading
//!   its records (their checksums are then verified when read); an unusable hint is reported and the
//!   segment scanned instead.
//!
//! ## Invariants after recovery
//! - The keydir holds exactly the latest put of every key not deleted afterwards, over the valid records.
//! - Every batch is either wholly applied or wholly absent.
//! - The newest segment ends on a record boundary, so appends continue from its end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use kv_domain::{EngineError, EngineResult, Location, OrderedIndex, RecoveryReport};

use crate::codec::{
    decode_record, u32_field, DecodeError, Record, RecordKind, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::garbage::Garbage;
use crate::hint::{self, hint_name};
use crate::keydir::{apply_update, Update};
use crate::manifest::{self, MANIFEST, MANIFEST_TMP};
use crate::segment::{
    parse_segment_name, read_segment_header, scan_records, segment_name, FdBudget, ScanEnd,
    Segment, FIRST_SEGMENT_ID, TEMP_SUFFIX,
};
use crate::vfs::{path_in, FileHandle, FileSystem};

/// What recovery hands the engine.
#[derive(Debug)]
pub(crate) struct Recovered {
    /// Every segment, by id.
    pub segments: BTreeMap<u32, Arc<Segment>>,
    /// The newest segment and its length, to continue appending to.
    pub newest: Option<(Arc<Segment>, u64)>,
    /// Highest segment id kept (a new segment gets the next one).
    pub max_id: u32,
    /// The manifest as found (`None`: there was none), to tell whether it must be rewritten.
    pub listed: Option<BTreeSet<u32>>,
    /// Highest LSN found.
    pub last_lsn: u64,
    /// Bytes of all segments.
    pub disk_bytes: u64,
    /// What was done.
    pub report: RecoveryReport,
    /// Set when the disk was too full to repair the log's tail: the store must open read-only.
    pub read_only: Option<String>,
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
    garbage: &mut Garbage,
    records: &mut u64,
) -> EngineResult<(ScanEnd, u64, u64)> {
    let mut last_lsn = 0u64;
    let mut applied_lsn = 0u64;
    let mut batch: Option<OpenBatch> = None;
    // The limit check that makes the narrowing below exact: a segment the keydir's `u32` offsets cannot
    // address was not written by this engine (segments stay under `Options::MAX_SEGMENT_BYTES` plus one
    // write).
    if file_len > u64::from(u32::MAX) {
        return Err(EngineError::Corrupted {
            file: seg.name.clone(),
            offset: u64::from(u32::MAX),
            reason: format!("segment of {file_len} bytes is larger than a u32 offset addresses"),
        });
    }
    let loc = |offset: u64, r: &Record<'_>| Location {
        segment: seg.id,
        offset: u32_field(offset),
        len: u32_field(RECORD_HEADER_LEN + r.key.len() + r.value.len()),
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
pub(crate) fn valid_record_follows(tail: &[u8], after_lsn: u64) -> bool {
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
    garbage: &mut Garbage,
    budget: &Arc<FdBudget>,
) -> EngineResult<Recovered> {
    let fs: &dyn FileSystem = &**fs_arc;
    let mut report = RecoveryReport::default();
    // Leftovers of an interrupted compaction (outputs never committed: their inputs are all still there)
    // or of an interrupted manifest update (the old manifest is intact).
    for name in fs
        .list(dir)
        .map_err(|e| EngineError::io(format!("listing {}", dir.display()), e))?
    {
        if name.ends_with(TEMP_SUFFIX) || name.ends_with(".hint.tmp") || name == MANIFEST_TMP {
            fs.remove(&path_in(dir, &name))
                .map_err(|e| EngineError::io(format!("removing {name}"), e))?;
            if name != MANIFEST_TMP {
                report
                    .notes
                    .push(format!("removed {name}, an uncommitted compaction output"));
            }
        }
    }
    let listed = manifest::load(fs, dir)?;
    let names = fs
        .list(dir)
        .map_err(|e| EngineError::io(format!("listing {}", dir.display()), e))?;
    let on_disk: BTreeSet<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    let ids = match &listed {
        Some(listed) => reconcile_with_manifest(fs, dir, listed, &on_disk, &mut report)?,
        None => {
            check_consecutive(&on_disk)?;
            if !on_disk.is_empty() {
                report.notes.push(format!(
                    "no {MANIFEST} (a store written by an older version): checked that the normal segment ids are consecutive and wrote one listing the {} segment files",
                    on_disk.len()
                ));
            }
            on_disk.into_iter().collect()
        }
    };
    let mut segments = BTreeMap::new();
    let mut newest = None;
    let mut last_lsn = 0u64;
    let mut disk_bytes = 0u64;
    let mut read_only = None;
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
        let corrupted = |offset: u64, reason: String| {
            EngineError::Corrupted {
            file: name.clone(),
            offset,
            reason: format!(
                "{reason}; the store refuses to open rather than serve around it: `kvctl repair --data-dir {}` salvages every record that still checks and reports what was lost",
                dir.display()
            ),
        }
        };
        match read_segment_header(&*file, file_len)
            .map_err(|e| EngineError::io(format!("reading {name}"), e))?
        {
            Ok((found, base_lsn)) if found == id => last_lsn = last_lsn.max(base_lsn),
            Ok((found, _)) => return Err(corrupted(8, format!("header names segment {found}"))),
            Err(error) if is_newest && !listed.as_ref().is_some_and(|l| l.contains(&id)) => {
                // A rotation that never finished: the header was not durable, so no record was appended.
                let copy = match save_tail(fs, dir, &name, &*file, 0, file_len) {
                    Ok(copy) => copy,
                    Err(EngineError::DiskFull { context }) => {
                        let why = format!("the disk is full: the newest segment {name} has an unfinished header ({error}) and could not be saved aside ({context}), so it was left in place; writes are refused until space is freed and the server restarted");
                        tracing::error!("opening read-only: {why}");
                        report.notes.push(why.clone());
                        read_only = Some(why);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
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
            // A listed segment's header was durable before the manifest named it: this is damage.
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
            let cut = file_len - offset;
            let copy = match save_tail(fs, dir, &name, &*file, offset, file_len).and_then(|copy| {
                // IMPORTANT: the copy is durable before the cut, so the bytes are never lost.
                file.set_len(offset)
                    .and_then(|_| file.sync_data())
                    .map_err(|e| EngineError::io(format!("truncating {name}"), e))
                    .map(|_| copy)
            }) {
                Ok(copy) => copy,
                Err(EngineError::DiskFull { context }) => {
                    // No room for the forensic copy: leave the tail as it is (appends would need space
                    // anyway) and serve what precedes it, read-only, until a restart with space repairs it.
                    let why = format!(
                        "the disk is full: the invalid tail of {name} ({cut} bytes at offset {offset}, {error}) could not be saved aside ({context}), so it was left in place; writes are refused until space is freed and the server restarted"
                    );
                    tracing::error!("opening read-only: {why}");
                    report.notes.push(why.clone());
                    read_only = Some(why);
                    disk_bytes += offset;
                    report.segments += 1;
                    segments.insert(id, seg.clone());
                    newest = Some((seg, offset));
                    continue;
                }
                Err(e) => return Err(e),
            };
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
    // The highest id kept: a removed unfinished newest segment's id is reused (its file is durably gone),
    // so the ids stay consecutive and the manifest's newest + 1 rule holds for the next segment.
    let max_id = segments.keys().next_back().copied().unwrap_or(0);
    Ok(Recovered {
        segments,
        newest,
        max_id,
        last_lsn,
        disk_bytes,
        report,
        read_only,
        listed,
    })
}

/// Checks the segment files found against the manifest (see [`crate::manifest`] for the cases) and removes
/// the explained leftovers; returns the ids to open, ascending.
fn reconcile_with_manifest(
    fs: &dyn FileSystem,
    dir: &Path,
    listed: &BTreeSet<u32>,
    on_disk: &BTreeSet<u32>,
    report: &mut RecoveryReport,
) -> EngineResult<Vec<u32>> {
    let missing: Vec<String> = listed
        .difference(on_disk)
        .map(|&id| segment_name(id))
        .collect();
    if !missing.is_empty() {
        return Err(EngineError::Corrupted {
            file: MANIFEST.into(),
            offset: 0,
            reason: format!(
                "{} segment file(s) it lists are missing: {}; opening without them would serve a different store (stale values, deleted keys back, LSNs going back), so the store refuses to open: restore the files, or run `kvctl repair --data-dir {}` to drop them and report the LSNs lost",
                missing.len(),
                missing.join(", "),
                dir.display()
            ),
        });
    }
    let newest_listed = listed.last().copied().unwrap_or(0);
    let mut ids: Vec<u32> = listed.iter().copied().collect();
    for &id in on_disk.difference(listed) {
        let name = segment_name(id);
        if id < newest_listed {
            // An output whose compaction never listed it, or an input it retired but had not deleted yet.
            fs.remove(&path_in(dir, &name))
                .map_err(|e| EngineError::io(format!("removing {name}"), e))?;
            match fs.remove(&path_in(dir, &hint_name(id))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(EngineError::io(format!("removing {}", hint_name(id)), e))
                }
                _ => {}
            }
            report.notes.push(format!(
                "removed {name}: not in the {MANIFEST}, left by an interrupted compaction"
            ));
        } else if id == newest_listed + 1 && id >= FIRST_SEGMENT_ID {
            // A rotation created it and stopped before listing it: it holds at most its header.
            report.notes.push(format!(
                "adopted {name}: the newest segment, created by a rotation that stopped before listing it"
            ));
            ids.push(id);
        } else {
            return Err(EngineError::Corrupted {
                file: name,
                offset: 0,
                reason: format!(
                    "this segment file is not in the {MANIFEST} (newest listed: {}) and no interrupted rotation or compaction explains it; move it out of the data directory if it does not belong to this store",
                    segment_name(newest_listed)
                ),
            });
        }
    }
    if !on_disk.is_empty() || !listed.is_empty() {
        fs.sync_dir(dir)
            .map_err(|e| EngineError::io("syncing data directory", e))?;
    }
    Ok(ids)
}

/// A store without a manifest: its normal segment ids must be consecutive (ids only grow by one at each
/// rotation, and compaction only ever removed the oldest ones), so any gap is a missing file.
fn check_consecutive(on_disk: &BTreeSet<u32>) -> EngineResult<()> {
    let normal: Vec<u32> = on_disk.range(FIRST_SEGMENT_ID..).copied().collect();
    let gaps: Vec<String> = normal
        .windows(2)
        .flat_map(|w| match w {
            [a, b] => (a + 1..*b).collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .map(segment_name)
        .collect();
    if gaps.is_empty() {
        return Ok(());
    }
    Err(EngineError::Corrupted {
        file: gaps.join(", "),
        offset: 0,
        reason: format!(
            "segment file(s) missing between {} and {} (there is no {MANIFEST}, and the normal segment ids must be consecutive); the store refuses to open rather than serve stale data: restore them, or run `kvctl repair` to drop them and report the LSNs lost",
            normal.first().map_or_else(String::new, |&i| segment_name(i)),
            normal.last().map_or_else(String::new, |&i| segment_name(i)),
        ),
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
    if let Err(e) = copy
        .write_all_at(&bytes, 0)
        .and_then(|_| copy.sync_data())
        .and_then(|_| fs.sync_dir(dir))
    {
        // Never leave a partial copy behind (it would look like a complete one).
        let _ = fs.remove(&path_in(dir, &copy_name));
        return Err(EngineError::io(format!("writing {copy_name}"), e));
    }
    Ok(Some(copy_name))
}
