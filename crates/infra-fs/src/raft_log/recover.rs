//! Opening a [`RaftLog`]: reading `VOTE` and `PURGED`, replaying the segments, cutting a torn tail of the
//! newest one, and finishing an interrupted purge (the rules are in the module doc of `raft_log`).

use std::path::Path;

use kv_domain::{EngineError, EngineResult};

use super::{
    small_file, LogSegment, Purged, RaftLog, RaftLogOptions, Recovering, ENTRY_KEY, PURGED,
    RECOVERING, VOTE,
};
use crate::codec::{
    decode_record, decode_segment_header, DecodeError, RecordKind, SEGMENT_HEADER_LEN,
};
use crate::segment::{parse_segment_name, scan_records, segment_name, ScanEnd};
use crate::vfs::{path_in, FileHandle};

/// What opening the log found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRecovery {
    /// Segments replayed.
    pub segments: usize,
    /// Entries held after recovery (above the purge point).
    pub entries: u64,
    /// Bytes cut from the newest segment's torn tail (never-acknowledged appends), if any.
    pub cut_bytes: u64,
    /// Segment files removed: a newest segment whose header never became durable, or segments an
    /// interrupted purge had not yet deleted.
    pub removed_segments: usize,
    /// Damage found at this open (entries lost that may have been acknowledged), if any: what and where.
    pub damage: Option<String>,
}

/// Where the valid prefix of the log ends.
struct Damage {
    /// Position (in id order) of the damaged segment.
    segment: usize,
    /// Where to cut it; `None`: remove it whole.
    cut_at: Option<u64>,
    /// The highest entry index known to have been held: the first one lost, or a higher one seen
    /// in a valid record past the damage.
    through: u64,
    reason: String,
}

impl Damage {
    fn from_segment(segment: usize, through: u64, reason: String) -> Self {
        Self {
            segment,
            cut_at: None,
            through,
            reason,
        }
    }
}

/// Every valid entry record in `file` between byte `from` and `len`, as (index, append tag): each run
/// of valid records is read in order, and after an invalid one the next valid record is searched byte
/// by byte (what lies between is damaged), to the end.
fn entries_from(file: &dyn FileHandle, from: u64, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut bytes = vec![0u8; len.saturating_sub(from) as usize];
    file.read_exact_at(&mut bytes, from)?;
    let entry_at = |i: usize| {
        bytes
            .get(i..)
            .and_then(|b| decode_record(b).ok())
            .filter(|r| r.key == ENTRY_KEY && r.header.kind == RecordKind::Put)
            .map(|r| {
                (
                    r.header.lsn,
                    r.header.timestamp_micros,
                    r.header.record_len(),
                )
            })
    };
    let mut found = Vec::new();
    let mut i = 0usize;
    while i < bytes.len() {
        match entry_at(i) {
            Some((lsn, tag, rec_len)) => {
                found.push((lsn, tag));
                i += rec_len.max(1);
            }
            None => i += 1,
        }
    }
    Ok(found)
}

/// The highest entry index of any valid entry record in `file` between byte `from` and `len`.
fn highest_index_from(file: &dyn FileHandle, from: u64, len: u64) -> std::io::Result<Option<u64>> {
    Ok(entries_from(file, from, len)?
        .iter()
        .map(|(lsn, _)| *lsn)
        .max())
}

/// Whether the valid `entries` found after an invalid record where entry `expected` belonged can all be
/// part of the append in flight when power failed (so nothing after the bad spot was acknowledged):
/// every one carries the same append tag ([`super::append_tag`]), of an append that began at or
/// before `expected`. A record of a later append proves the earlier one was synced, hence
/// acknowledged; a record without a tag (written before appends were tagged) proves nothing either
/// way and counts as damage.
fn only_the_last_append_is_torn(entries: &[(u64, u64)], expected: u64) -> bool {
    let Some(&(_, tag)) = entries.first() else {
        return true;
    };
    tag != 0 && tag - 1 <= expected && entries.iter().all(|&(_, t)| t == tag)
}

pub(super) fn open(dir: &Path, opts: RaftLogOptions) -> EngineResult<(RaftLog, LogRecovery)> {
    let fs = opts.fs.clone();
    fs.create_dir_all(dir)
        .map_err(|e| EngineError::io(format!("creating {}", dir.display()), e))?;
    let vote = small_file::load(&*fs, dir, VOTE)?;
    let purged = match small_file::load(&*fs, dir, PURGED)? {
        None => None,
        Some(payload) => {
            let (index, marker) =
                payload
                    .split_at_checked(8)
                    .ok_or_else(|| EngineError::Corrupted {
                        file: format!("raft/{PURGED}"),
                        offset: 0,
                        reason: "too short for its fields".into(),
                    })?;
            let mut le = [0u8; 8];
            le.copy_from_slice(index);
            Some(Purged {
                index: u64::from_le_bytes(le),
                marker: marker.to_vec(),
            })
        }
    };
    let mut ids: Vec<u32> = fs
        .list(dir)
        .map_err(|e| EngineError::io(format!("listing {}", dir.display()), e))?
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .collect();
    ids.sort_unstable();
    let mut report = LogRecovery::default();
    let mut segments: Vec<LogSegment> = Vec::new();
    let newest = ids.last().copied();
    // Whether segment position `pos` holds only purged entries, by the next segment's first index: an
    // interrupted purge (it deletes oldest first, syncing the directory once at the end) may leave such
    // segments, or holes between them, and what they held is not needed any more.
    let purged_index = purged.as_ref().map(|p| p.index);
    let wholly_purged = |pos: usize| -> bool {
        let (Some(purged), Some(&next)) = (purged_index, ids.get(pos + 1)) else {
            return false;
        };
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        fs.open(&path_in(dir, &segment_name(next)))
            .and_then(|f| f.read_exact_at(&mut header, 0))
            .ok()
            .and_then(|_| decode_segment_header(&header).ok())
            .is_some_and(|(hid, first)| hid == next && first <= purged + 1)
    };
    // The first damage found (see the module doc of `raft_log`): where the valid prefix ends.
    let mut damage: Option<Damage> = None;
    for (pos, &id) in ids.iter().enumerate() {
        let name = segment_name(id);
        let path = path_in(dir, &name);
        let io = |e| EngineError::io(format!("reading raft/{name}"), e);
        let file = fs.open(&path).map_err(io)?;
        let len = file.len().map_err(io)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let header_ok = len >= SEGMENT_HEADER_LEN as u64
            && file.read_exact_at(&mut header, 0).is_ok()
            && decode_segment_header(&header).is_ok_and(|(hid, _)| hid == id);
        let first = match decode_segment_header(&header) {
            Ok((_, first)) if header_ok => first,
            _ if Some(id) == newest
                && highest_index_from(&*file, SEGMENT_HEADER_LEN as u64, len)
                    .map_err(io)?
                    .is_some() =>
            {
                // Entries follow a bad header: records are appended only once the header is durable,
                // so the header was damaged after entries were acknowledged.
                let through = segments
                    .last()
                    .and_then(LogSegment::last)
                    .map_or(0, |l| l + 1);
                damage = Some(Damage::from_segment(
                    pos,
                    through,
                    format!("raft/{name}: bad segment header before valid entries"),
                ));
                break;
            }
            _ if Some(id) == newest => {
                // Its header never became durable, so no entry was ever acknowledged from it.
                fs.remove(&path)
                    .and_then(|_| fs.sync_dir(dir))
                    .map_err(|e| EngineError::io(format!("removing raft/{name}"), e))?;
                report.removed_segments += 1;
                continue;
            }
            _ if wholly_purged(pos) => {
                // Left by an interrupted purge: it goes below, with the other purged segments.
                fs.remove(&path)
                    .and_then(|_| fs.sync_dir(dir))
                    .map_err(|e| EngineError::io(format!("removing raft/{name}"), e))?;
                report.removed_segments += 1;
                continue;
            }
            _ => {
                let through = segments
                    .last()
                    .and_then(LogSegment::last)
                    .map_or(0, |l| l + 1);
                damage = Some(Damage::from_segment(
                    pos,
                    through,
                    format!("raft/{name}: bad segment header"),
                ));
                break;
            }
        };
        let mut seg = LogSegment {
            id,
            file,
            first,
            entries: Vec::new(),
            end: SEGMENT_HEADER_LEN as u64,
        };
        if let (Some(prev), true) = (segments.last().and_then(LogSegment::last), len > seg.end) {
            // A hole wholly below the purge point is what an interrupted purge leaves: no damage.
            let hole_purged = purged_index.is_some_and(|p| seg.first <= p + 1);
            if seg.first != prev + 1 && !hole_purged {
                damage = Some(Damage::from_segment(
                    pos,
                    prev + 1,
                    format!(
                        "raft/{name} starts at entry {} after entry {prev}: entries are missing",
                        seg.first
                    ),
                ));
                break;
            }
        }
        let ended = scan_records(&*seg.file, SEGMENT_HEADER_LEN as u64, len, |offset, rec| {
            let want = seg.first + seg.entries.len() as u64;
            if rec.header.kind != RecordKind::Put || rec.key != ENTRY_KEY {
                return Err(DecodeError::OutOfSequence(
                    "a record that is not a raft log entry",
                ));
            }
            if rec.header.lsn != want {
                return Err(DecodeError::OutOfSequence(
                    "a raft log entry out of index order",
                ));
            }
            let rec_len = rec.header.record_len();
            seg.entries.push((offset, crate::codec::u32_field(rec_len)));
            seg.end = offset + rec_len as u64;
            Ok(())
        })
        .map_err(io)?;
        if let ScanEnd::Invalid { offset, error } = ended {
            let last = seg.last().or_else(|| seg.first.checked_sub(1)).unwrap_or(0);
            let expected = seg.first + seg.entries.len() as u64;
            let after = entries_from(&*seg.file, offset + 1, len).map_err(io)?;
            let after: Vec<(u64, u64)> = after.into_iter().filter(|(i, _)| *i > last).collect();
            if Some(id) != newest && wholly_purged(pos) {
                // A bad record in a segment only purged entries are left in: it goes below anyway.
                seg.end = offset;
            } else if Some(id) == newest && only_the_last_append_is_torn(&after, expected) {
                // A torn tail of the newest segment, within the append in flight: never acknowledged.
                seg.file
                    .set_len(offset)
                    .and_then(|_| seg.file.sync_data())
                    .map_err(|e| EngineError::io(format!("cutting raft/{name}"), e))?;
                report.cut_bytes += len - offset;
                seg.end = offset;
            } else {
                // Entries follow the invalid record (or it is in a sealed segment): acknowledged
                // entries were lost, not a torn append.
                let seen = after.iter().map(|(i, _)| *i).max();
                damage = Some(Damage {
                    segment: pos,
                    cut_at: Some(offset),
                    through: seen.unwrap_or(0).max(last + 1),
                    reason: format!("raft/{name} at byte {offset}: {error}"),
                });
                segments.push(seg);
                break;
            }
        }
        segments.push(seg);
    }
    let mut recovering = match small_file::load(&*fs, dir, RECOVERING)? {
        None => None,
        Some(payload) => {
            Some(
                Recovering::decode(&payload).ok_or_else(|| EngineError::Corrupted {
                    file: format!("raft/{RECOVERING}"),
                    offset: 0,
                    reason: "too short for its fields".into(),
                })?,
            )
        }
    };
    if let Some(mut damage) = damage {
        // Entries held past the damage: in the damaged segment itself when it goes whole (its tail was
        // read already when it is cut), and in every later one, whose header's first index also says
        // the entry before it was held. The node must get at least that far again.
        let first_unread = damage.segment + usize::from(damage.cut_at.is_some());
        for &id in ids.iter().skip(first_unread) {
            let name = segment_name(id);
            let io = |e| EngineError::io(format!("reading raft/{name}"), e);
            let file = fs.open(&path_in(dir, &name)).map_err(io)?;
            let len = file.len().map_err(io)?;
            let seen = highest_index_from(&*file, SEGMENT_HEADER_LEN as u64, len).map_err(io)?;
            if let Some(seen) = seen {
                damage.through = damage.through.max(seen);
            }
            let mut header = [0u8; SEGMENT_HEADER_LEN];
            if file.read_exact_at(&mut header, 0).is_ok() {
                if let Ok((hid, first)) = decode_segment_header(&header) {
                    if hid == id && first > 0 {
                        damage.through = damage.through.max(first - 1);
                    }
                }
            }
        }
        // An earlier recovery may have known of more.
        if let Some(earlier) = &recovering {
            damage.through = damage.through.max(earlier.through);
        }
        // IMPORTANT: the marker is durable before anything is cut, so a crash during the repair (or any
        // time before the node has caught up again) still finds it: the evidence goes with the cut.
        tracing::error!(
            damage = %damage.reason,
            held_through = damage.through,
            "raft log damaged: keeping the entries before it; this node will not vote or lead until it has caught up with a leader"
        );
        let marker = Recovering {
            through: damage.through,
            // The vote is intact (a damaged `VOTE` fails the open), so it needs no floor; an
            // earlier recovery's floor is kept.
            vote_floor: recovering.as_ref().and_then(|r| r.vote_floor),
            reason: damage.reason.clone(),
        };
        small_file::store(&*fs, dir, RECOVERING, &marker.encode())?;
        recovering = Some(marker);
        report.damage = Some(damage.reason.clone());
        let keep = damage.segment + usize::from(damage.cut_at.is_some());
        for &id in ids.iter().skip(keep).rev() {
            let name = segment_name(id);
            match fs.remove(&path_in(dir, &name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(EngineError::io(format!("removing raft/{name}"), e))
                }
                _ => {}
            }
            fs.sync_dir(dir)
                .map_err(|e| EngineError::io(format!("removing raft/{name}"), e))?;
            report.removed_segments += 1;
        }
        segments.truncate(keep);
        if let (Some(seg), Some(offset)) = (segments.last_mut(), damage.cut_at) {
            let len = seg
                .file
                .len()
                .map_err(|e| EngineError::io("reading raft/".to_string(), e))?;
            seg.file
                .set_len(offset)
                .and_then(|_| seg.file.sync_data())
                .map_err(|e| {
                    EngineError::io(format!("cutting raft/{}", segment_name(seg.id)), e)
                })?;
            report.cut_bytes += len - offset;
            seg.end = offset;
        }
    }
    let mut log = RaftLog {
        dir: dir.to_path_buf(),
        opts,
        segments,
        purged,
        vote,
        recovering,
        poison: None,
    };
    let before = log.segments.len();
    log.remove_purged_segments()?;
    report.removed_segments += before - log.segments.len();
    report.segments = log.segments.len();
    report.entries = match (log.first_index(), log.last_index()) {
        (Some(f), Some(l)) => l - f + 1,
        _ => 0,
    };
    Ok((log, report))
}
