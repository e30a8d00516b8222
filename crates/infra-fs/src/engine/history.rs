//! Reading the log back for replication ([`kv_domain::LogShipping::read_log`]), and the history that compaction
//! must keep for followers being served.
//!
//! ## Where history lives
//! Normal segments (ids from `FIRST_SEGMENT_ID` up) hold every write in LSN order; a segment's header carries
//! its *base LSN*, the last LSN before its first record, so segment `s` holds the LSNs
//! `(base(s), base(next(s))]`. Compaction outputs (ids below) hold only live records in key order: they are
//! not history. So the readable history starts after the base LSN of the oldest normal segment; a reader
//! whose cursor is older gets [`LogRead::Gone`] and must take a snapshot.
//!
//! ## What may be read
//! Only entries up to the durable LSN are returned, so a follower never holds a write that a leader crash
//! could take back. The active segment is read while writers append to it: a record beyond the durable
//! LSN, or one still being written (it does not decode yet), ends the read; the same in a sealed segment
//! is corruption and is reported.
//!
//! ## Retention
//! `retain_after` (set by the replication layer to the oldest position of the followers it is serving)
//! keeps compaction away from every normal segment holding an LSN above it, so a follower in the middle of
//! a catch-up or a snapshot never loses the history it needs next (at most one snapshot per catch-up).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kv_domain::{
    BatchOp, EngineError, EngineResult, Key, LogCursor, LogEntry, LogRead, Lsn, Value,
};

use super::Inner;
use crate::codec::{DecodeError, RecordKind, SEGMENT_HEADER_LEN};
use crate::segment::{read_segment_header, scan_records, ScanEnd, Segment, FIRST_SEGMENT_ID};

/// `retain_after` value meaning "no reader needs history".
pub(super) const RETAIN_NOTHING: u64 = u64::MAX;

/// The base LSN in `seg`'s header.
pub(super) fn base_lsn(seg: &Arc<Segment>) -> EngineResult<u64> {
    let io = |e| EngineError::io(format!("reading the header of {}", seg.name), e);
    let file = seg.file().map_err(io)?;
    let len = file.len().map_err(io)?;
    match read_segment_header(&*file, len).map_err(io)? {
        Ok((_, base)) => Ok(base),
        Err(e) => Err(EngineError::Corrupted {
            file: seg.name.clone(),
            offset: 0,
            reason: e.to_string(),
        }),
    }
}

/// The history segments, oldest first: the run of consecutive normal segment ids that ends at the active
/// segment. Compaction may keep an older normal segment that had nothing to reclaim while removing its
/// neighbours; what lies before such a gap is no longer a complete history.
fn history_segments(inner: &Inner) -> Vec<Arc<Segment>> {
    let table = inner.segments.read();
    let mut run: Vec<Arc<Segment>> = Vec::new();
    for (_, seg) in table.range(FIRST_SEGMENT_ID..).rev() {
        if run.last().is_some_and(|newer| newer.id != seg.id + 1) {
            break;
        }
        run.push(seg.clone());
    }
    run.reverse();
    run
}

/// Whether compaction may take the sealed normal segment `seg`, whose successor starts after `next_base`:
/// only if every LSN it holds is at or below the retention point.
pub(super) fn compactable(inner: &Inner, next_base: u64) -> bool {
    let retain = inner.retain_after.load(Ordering::Acquire);
    retain == RETAIN_NOTHING || next_base <= retain
}

pub(super) fn read_log(inner: &Inner, from: &LogCursor, max_bytes: usize) -> EngineResult<LogRead> {
    let limit = inner.shippable_lsn();
    let nothing = || LogRead::Entries {
        entries: Vec::new(),
        next: from.clone(),
    };
    if from.after.0 >= limit {
        return Ok(nothing());
    }
    let segs = history_segments(inner);
    // Where to start: the cursor's position if its segment still exists, else the segment holding the
    // entry after `from.after`.
    let mut start = from
        .position
        .and_then(|(id, offset)| segs.iter().position(|s| s.id == id).map(|i| (i, offset)));
    if start.is_none() {
        let mut found = None;
        for (i, seg) in segs.iter().enumerate() {
            if base_lsn(seg)? <= from.after.0 {
                found = Some(i);
            } else {
                break;
            }
        }
        match found {
            Some(i) => start = Some((i, SEGMENT_HEADER_LEN as u64)),
            None => {
                let oldest = match segs.first() {
                    Some(s) => base_lsn(s)? + 1,
                    None => limit + 1,
                };
                return Ok(LogRead::Gone {
                    oldest: Lsn(oldest),
                });
            }
        }
    }
    let Some((first, mut offset)) = start else {
        return Ok(nothing());
    };
    let mut entries: Vec<LogEntry> = Vec::new();
    let mut bytes = 0usize;
    let mut position = from.position;
    let mut last = from.after.0;
    for (i, seg) in segs.iter().enumerate().skip(first) {
        if i > first {
            offset = SEGMENT_HEADER_LEN as u64;
        }
        let sealed = i + 1 < segs.len();
        let io = |e| EngineError::io(format!("reading {}", seg.name), e);
        let file = seg.file().map_err(io)?;
        let end = file.len().map_err(io)?;
        let mut batch: Option<(u64, u32, Vec<BatchOp>)> = None;
        let mut full = false;
        // Offset just past the last complete entry of this segment.
        let mut entry_end = offset;
        let scanned = scan_records(&*file, offset, end, |at, r| {
            let lsn = r.header.lsn;
            if batch.is_none() && (lsn > limit || full) {
                return Err(DecodeError::OutOfSequence("stop"));
            }
            let op = match r.header.kind {
                RecordKind::BatchHeader => {
                    batch = Some((lsn, r.batch_count(), Vec::new()));
                    return Ok(());
                }
                RecordKind::Put => BatchOp::Put {
                    key: Key::from(r.key),
                    value: Value::from(r.value),
                },
                RecordKind::Tombstone => BatchOp::Delete {
                    key: Key::from(r.key),
                },
            };
            let record_end = at + r.header.record_len() as u64;
            let done = match batch.as_mut() {
                Some((b_lsn, remaining, ops)) => {
                    if *b_lsn != lsn {
                        return Err(DecodeError::OutOfSequence("batch member missing"));
                    }
                    ops.push(op);
                    *remaining -= 1;
                    if *remaining > 0 {
                        return Ok(());
                    }
                    let (_, _, ops) = batch.take().unwrap_or_default();
                    LogEntry { lsn: Lsn(lsn), ops }
                }
                None => LogEntry {
                    lsn: Lsn(lsn),
                    ops: vec![op],
                },
            };
            entry_end = record_end;
            if done.lsn.0 > last {
                bytes += done.payload_bytes().max(1);
                last = done.lsn.0;
                entries.push(done);
            }
            full = bytes >= max_bytes;
            Ok(())
        })
        .map_err(io)?;
        position = Some((seg.id, entry_end));
        match scanned {
            ScanEnd::Clean => {}
            ScanEnd::Invalid {
                error: DecodeError::OutOfSequence("stop"),
                ..
            } => break,
            ScanEnd::Invalid { offset: at, error } if sealed => {
                return Err(EngineError::Corrupted {
                    file: seg.name.clone(),
                    offset: at,
                    reason: format!("while reading the log for replication: {error}"),
                })
            }
            // The active segment's tail is still being written.
            ScanEnd::Invalid { .. } => break,
        }
        if full {
            break;
        }
    }
    Ok(LogRead::Entries {
        entries,
        next: LogCursor {
            after: Lsn(last),
            position,
        },
    })
}
