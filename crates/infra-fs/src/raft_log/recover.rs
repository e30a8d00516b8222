//! Opening a [`RaftLog`]: reading `VOTE` and `PURGED`, replaying the segments, cutting a torn tail of the
//! newest one, and finishing an interrupted purge (the rules are in the module doc of `raft_log`).

use std::path::Path;

use kv_domain::{EngineError, EngineResult};

use super::{small_file, LogSegment, Purged, RaftLog, RaftLogOptions, ENTRY_KEY, PURGED, VOTE};
use crate::codec::{decode_segment_header, DecodeError, RecordKind, SEGMENT_HEADER_LEN};
use crate::segment::{parse_segment_name, scan_records, segment_name, ScanEnd};
use crate::vfs::path_in;

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
                        reason: "shorter than an index".into(),
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
    for id in ids {
        let name = segment_name(id);
        let path = path_in(dir, &name);
        let corrupt = |offset: u64, reason: String| EngineError::Corrupted {
            file: format!("raft/{name}"),
            offset,
            reason,
        };
        let io = |e| EngineError::io(format!("reading raft/{name}"), e);
        let file = fs.open(&path).map_err(io)?;
        let len = file.len().map_err(io)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let header_ok = len >= SEGMENT_HEADER_LEN as u64
            && file.read_exact_at(&mut header, 0).is_ok()
            && decode_segment_header(&header).is_ok_and(|(hid, _)| hid == id);
        if !header_ok {
            if Some(id) == newest {
                // Its header never became durable, so no entry was ever acknowledged from it.
                fs.remove(&path)
                    .and_then(|_| fs.sync_dir(dir))
                    .map_err(|e| EngineError::io(format!("removing raft/{name}"), e))?;
                report.removed_segments += 1;
                continue;
            }
            return Err(corrupt(0, "bad segment header".into()));
        }
        let (_, first) = decode_segment_header(&header).map_err(|e| corrupt(0, e.to_string()))?;
        let mut seg = LogSegment {
            id,
            file,
            first,
            entries: Vec::new(),
            end: SEGMENT_HEADER_LEN as u64,
        };
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
            if Some(id) != newest {
                return Err(corrupt(offset, error.to_string()));
            }
            // A torn tail of the newest segment: appends past it were never acknowledged.
            seg.file
                .set_len(offset)
                .and_then(|_| seg.file.sync_data())
                .map_err(|e| EngineError::io(format!("cutting raft/{name}"), e))?;
            report.cut_bytes += len - offset;
            seg.end = offset;
        }
        if let (Some(prev), Some(_)) = (segments.last().and_then(LogSegment::last), seg.last()) {
            if seg.first != prev + 1 {
                return Err(corrupt(
                    SEGMENT_HEADER_LEN as u64,
                    format!(
                        "starts at entry {} after entry {prev}: entries are missing",
                        seg.first
                    ),
                ));
            }
        }
        segments.push(seg);
    }
    let mut log = RaftLog {
        dir: dir.to_path_buf(),
        opts,
        segments,
        purged,
        vote,
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
