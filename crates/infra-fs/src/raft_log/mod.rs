//! [`RaftLog`]: a durable, checksummed log of consecutive numbered entries, and a vote, for the Raft
//! cluster (`crates/infra-raft` adapts it to openraft's `RaftLogStorage`). It knows nothing of Raft's
//! types: an entry is an index and opaque bytes, the vote and the purge marker are opaque bytes.
//!
//! ## Files, in `<data dir>/raft/`
//! - Segments `NNNNNNNNNN.seg`, with the engine's segment header ([`crate::codec`]; its base LSN field holds
//!   the index of the segment's first entry) and one put record per entry: LSN = the entry's index, key `e`,
//!   value = the entry's bytes, the timestamp field = the append tag (the first index of the append the
//!   record was written by, plus one; an append never spans segments), CRC32C over it all. Ids count up from 1; a new segment starts when the
//!   active one would pass `max_segment_bytes`, after a truncation emptied the log, or after a purge
//!   removed the active one.
//! - `VOTE`: the latest vote; `PURGED`: the index of the last purged entry, then the caller's marker (its
//!   log id). Both are [`small_file`]s: replaced whole, atomically, checksummed.
//! - `RECOVERING` (a [`small_file`] too): present while the log is recovering from damage, or from a
//!   loss its node learned of from its peers ([`RaftLog::start_recovery`]); it holds the highest index
//!   the log is known to have held, the lowest vote its node may start with, and what was found
//!   ([`Recovering`]).
//!
//! ## Invariants (what openraft's storage contract asks, and where it is kept)
//! - **No holes**: entries are consecutive across all segments; `append` refuses an entry that does not
//!   follow the last one, and recovery treats a gap (a missing segment file) as damage (below).
//! - **Durable before acknowledged**: `append` and `truncate_from` return only after `fdatasync`;
//!   `save_vote` only after its file and directory entry are durable.
//! - **Truncation never leaves a hole**: whole segments are removed newest first (each removal made
//!   durable before the next), then the segment holding the first removed entry is cut and fsynced, so a
//!   crash in between leaves a prefix of the old log.
//! - **Purge records before it deletes**: `PURGED` is stored first, then segments wholly at or below it
//!   are removed oldest first; recovery finishes an interrupted purge and ignores entries at or below it.
//! - **Only the newest segment can be torn**: a segment is fsynced before its successor is created; at
//!   open, an invalid record in the newest segment followed by no valid record, or only by records of
//!   the same (last) append, is a torn, never-acknowledged tail and is cut ([`LogRecovery::cut_bytes`]):
//!   a power loss may persist a later page of an unsynced append before an earlier one.
//! - **Damage is remembered, not hidden** (protocol-aware recovery, Alagappan et al., FAST '18): an
//!   invalid record with valid ones after it, a damaged sealed segment, a bad header of a sealed segment
//!   or a missing segment means entries that were acknowledged are gone. Recovery stores `RECOVERING`
//!   (IMPORTANT: before cutting, so the evidence survives a crash), keeps the valid prefix before the
//!   damage and removes the rest ([`LogRecovery::damage`]). While [`RaftLog::recovering`] is set the
//!   node must neither vote nor campaign (Raft's election rule counts on a voter remembering what it
//!   acknowledged); `crates/infra-raft` enforces that and calls [`RaftLog::finish_recovery`] once its
//!   node has applied entries through [`Recovering::through`] again. A damaged `VOTE` or `PURGED` still fails the open: a forgotten
//!   vote could be cast twice in one term.
//! - **Fail-stop**: after a failed write or sync the log refuses every later write (the kernel may have
//!   dropped the dirty pages; a retry that succeeds proves nothing).

pub mod in_place;
mod recover;
pub mod small_file;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kv_domain::{EngineError, EngineResult};

use crate::codec::{decode_record, encode_record, encode_segment_header, RecordKind};
use crate::codec::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::segment::segment_name;
use crate::vfs::{path_in, FileHandle, FileSystem, RealFs};

pub use recover::LogRecovery;

/// The tag every record of one append carries in the record header's timestamp field (unused by the
/// Raft log otherwise): the index of the append's first entry plus one (0: written before appends were
/// tagged). Recovery tells a torn append (every valid record after the bad spot of one append, the
/// last) from damage (a record of a later append follows) by it.
fn append_tag(first_index: &u64) -> u64 {
    first_index + 1
}

/// Key of every entry record.
const ENTRY_KEY: &[u8] = b"e";
const VOTE: &str = "VOTE";
const PURGED: &str = "PURGED";
const RECOVERING: &str = "RECOVERING";

/// Options of a [`RaftLog`].
#[derive(Debug, Clone)]
pub struct RaftLogOptions {
    /// A new segment starts once the active one would grow past this many bytes.
    pub max_segment_bytes: u64,
    /// The file system (the real one, or a simulated one in tests).
    pub fs: Arc<dyn FileSystem>,
}

impl Default for RaftLogOptions {
    fn default() -> Self {
        Self {
            max_segment_bytes: 64 << 20,
            fs: Arc::new(RealFs),
        }
    }
}

/// The last purged entry: its index and the caller's marker for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    /// Index of the last purged entry.
    pub index: u64,
    /// What the caller stored with it (openraft: the serialized log id).
    pub marker: Vec<u8>,
}

/// What `RECOVERING` holds: how far the log reached before it was damaged, the lowest vote its node
/// may start with, and what was found.
///
/// Format, in a [`small_file`]: `through` (u64, little-endian); then, when there is a floor, the byte
/// `0xFF` and the floor's term and node id (u64 each, little-endian); then the reason (UTF-8). A
/// marker without a floor (all of them before floors were kept) has no `0xFF` after `through`: no
/// UTF-8 text starts with that byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovering {
    /// The highest entry index the log is known to have held (the first lost one, or a higher one
    /// seen in a valid record past the damage).
    pub through: u64,
    /// The highest vote its node may have given, when its own vote is lost with the log (a wiped
    /// directory: its peers' highest); `None` when the damage is in its own log, whose vote is intact.
    /// Kept here, beside the evidence, so a crash before the matching vote is stored does not leave a
    /// restart with an older one.
    pub vote_floor: Option<VoteFloor>,
    /// What was found, and where.
    pub reason: String,
}

/// A vote as Raft orders it: by term, then by the node voted for (openraft's leader ids), so the
/// derived order is the one to compare floors with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct VoteFloor {
    /// The term.
    pub term: u64,
    /// The node voted for.
    pub node_id: u64,
}

/// Marks a marker with a floor (see [`Recovering`]).
const WITH_FLOOR: u8 = 0xFF;

impl Recovering {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.through.to_le_bytes().to_vec();
        if let Some(floor) = self.vote_floor {
            out.push(WITH_FLOOR);
            out.extend_from_slice(&floor.term.to_le_bytes());
            out.extend_from_slice(&floor.node_id.to_le_bytes());
        }
        out.extend_from_slice(self.reason.as_bytes());
        out
    }

    fn decode(payload: &[u8]) -> Option<Self> {
        let u64_at = |b: &[u8]| Some(u64::from_le_bytes(b.try_into().ok()?));
        let (through, rest) = payload.split_at_checked(8)?;
        let (vote_floor, reason) = match rest.split_first() {
            Some((&WITH_FLOOR, rest)) => {
                let (term, rest) = rest.split_at_checked(8)?;
                let (node_id, reason) = rest.split_at_checked(8)?;
                let floor = VoteFloor {
                    term: u64_at(term)?,
                    node_id: u64_at(node_id)?,
                };
                (Some(floor), reason)
            }
            _ => (None, rest),
        };
        Some(Self {
            through: u64_at(through)?,
            vote_floor,
            reason: String::from_utf8_lossy(reason).into_owned(),
        })
    }
}

/// One segment of the log.
#[derive(Debug)]
struct LogSegment {
    id: u32,
    file: Arc<dyn FileHandle>,
    /// Index of `entries[0]` (or of the first entry to come, when empty).
    first: u64,
    /// Offset and length of each entry's record, in index order.
    entries: Vec<(u64, u32)>,
    /// Where the next record goes.
    end: u64,
}

impl LogSegment {
    fn last(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.first + self.entries.len() as u64 - 1)
    }
}

/// See the module doc. Not internally synchronised: the caller serialises writes (openraft does) and
/// wraps it in a lock to share it with readers.
#[derive(Debug)]
pub struct RaftLog {
    dir: PathBuf,
    opts: RaftLogOptions,
    /// Oldest first; the last one is the active segment.
    segments: Vec<LogSegment>,
    purged: Option<Purged>,
    vote: Option<Vec<u8>>,
    /// The damage the log is recovering from (`RECOVERING`), if it is.
    recovering: Option<Recovering>,
    /// Set by the first failed write or sync.
    poison: Option<String>,
}

impl RaftLog {
    /// Opens (creating if needed) the log in `dir`, recovering as the module doc says.
    pub fn open(dir: impl AsRef<Path>, opts: RaftLogOptions) -> EngineResult<(Self, LogRecovery)> {
        recover::open(dir.as_ref(), opts)
    }

    /// The index of the first entry held (after the purged ones), if any.
    pub fn first_index(&self) -> Option<u64> {
        let first = self.segments.iter().find(|s| !s.entries.is_empty())?.first;
        let first = match &self.purged {
            Some(p) => first.max(p.index + 1),
            None => first,
        };
        (self.last_index()? >= first).then_some(first)
    }

    /// The index of the last entry held, if any.
    pub fn last_index(&self) -> Option<u64> {
        let last = self.segments.iter().rev().find_map(|s| s.last())?;
        match &self.purged {
            Some(p) if last <= p.index => None,
            _ => Some(last),
        }
    }

    /// The last purged entry, if any was purged.
    pub fn purged(&self) -> Option<&Purged> {
        self.purged.as_ref()
    }

    /// The vote last saved, if any.
    pub fn vote(&self) -> Option<&[u8]> {
        self.vote.as_deref()
    }

    /// The damage this log is recovering from, if it is: it lost entries that may have been
    /// acknowledged, so its node must not vote or lead until it holds entries through
    /// [`Recovering::through`] again (see the module doc). Survives reopens until
    /// [`RaftLog::finish_recovery`].
    pub fn recovering(&self) -> Option<&Recovering> {
        self.recovering.as_ref()
    }

    /// Starts a recovery the log cannot see by itself: its node learned from its peers that it had
    /// acknowledged entries this log does not hold (a wiped directory). Stores `marker` as
    /// `RECOVERING` durably (a marker already there is kept, with the higher `through` and
    /// `vote_floor`), so a restart before the node has caught up still knows.
    pub fn start_recovery(&mut self, marker: Recovering) -> EngineResult<()> {
        self.check_writable()?;
        let marker = match self.recovering.take() {
            Some(old) => Recovering {
                through: old.through.max(marker.through),
                vote_floor: old.vote_floor.max(marker.vote_floor),
                reason: old.reason,
            },
            None => marker,
        };
        let stored = small_file::store(&*self.opts.fs, &self.dir, RECOVERING, &marker.encode());
        self.recovering = Some(marker);
        stored.inspect_err(|e| self.poison(e))
    }

    /// Ends the recovery: the node has fetched what its log lost. Removes `RECOVERING` durably.
    pub fn finish_recovery(&mut self) -> EngineResult<()> {
        if self.recovering.is_none() {
            return Ok(());
        }
        let fs = self.opts.fs.clone();
        match fs.remove(&path_in(&self.dir, RECOVERING)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(EngineError::io(format!("removing raft/{RECOVERING}"), e))
            }
            _ => {}
        }
        fs.sync_dir(&self.dir)
            .map_err(|e| EngineError::io(format!("removing raft/{RECOVERING}"), e))?;
        self.recovering = None;
        Ok(())
    }

    /// Saves `vote` durably, replacing the previous one.
    pub fn save_vote(&mut self, vote: &[u8]) -> EngineResult<()> {
        self.check_writable()?;
        small_file::store(&*self.opts.fs, &self.dir, VOTE, vote).inspect_err(|e| self.poison(e))?;
        self.vote = Some(vote.to_vec());
        Ok(())
    }

    /// Appends `entries` (index, bytes), which must be consecutive and follow the last entry held (or the
    /// last purged one), durably: returns after `fdatasync`.
    pub fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> EngineResult<()> {
        self.check_writable()?;
        let mut next = self.next_index();
        let mut first_of_append: Option<u64> = None;
        let mut buf = Vec::new();
        // (index, offset in buf, length) of each encoded record.
        let mut encoded: Vec<(u64, usize, u32)> = Vec::new();
        for (index, bytes) in entries {
            if let Some(want) = next {
                if index != want {
                    return Err(EngineError::InvalidInput(format!(
                        "raft log: entry {index} appended where entry {want} must come next"
                    )));
                }
            }
            let at = buf.len();
            let tag = append_tag(first_of_append.get_or_insert(index));
            let len = encode_record(&mut buf, RecordKind::Put, index, tag, ENTRY_KEY, bytes);
            encoded.push((index, at, crate::codec::u32_field(len)));
            next = Some(index + 1);
        }
        let Some(&(first_index, _, _)) = encoded.first() else {
            return Ok(());
        };
        let active_full = self.segments.last().is_none_or(|s| {
            !s.entries.is_empty() && s.end + buf.len() as u64 > self.opts.max_segment_bytes
        });
        if active_full {
            self.start_segment(first_index)?;
        }
        let Some(seg) = self.segments.last_mut() else {
            return Err(EngineError::Corrupted {
                file: "raft".into(),
                offset: 0,
                reason: "no active segment after starting one".into(),
            });
        };
        if seg.entries.is_empty() {
            seg.first = first_index;
        }
        let start = seg.end;
        let written = seg
            .file
            .write_all_at(&buf, start)
            .and_then(|_| seg.file.sync_data());
        if let Err(e) = written {
            let err = EngineError::io(format!("appending to raft/{}", segment_name(seg.id)), e);
            self.poison(&err);
            return Err(err);
        }
        for (_, at, len) in encoded {
            seg.entries.push((start + at as u64, len));
        }
        seg.end = start + buf.len() as u64;
        Ok(())
    }

    /// The entries with indexes in `[from, to)` that the log holds, each verified (CRC, index).
    pub fn entries(&self, from: u64, to: u64) -> EngineResult<Vec<(u64, Vec<u8>)>> {
        let (Some(first), Some(last)) = (self.first_index(), self.last_index()) else {
            return Ok(Vec::new());
        };
        let (from, to) = (from.max(first), to.min(last + 1));
        let mut out = Vec::with_capacity(to.saturating_sub(from) as usize);
        for seg in &self.segments {
            let Some(seg_last) = seg.last() else { continue };
            if seg_last < from || seg.first >= to {
                continue;
            }
            for index in from.max(seg.first)..to.min(seg_last + 1) {
                let (offset, len) = seg.entries[(index - seg.first) as usize];
                let mut bytes = vec![0u8; len as usize];
                let name = segment_name(seg.id);
                seg.file
                    .read_exact_at(&mut bytes, offset)
                    .map_err(|e| EngineError::io(format!("reading raft/{name} at {offset}"), e))?;
                let corrupt = |reason: String| EngineError::Corrupted {
                    file: format!("raft/{name}"),
                    offset,
                    reason,
                };
                let rec = decode_record(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if rec.header.lsn != index || rec.header.kind != RecordKind::Put {
                    return Err(corrupt(format!("expected entry {index}, found {rec:?}")));
                }
                let value_at = RECORD_HEADER_LEN + ENTRY_KEY.len();
                bytes.drain(..value_at);
                out.push((index, bytes));
            }
        }
        Ok(out)
    }

    /// Removes every entry from `index` on (inclusive), durably. A no-op past the last entry.
    pub fn truncate_from(&mut self, index: u64) -> EngineResult<()> {
        self.check_writable()?;
        let fs = self.opts.fs.clone();
        // Whole segments starting at or after `index`, newest first, each removal durable before the next;
        // an empty one too (a crash right after a rotation leaves one), else the cut below would stop at it.
        while let Some(seg) = self.segments.last() {
            if !seg.entries.is_empty() && seg.first < index {
                break;
            }
            let name = segment_name(seg.id);
            fs.remove(&path_in(&self.dir, &name))
                .and_then(|_| fs.sync_dir(&self.dir))
                .map_err(|e| EngineError::io(format!("removing raft/{name}"), e))
                .inspect_err(|e| self.poison(e))?;
            self.segments.pop();
        }
        let Some(seg) = self.segments.last_mut() else {
            return Ok(());
        };
        let Some(last) = seg.last() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        let keep = (index - seg.first) as usize;
        let cut_at = seg.entries[keep].0;
        let name = segment_name(seg.id);
        let cut = seg.file.set_len(cut_at).and_then(|_| seg.file.sync_data());
        if let Err(e) = cut {
            let err = EngineError::io(format!("truncating raft/{name}"), e);
            self.poison(&err);
            return Err(err);
        }
        seg.entries.truncate(keep);
        seg.end = cut_at;
        Ok(())
    }

    /// Removes every entry up to `index` (inclusive): stores `PURGED` (index and `marker`) first, then
    /// deletes the segments wholly at or below it. `index` may lie past the last entry (a snapshot
    /// installed beyond the log); the next append must then be `index + 1`.
    pub fn purge_through(&mut self, index: u64, marker: &[u8]) -> EngineResult<()> {
        self.check_writable()?;
        if self.purged.as_ref().is_some_and(|p| p.index >= index) {
            return Ok(());
        }
        let mut payload = index.to_le_bytes().to_vec();
        payload.extend_from_slice(marker);
        small_file::store(&*self.opts.fs, &self.dir, PURGED, &payload)
            .inspect_err(|e| self.poison(e))?;
        self.purged = Some(Purged {
            index,
            marker: marker.to_vec(),
        });
        self.remove_purged_segments()
    }

    /// Deletes, oldest first, the segments whose entries are all at or below the purge point (an empty
    /// active segment is kept only if it starts after it).
    fn remove_purged_segments(&mut self) -> EngineResult<()> {
        let Some(purged) = self.purged.as_ref().map(|p| p.index) else {
            return Ok(());
        };
        let fs = self.opts.fs.clone();
        while let Some(seg) = self.segments.first() {
            let wholly_purged = match seg.last() {
                Some(last) => last <= purged,
                None => seg.first <= purged,
            };
            if !wholly_purged {
                break;
            }
            let name = segment_name(seg.id);
            fs.remove(&path_in(&self.dir, &name))
                .map_err(|e| EngineError::io(format!("removing raft/{name}"), e))
                .inspect_err(|e| self.poison(e))?;
            self.segments.remove(0);
        }
        fs.sync_dir(&self.dir)
            .map_err(|e| EngineError::io("syncing raft/".to_string(), e))
            .inspect_err(|e| self.poison(e))
    }

    /// Seals the active segment (already durable: every append fsynced it) and creates the next one,
    /// header and directory entry durable, for entries from `first_index` on.
    fn start_segment(&mut self, first_index: u64) -> EngineResult<()> {
        let id = self.segments.last().map_or(1, |s| s.id + 1);
        let name = segment_name(id);
        let fs = self.opts.fs.clone();
        let created = fs.create(&path_in(&self.dir, &name)).and_then(|file| {
            // IMPORTANT: header durable, then the directory entry, before any entry is appended.
            file.write_all_at(&encode_segment_header(id, first_index), 0)
                .and_then(|_| file.sync_data())
                .and_then(|_| fs.sync_dir(&self.dir))
                .map(|_| file)
        });
        let file = created
            .map_err(|e| EngineError::io(format!("creating raft/{name}"), e))
            .inspect_err(|e| self.poison(e))?;
        self.segments.push(LogSegment {
            id,
            file,
            first: first_index,
            entries: Vec::new(),
            end: SEGMENT_HEADER_LEN as u64,
        });
        Ok(())
    }

    /// The index the next append must start at, if the log constrains it.
    fn next_index(&self) -> Option<u64> {
        self.last_index()
            .or_else(|| self.purged.as_ref().map(|p| p.index))
            .map(|i| i + 1)
    }

    fn check_writable(&self) -> EngineResult<()> {
        match &self.poison {
            Some(reason) => Err(EngineError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn poison(&mut self, e: &EngineError) {
        if self.poison.is_none() {
            tracing::error!(error = %e, "raft log: write failed; refusing further writes until reopened");
            self.poison = Some(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Recovering, VoteFloor};

    #[test]
    fn a_marker_round_trips_and_one_without_a_floor_reads_as_none() {
        let marker = Recovering {
            through: 41,
            vote_floor: Some(VoteFloor {
                term: 7,
                node_id: 2,
            }),
            reason: "wiped".into(),
        };
        assert_eq!(Recovering::decode(&marker.encode()), Some(marker));
        let plain = Recovering {
            through: 41,
            vote_floor: None,
            reason: "checksum failure".into(),
        };
        assert_eq!(Recovering::decode(&plain.encode()), Some(plain.clone()));
        // The format before floors were kept is the one without a floor.
        let mut old = 41u64.to_le_bytes().to_vec();
        old.extend_from_slice(b"checksum failure");
        assert_eq!(Recovering::decode(&old), Some(plain));
        let mut cut = 41u64.to_le_bytes().to_vec();
        cut.push(0xFF);
        cut.extend_from_slice(&7u64.to_le_bytes());
        assert_eq!(Recovering::decode(&cut), None, "a floor cut short");
        assert!(
            VoteFloor {
                term: 7,
                node_id: 1
            } > VoteFloor {
                term: 6,
                node_id: 3
            },
            "term first"
        );
    }
}
