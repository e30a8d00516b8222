//! Compaction (Bitcask's merge): rewrite the sealed segments that hold garbage, keeping only live records.
//!
//! ## Protocol
//! 1. A manual compaction first seals the active segment when it holds garbage (so its dead bytes are
//!    reclaimed too); an automatic one leaves it. The inputs are the segments sealed when compaction starts
//!    (every id below the active one) that hold garbage (see `garbage.rs`): a segment without garbage has
//!    only live records, which no tombstone elsewhere refers to, so rewriting it would only copy it. Every
//!    write accepted before that moment is first made durable and published (a group commit may still hold
//!    a write that a rotation sealed into an input). Writes go on into the active segment meanwhile;
//!    segments sealed later are left for the next compaction.
//! 2. The keydir is walked in key order, a page at a time; every key whose latest record lies in an input
//!    is *live* there, and that record is read, verified and copied (same LSN, timestamp and checksum) into
//!    output segments written as `<id>.seg.tmp`. Outputs are thus sorted by key (and so are their hints,
//!    which makes start-up's keydir rebuild a run of in-order inserts). Tombstones and batch headers are
//!    dropped: every older version of their key is in the inputs too (a segment holding one has garbage)
//!    and is dropped with them.
//! 3. Outputs take fresh ids from a block reserved *below* every existing segment, so replay at open
//!    applies them before any input that still exists and before every newer segment (a skipped segment
//!    holds other keys, so its order against the outputs does not matter). Every id below
//!    `FIRST_SEGMENT_ID` is a compaction output (normal segments count up from it); recovery knows their
//!    LSNs follow key order, not time. Each key appears in at most one output.
//! 4. Each output, once full, is committed on its own: `fdatasync`, rename to `<id>.seg`, directory fsync,
//!    then listed in the manifest (IMPORTANT: in that order) and added to the segment table, and the keydir
//!    entries of its records are switched to it one by one — only where the keydir still points at the
//!    input record (a compare and swap under the publish lock, so a concurrent newer write always wins).
//!    A hint file (see `hint.rs`) is written for each committed output.
//! 5. When every output is committed, the inputs leave the manifest and the segment table in one step,
//!    then their files are deleted and the directory is fsynced.
//!
//! ## Why every crash point is safe
//! - Before an output is listed: it is a `.tmp` file, or an unlisted `.seg` below every listed id; both
//!   are removed at open (see `manifest.rs`); the inputs are intact and listed.
//! - Listed outputs next to the listed inputs: an output holds only copies of the latest version of keys
//!   whose history lies in the inputs, and replays first; replaying the inputs after it re-applies the same
//!   latest versions and tombstones. The contents are the same either way.
//! - Inputs unlisted but not yet deleted: unlisted files below the newest listed id, removed at open.
//! - Readers that looked a key up just before its input was retired retry the lookup and find the copy.
//!
//! Memory is bounded by one output segment's keys (their remap list), not by the data size.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kv_domain::{CompactionStats, EngineError, EngineResult, KeyRange, Location};

use super::Inner;
use crate::codec::{
    decode_record, encode_record, encode_segment_header, u32_field, RecordKind, SEGMENT_HEADER_LEN,
};
use crate::hint;
use crate::segment::{segment_name, Segment, FIRST_SEGMENT_ID, TEMP_SUFFIX};
use crate::vfs::{path_in, FileHandle};

/// An output segment being written.
struct Output {
    id: u32,
    file: Arc<dyn FileHandle>,
    tmp: PathBuf,
    len: u64,
    buf: Vec<u8>,
    /// (key, LSN, input location, output location) of every record copied into it.
    remaps: Vec<(Box<[u8]>, u64, Location, Location)>,
}

/// Runs one compaction. With `seal_active` (a manual compaction), the active segment is sealed first when
/// it holds garbage, so that its dead bytes are reclaimed too.
pub(super) fn compact(inner: &Inner, seal_active: bool) -> EngineResult<CompactionStats> {
    let Some(_running) = inner.compacting.try_lock() else {
        return Err(EngineError::Busy("a compaction is already running".into()));
    };
    // IMPORTANT: checked under the `compacting` lock, which `freeze` takes to register a view, so no view
    // is taken while this runs and none is live when it starts (see `frozen.rs`).
    if inner.frozen_views.load(Ordering::Acquire) > 0 {
        // Only the automatic compactor retries by itself: a refused manual one must not hold views off
        // until some later compaction happens to run.
        if !seal_active {
            inner.compaction_waiting.store(true, Ordering::Release);
        }
        return Err(EngineError::Busy(
            "a snapshot is being read from the store; compaction waits until it is done".into(),
        ));
    }
    inner.compaction_waiting.store(false, Ordering::Release);
    inner.poisoned()?;
    inner.writable()?;
    let started = Instant::now();
    if seal_active {
        let mut w = inner.writer.lock();
        let reclaimable = inner.publish.lock().of(w.active.id) > 0;
        if reclaimable && w.offset > SEGMENT_HEADER_LEN as u64 {
            inner.rotate(&mut w)?;
        }
    }
    let (active_id, accepted) = {
        let w = inner.writer.lock();
        (w.active.id, w.accepted)
    };
    // IMPORTANT: in `always` mode a write sealed into an input by a rotation may still wait for its group
    // commit to publish it in the keydir. Wait until every write accepted so far is published, or the
    // keydir walk below would miss it and retiring its segment would lose an acknowledged write. Writes
    // accepted from now on go to the active segment or later ones, which are not inputs.
    inner.sync_through(accepted)?;
    let sealed: Vec<Arc<Segment>> = inner
        .segments
        .read()
        .values()
        .filter(|s| s.id < active_id)
        .cloned()
        .collect();
    // Keep the history followers still need (see `history.rs`): a normal segment is an input only if its
    // successor's base LSN, the last LSN it holds, is at or below the retention point. Base LSNs grow with
    // ids, so the inputs stay a prefix of the segments.
    let mut inputs = Vec::with_capacity(sealed.len());
    let all = inner.segments.read().clone();
    let garbage = inner.publish.lock().clone();
    for seg in sealed {
        if seg.id >= FIRST_SEGMENT_ID {
            let next = all.range(seg.id + 1..).next().map(|(_, s)| s.clone());
            let next_base = match next {
                Some(n) => super::history::base_lsn(&n)?,
                None => break,
            };
            if !super::history::compactable(inner, next_base) {
                break;
            }
        }
        // Nothing to reclaim: every record in it is the live version of its key, so no tombstone in
        // another input refers to it, and rewriting it would only copy it.
        if garbage.of(seg.id) == 0 {
            continue;
        }
        inputs.push(seg);
    }
    let mut stats = CompactionStats::default();
    if inputs.is_empty() {
        return Ok(stats);
    }
    // Output ids: a block reserved just below the oldest segment (an input, or one skipped for having no
    // garbage). Outputs hold at most the inputs' bytes, so twice the input count (plus slack for oversized
    // records) always suffices.
    let oldest = all.keys().next().copied().unwrap_or(0);
    let reserve = (inputs.len() as u32).saturating_mul(2).saturating_add(2);
    let first = oldest.checked_sub(reserve).filter(|&f| f > 0).ok_or_else(|| {
        EngineError::InvalidInput(format!("no segment ids left below {oldest} for compaction output; the id space is exhausted"))
    })?;
    let mut next_id = first;
    let limit = oldest;
    let mut out: Option<Output> = None;
    let input_ids: std::collections::HashSet<u32> = inputs.iter().map(|s| s.id).collect();
    for input in &inputs {
        stats.input_bytes += input
            .file()
            .and_then(|f| f.len())
            .map_err(|e| EngineError::io(format!("reading length of {}", input.name), e))?;
    }
    *inner.compaction_progress.lock() = Some(stats.clone());
    let result = (|| -> EngineResult<()> {
        // Walk the keydir in key order, a page at a time (bounded memory), and copy every live record that
        // lives in an input. Outputs are therefore sorted by key, and so are their hint files, which makes
        // rebuilding the keydir from them at start-up a sequence of in-order inserts.
        let mut range = KeyRange::all();
        loop {
            let page = inner.index.range(&range, 4096);
            let Some((last, _)) = page.last() else { break };
            let next = range.after(last);
            for (key, loc) in page {
                if !input_ids.contains(&loc.segment) {
                    continue;
                }
                let Some(input) = inputs.iter().find(|s| s.id == loc.segment) else {
                    continue;
                };
                let mut buf = vec![0u8; loc.len as usize];
                input
                    .file()
                    .and_then(|f| f.read_exact_at(&mut buf, loc.offset as u64))
                    .map_err(|e| {
                        EngineError::io(format!("reading {} at {}", input.name, loc.offset), e)
                    })?;
                let r = decode_record(&buf).map_err(|e| EngineError::Corrupted {
                    file: input.name.clone(),
                    offset: loc.offset as u64,
                    reason: e.to_string(),
                })?;
                if r.header.kind != RecordKind::Put || r.key != key.as_bytes() {
                    return Err(EngineError::Corrupted {
                        file: input.name.clone(),
                        offset: loc.offset as u64,
                        reason: "the keydir points at another record".into(),
                    });
                }
                copy_record(inner, &mut out, (&mut next_id, limit), &mut stats, loc, &r)?;
            }
            range = next;
            *inner.compaction_progress.lock() = Some(stats.clone());
        }
        if let Some(o) = out.take() {
            commit(inner, o, &mut stats)?;
        }
        Ok(())
    })();
    *inner.compaction_progress.lock() = None;
    if let Err(e) = result {
        // Roll back the uncommitted output; committed ones are valid alongside the untouched inputs.
        if let Some(o) = out {
            let _ = inner.opts.fs.remove(&o.tmp);
        }
        tracing::error!("compaction failed, inputs kept: {e}");
        return Err(e);
    }
    // Retire the inputs: out of the manifest and the table (readers retry), then deleted.
    let retired: Vec<u32> = inputs.iter().map(|s| s.id).collect();
    inner.update_segments(None, &retired)?;
    for input in &inputs {
        inner
            .opts
            .fs
            .remove(&path_in(&inner.dir, &input.name))
            .map_err(|e| EngineError::io(format!("deleting {}", input.name), e))?;
        remove_if_present(inner, &hint::hint_name(input.id))?;
    }
    inner
        .opts
        .fs
        .sync_dir(&inner.dir)
        .map_err(|e| EngineError::io("syncing data directory", e))?;
    inner.disk_bytes.fetch_sub(
        stats
            .input_bytes
            .min(inner.disk_bytes.load(Ordering::Relaxed)),
        Ordering::Relaxed,
    );
    // The inputs' dead records are gone; stale copies were counted on their output when it was committed.
    {
        let mut garbage = inner.publish.lock();
        for id in &retired {
            garbage.remove(*id);
        }
        inner
            .garbage_bytes
            .store(garbage.total(), Ordering::Relaxed);
    }
    stats.runs = 1;
    stats.input_segments = inputs.len() as u64;
    stats.millis = started.elapsed().as_millis() as u64;
    tracing::info!(
        inputs = stats.input_segments,
        outputs = stats.output_segments,
        input_bytes = stats.input_bytes,
        output_bytes = stats.output_bytes,
        records = stats.records_copied,
        millis = stats.millis,
        "compaction finished"
    );
    let mut totals = inner.compactions.lock();
    totals.runs += 1;
    totals.input_segments += stats.input_segments;
    totals.output_segments += stats.output_segments;
    totals.input_bytes += stats.input_bytes;
    totals.output_bytes += stats.output_bytes;
    totals.records_copied += stats.records_copied;
    totals.millis += stats.millis;
    Ok(stats)
}

/// Appends one live record to the current output, starting or committing outputs as they fill.
fn copy_record(
    inner: &Inner,
    out: &mut Option<Output>,
    (next_id, limit): (&mut u32, u32),
    stats: &mut CompactionStats,
    from: Location,
    r: &crate::codec::Record<'_>,
) -> EngineResult<()> {
    let full = out.as_ref().is_some_and(|o| {
        o.len > SEGMENT_HEADER_LEN as u64 && o.len + from.len as u64 > inner.opts.max_segment_bytes
    });
    if full {
        if let Some(o) = out.take() {
            commit(inner, o, stats)?;
        }
    }
    if out.is_none() {
        let id = *next_id;
        if id >= limit {
            return Err(EngineError::InvalidInput(
                "compaction output outgrew its reserved ids".into(),
            ));
        }
        *next_id += 1;
        let name = format!("{}{TEMP_SUFFIX}", segment_name(id).trim_end_matches(".seg"));
        let tmp = path_in(&inner.dir, &name);
        let file = inner
            .opts
            .fs
            .create(&tmp)
            .map_err(|e| EngineError::io(format!("creating {name}"), e))?;
        let mut buf = Vec::with_capacity(1 << 20);
        // Outputs hold old records only; the LSN sequence is carried by the newer segments' headers.
        buf.extend_from_slice(&encode_segment_header(id, 0));
        *out = Some(Output {
            id,
            file,
            tmp,
            len: SEGMENT_HEADER_LEN as u64,
            buf,
            remaps: Vec::new(),
        });
    }
    let Some(o) = out.as_mut() else { return Ok(()) };
    let at = o.len;
    let n = encode_record(
        &mut o.buf,
        RecordKind::Put,
        r.header.lsn,
        r.header.timestamp_micros,
        r.key,
        r.value,
    );
    o.len += n as u64;
    o.remaps.push((
        r.key.into(),
        r.header.lsn,
        from,
        Location {
            segment: o.id,
            // Within bounds: a record joins an output only while the output stays within the segment
            // size (at most `Options::MAX_SEGMENT_BYTES`) or is empty, and `n` is one decoded record.
            offset: u32_field(at),
            len: u32_field(n),
        },
    ));
    stats.records_copied += 1;
    if o.buf.len() >= 1 << 20 {
        flush(o)?;
    }
    Ok(())
}

fn remove_if_present(inner: &Inner, name: &str) -> EngineResult<()> {
    match inner.opts.fs.remove(&path_in(&inner.dir, name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(EngineError::io(format!("deleting {name}"), e))
        }
        _ => Ok(()),
    }
}

fn flush(o: &mut Output) -> EngineResult<()> {
    let start = o.len - o.buf.len() as u64;
    o.file.write_all_at(&o.buf, start).map_err(|e| {
        EngineError::io(format!("writing compaction output {}", o.tmp.display()), e)
    })?;
    o.buf.clear();
    Ok(())
}

/// Makes an output durable and visible, then points the keydir at its records.
fn commit(inner: &Inner, mut o: Output, stats: &mut CompactionStats) -> EngineResult<()> {
    flush(&mut o)?;
    let name = segment_name(o.id);
    // IMPORTANT: data durable, then the name, then the directory entry, before anything refers to it.
    o.file
        .sync_data()
        .map_err(|e| EngineError::io(format!("syncing {name}"), e))?;
    // A hint left by an earlier, failed use of this id must never describe the new file.
    remove_if_present(inner, &hint::hint_name(o.id))?;
    inner
        .opts
        .fs
        .rename(&o.tmp, &path_in(&inner.dir, &name))
        .map_err(|e| EngineError::io(format!("renaming {name}"), e))?;
    inner
        .opts
        .fs
        .sync_dir(&inner.dir)
        .map_err(|e| EngineError::io("syncing data directory", e))?;
    let entries: Vec<(u64, &[u8], Location)> = o
        .remaps
        .iter()
        .map(|(k, lsn, _, to)| (*lsn, &k[..], *to))
        .collect();
    if let Err(e) = hint::write(
        &*inner.opts.fs,
        &inner.dir,
        o.id,
        &hint::encode(o.id, o.len, &entries),
    ) {
        // Only start-up speed depends on it: the next open scans this segment instead.
        tracing::warn!("no hint file for {name}: {e}");
    }
    let path = path_in(&inner.dir, &name);
    let seg = Segment::new(
        o.id,
        path,
        inner.opts.fs.clone(),
        inner.budget.clone(),
        Some(o.file.clone()),
    );
    inner.update_segments(Some(seg), &[])?;
    inner.disk_bytes.fetch_add(o.len, Ordering::Relaxed);
    {
        let mut garbage = inner.publish.lock();
        for (key, _, from, to) in &o.remaps {
            if inner.index.get(key) == Some(*from) {
                inner.index.insert(key, *to);
                // The input's copy is dead now (counted even if this compaction fails later).
                garbage.add(from.segment, from.len as u64);
            } else {
                // Overwritten or deleted since it was copied: the copy is garbage already.
                garbage.add(o.id, to.len as u64);
            }
        }
        inner
            .garbage_bytes
            .store(garbage.total(), Ordering::Relaxed);
    }
    stats.output_segments += 1;
    stats.output_bytes += o.len;
    Ok(())
}
