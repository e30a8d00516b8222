//! Salvage: the operator's way back from damage that makes the store refuse to open (`kvctl repair`).
//!
//! One concern in one file (about 700 lines, over the usual ~500): the report types, the resynchronising
//! scan and the rewrite are one procedure whose batch-atomicity and loss-reporting rules (below) span all
//! three; it shares no code path with opening, so a split would only scatter those rules.
//!
//! Opening stays strict: a damaged sealed segment, a damaged compaction output or a missing segment file is a
//! hard error, because serving around it would silently change what reads return. [`repair`] is the
//! explicit, offline alternative. It takes the directory lock (so it never runs beside a server) and:
//!
//! 1. Reconciles the segment files with the manifest: files listed but missing are dropped from it and
//!    reported with the LSNs they held (a normal segment holds `(its base LSN, the next one's]`); an unlisted
//!    segment file that no crash explains is renamed to `<name>.unlisted`. A damaged manifest is rebuilt
//!    from the files.
//! 2. Scans every segment record by record, resynchronising after damage (the next offset at which a record
//!    decodes and checks). A file with damage is rewritten with every record that still checks: the
//!    original is first copied to `<name>.damaged[.n]` (fsynced), the salvage is written as `<name>.tmp`,
//!    fsynced and renamed over the original, then the directory is fsynced, so a crash at any point leaves
//!    the original or the salvage under the name (and a leftover `.tmp` is removed at open).
//! 3. Keeps batches atomic: a batch with a member in a damaged region (or cut short) is dropped whole, also
//!    its members found after the damage, and so are the records after a region that starts with what
//!    still reads as a batch header and that carry the first LSN after it. (Residual risk, documented: a
//!    batch whose header *and* every member but the last were destroyed by one region not starting at the
//!    header leaves that last member, indistinguishable from a single put.) What is kept obeys recovery's
//!    sequence rules, so the salvage always reopens.
//! 4. Rewrites the manifest and the hint file of every compaction output whose hint was missing, stale or
//!    damaged.
//!
//! What is lost is reported exactly where the format allows it: LSNs are dense in normal segments, so a
//! damaged region there lost the writes with the LSNs strictly between the last record before it and the
//! first one after it. Compaction outputs are ordered by key, so for them the report gives the keys the
//! region lies between. A lost write's key reads as its previous version (or absent) after the repair.
//! The newest segment's invalid tail is not damage but a torn write: it is left to recovery, which cuts
//! it and saves it aside at open.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use kv_domain::{EngineError, EngineResult, Key, Location};

use crate::codec::{
    decode_record, decode_record_header, decode_segment_header, encode_segment_header, u32_field,
    RecordKind, SEGMENT_HEADER_LEN,
};
use crate::hint;
use crate::manifest;
use crate::options::Options;
use crate::segment::{parse_segment_name, segment_name, FIRST_SEGMENT_ID};
use crate::vfs::{path_in, FileSystem};

/// What a damaged region or a missing file took with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The writes with these LSNs (inclusive); `last` is unknown when the newest data itself is gone.
    Lsns {
        /// First LSN lost.
        first: u64,
        /// Last LSN lost, if known.
        last: Option<u64>,
    },
    /// Live keys of a compaction output (ordered by key) between these two kept keys.
    Keys {
        /// The last key kept before the damage, if any.
        after: Option<Key>,
        /// The first key kept after it, if any.
        before: Option<Key>,
    },
    /// Only framing (a segment header) was damaged; no write was lost.
    Nothing,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lost::Lsns {
                first,
                last: Some(last),
            } if last < first => write!(f, "no write"),
            Lost::Lsns {
                first,
                last: Some(last),
            } => {
                write!(f, "{} write(s), LSNs {first}..={last}", last - first + 1)
            }
            Lost::Lsns { first, last: None } => write!(f, "every write from LSN {first} on"),
            Lost::Keys { after, before } => {
                let show = |k: &Option<Key>| {
                    k.as_ref().map_or("-".to_string(), |k| {
                        format!("{:?}", String::from_utf8_lossy(k))
                    })
                };
                write!(
                    f,
                    "the live keys between {} and {} (a compaction output: count unknown)",
                    show(after),
                    show(before)
                )
            }
            Lost::Nothing => write!(f, "no write (only the segment header)"),
        }
    }
}

/// One damaged region of a salvaged file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset where the damage starts.
    pub offset: u64,
    /// Damaged bytes (up to the next record that checks, or the end of the file).
    pub bytes: u64,
    /// Records that checked but were dropped with it (members of a batch it broke).
    pub records_dropped: u64,
    /// What was lost.
    pub lost: Lost,
}

/// A segment file rewritten with the records that still check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// The segment file.
    pub file: String,
    /// Where the original was copied before it was replaced.
    pub original_saved_to: String,
    /// Records kept.
    pub records_kept: u64,
    /// The damaged regions, in file order.
    pub damage: Vec<Damage>,
}

/// A segment file the manifest listed that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The file name.
    pub file: String,
    /// What it held.
    pub lost: Lost,
}

/// What [`repair`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Segments rewritten around damage.
    pub salvaged: Vec<Salvaged>,
    /// Segments listed but missing, now dropped from the manifest.
    pub missing: Vec<Missing>,
    /// Unexplained segment files moved aside (`<name>.unlisted`).
    pub set_aside: Vec<String>,
    /// Hint files rewritten.
    pub hints_rebuilt: Vec<String>,
    /// Why the manifest was rebuilt from the files, if it was (damaged or absent).
    pub manifest_rebuilt: Option<String>,
}

impl RepairReport {
    /// Whether the store was already intact (nothing salvaged, missing or moved).
    pub fn is_clean(&self) -> bool {
        self.salvaged.is_empty() && self.missing.is_empty() && self.set_aside.is_empty()
    }
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.manifest_rebuilt {
            writeln!(f, "manifest rebuilt from the segment files: {why}")?;
        }
        for m in &self.missing {
            writeln!(f, "missing {}: lost {}", m.file, m.lost)?;
        }
        for s in &self.salvaged {
            writeln!(
                f,
                "salvaged {}: kept {} record(s); original saved to {}",
                s.file, s.records_kept, s.original_saved_to
            )?;
            for d in &s.damage {
                writeln!(
                    f,
                    "  damage at offset {} ({} bytes, {} intact record(s) dropped with it): lost {}",
                    d.offset, d.bytes, d.records_dropped, d.lost
                )?;
            }
        }
        for name in &self.set_aside {
            writeln!(
                f,
                "moved aside {name}: not in the manifest and not explained by a crash"
            )?;
        }
        for name in &self.hints_rebuilt {
            writeln!(f, "rebuilt hint file {name}")?;
        }
        if self.is_clean() {
            writeln!(f, "no damage found")?;
        }
        Ok(())
    }
}

/// A region of bad bytes found by [`scan`], with what surrounds it.
struct Region {
    start: usize,
    end: usize,
    dropped: u64,
    lsn_before: Option<u64>,
    lsn_after: Option<u64>,
    key_before: Option<Key>,
    key_after: Option<Key>,
}

/// The result of scanning one segment file.
struct Scan {
    /// Byte ranges of the records kept, in order.
    kept: Vec<(usize, usize)>,
    records_kept: u64,
    regions: Vec<Region>,
    header_damaged: bool,
    /// Base LSN from the header, if it checked.
    base_lsn: Option<u64>,
    /// Highest LSN kept.
    last_lsn: Option<u64>,
    /// (lsn, key, offset in the salvaged file, len) of every kept put, for hints.
    puts: Vec<(u64, Key, u32, u32)>,
}

/// A batch whose members are still being read.
struct OpenBatch {
    lsn: u64,
    remaining: u32,
    start: usize,
    records: u64,
    puts: Vec<(u64, Key, u32, u32)>,
}

/// The region of a batch that ended early (without damage) at `end`.
fn broken_batch(open: &OpenBatch, end: usize, s: &Scan, last_key: &Option<Key>) -> Region {
    Region {
        start: open.start,
        end,
        dropped: open.records,
        lsn_before: s.last_lsn,
        lsn_after: None,
        key_before: last_key.clone(),
        key_after: None,
    }
}

/// Scans `b` (a whole segment file) resynchronising after damage; see the module doc for the batch rules.
fn scan(id: u32, b: &[u8]) -> Scan {
    let ordered = id >= FIRST_SEGMENT_ID;
    let header = b
        .get(..SEGMENT_HEADER_LEN)
        .and_then(|h| decode_segment_header(h).ok())
        .filter(|(found, _)| *found == id);
    let mut s = Scan {
        kept: Vec::new(),
        records_kept: 0,
        regions: Vec::new(),
        header_damaged: header.is_none(),
        base_lsn: header.map(|(_, base)| base),
        last_lsn: None,
        puts: Vec::new(),
    };
    // An open batch: (lsn, members still expected, start offset, records so far, its puts).
    let mut batch: Option<OpenBatch> = None;
    let mut damage_start: Option<usize> = None;
    let mut dropped_in_region = 0u64;
    // After a region: records carrying this LSN are the rest of a broken batch.
    let mut orphan_lsn: Option<u64> = None;
    let mut last_key: Option<Key> = None;
    let mut out_len = SEGMENT_HEADER_LEN;
    let mut pos = SEGMENT_HEADER_LEN.min(b.len());
    while pos < b.len() {
        let rest = b.get(pos..).unwrap_or_default();
        // Recovery's sequence rules hold for what is kept, so the salvage always reopens: LSNs never fall in
        // a normal segment, a batch header is above its predecessor and counts at least one member.
        let good = decode_record(rest).ok().filter(|r| {
            let header = r.header.kind == RecordKind::BatchHeader;
            (!header || r.batch_count() > 0)
                && (!ordered
                    || s.last_lsn.is_none_or(|last| {
                        r.header.lsn > last || (r.header.lsn == last && !header)
                    }))
        });
        let Some(r) = good else {
            if damage_start.is_none() {
                damage_start = Some(pos);
                if let Some(open) = batch.take() {
                    // Members of this batch found after the damage must go too (batches are atomic).
                    dropped_in_region += open.records;
                    orphan_lsn = Some(open.lsn);
                }
            }
            pos += 1;
            continue;
        };
        let len = r.header.record_len();
        if let Some(start) = damage_start.take() {
            // A region that starts with what still reads as a batch header broke that batch: what follows
            // with the LSN of the first record after it is the batch's rest. (Records sharing an LSN
            // without a header are legitimate otherwise: a follower's snapshot pages.)
            let claims_batch = b
                .get(start..)
                .and_then(|h| decode_record_header(h).ok())
                .is_some_and(|h| h.kind == RecordKind::BatchHeader);
            if ordered && r.header.kind != RecordKind::BatchHeader && claims_batch {
                orphan_lsn = orphan_lsn.or(Some(r.header.lsn));
            }
            s.regions.push(Region {
                start,
                end: pos,
                dropped: std::mem::take(&mut dropped_in_region),
                lsn_before: s.last_lsn,
                lsn_after: None,
                key_before: last_key.clone(),
                key_after: None,
            });
        }
        if orphan_lsn == Some(r.header.lsn) && r.header.kind != RecordKind::BatchHeader {
            if let Some(region) = s.regions.last_mut() {
                region.dropped += 1;
            }
            pos += len;
            continue;
        }
        orphan_lsn = None;
        let keep = |s: &mut Scan, from: usize, to: usize, records: u64, lsn: u64| {
            s.kept.push((from, to));
            s.records_kept += records;
            s.last_lsn = Some(s.last_lsn.map_or(lsn, |l| l.max(lsn)));
            if let Some(region) = s.regions.last_mut() {
                region.lsn_after.get_or_insert(lsn);
            }
        };
        match (r.header.kind, batch.as_mut()) {
            (RecordKind::BatchHeader, open) => {
                if let Some(open) = open {
                    // A batch cut short by another batch: drop it, as a region of its own.
                    let broken = broken_batch(open, pos, &s, &last_key);
                    s.regions.push(broken);
                }
                batch = Some(OpenBatch {
                    lsn: r.header.lsn,
                    remaining: r.batch_count(),
                    start: pos,
                    records: 1,
                    puts: Vec::new(),
                });
            }
            (_, Some(open)) if open.lsn == r.header.lsn => {
                open.remaining -= 1;
                open.records += 1;
                if r.header.kind == RecordKind::Put {
                    open.puts.push((
                        r.header.lsn,
                        Key::from(r.key),
                        u32_field(out_len + (pos - open.start)),
                        u32_field(len),
                    ));
                }
                if open.remaining == 0 {
                    if let Some(done) = batch.take() {
                        keep(&mut s, done.start, pos + len, done.records, done.lsn);
                        out_len += pos + len - done.start;
                        s.puts.extend(done.puts);
                    }
                }
            }
            (_, open) => {
                if let Some(open) = open {
                    // A batch cut short by a record of another LSN: drop it, as a region of its own.
                    let broken = broken_batch(open, pos, &s, &last_key);
                    s.regions.push(broken);
                    batch = None;
                }
                if r.header.kind == RecordKind::Put {
                    s.puts.push((
                        r.header.lsn,
                        Key::from(r.key),
                        u32_field(out_len),
                        u32_field(len),
                    ));
                }
                keep(&mut s, pos, pos + len, 1, r.header.lsn);
                out_len += len;
                last_key = Some(Key::from(r.key));
                if let Some(region) = s.regions.last_mut() {
                    region.key_after.get_or_insert_with(|| Key::from(r.key));
                }
            }
        }
        pos += len;
    }
    if let Some(open) = batch {
        // An incomplete batch at the end: its bytes are part of the trailing region.
        dropped_in_region += open.records;
        damage_start = Some(damage_start.map_or(open.start, |d| d.min(open.start)));
    }
    if let Some(start) = damage_start {
        s.regions.push(Region {
            start,
            end: b.len(),
            dropped: dropped_in_region,
            lsn_before: s.last_lsn,
            lsn_after: None,
            key_before: last_key,
            key_after: None,
        });
    }
    s
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let context = context.into();
    move |e| EngineError::io(context, e)
}

fn read_all(fs: &dyn FileSystem, dir: &Path, name: &str) -> EngineResult<Vec<u8>> {
    let file = fs
        .open(&path_in(dir, name))
        .map_err(io(format!("opening {name}")))?;
    let len = file.len().map_err(io(format!("reading {name}")))?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(io(format!("reading {name}")))?;
    Ok(bytes)
}

/// Writes `bytes` to a new file `name` (replacing a leftover), durably.
fn write_new(fs: &dyn FileSystem, dir: &Path, name: &str, bytes: &[u8]) -> EngineResult<()> {
    let path = path_in(dir, name);
    match fs.remove(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(EngineError::io(format!("removing {name}"), e))
        }
        _ => {}
    }
    let file = fs.create(&path).map_err(io(format!("creating {name}")))?;
    file.write_all_at(bytes, 0)
        .and_then(|_| file.sync_data())
        .map_err(io(format!("writing {name}")))
}

/// A name beside `base` that does not exist yet.
fn free_name(fs: &dyn FileSystem, dir: &Path, base: &str) -> EngineResult<String> {
    let existing = fs.list(dir).map_err(io("listing the data directory"))?;
    Ok((0..)
        .map(|n| {
            if n == 0 {
                base.to_string()
            } else {
                format!("{base}.{n}")
            }
        })
        .find(|c| !existing.contains(c))
        .unwrap_or_else(|| base.to_string()))
}

/// Salvages the data directory `dir` (see the module doc). Fails with [`EngineError::Locked`] while a
/// server or another process has it open.
pub fn repair(dir: impl AsRef<Path>, opts: &Options) -> EngineResult<RepairReport> {
    let dir = dir.as_ref();
    let fs: &dyn FileSystem = &*opts.fs;
    let _lock = crate::vfs::lock_data_dir(fs, dir)?;
    let names = fs
        .list(dir)
        .map_err(io(format!("listing {}", dir.display())))?;
    let mut report = RepairReport::default();
    let on_disk: BTreeSet<u32> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    let listed = match manifest::load(fs, dir) {
        Ok(Some(listed)) => Some(listed),
        Ok(None) => {
            report.manifest_rebuilt = Some("there was none".into());
            None
        }
        Err(e @ EngineError::Corrupted { .. }) => {
            report.manifest_rebuilt = Some(e.to_string());
            None
        }
        Err(e) => return Err(e),
    };
    // Which files make up the store, and which are missing.
    let mut present: Vec<u32> = Vec::new();
    let mut missing: BTreeSet<u32> = BTreeSet::new();
    match &listed {
        Some(listed) => {
            let newest = listed.last().copied().unwrap_or(0);
            missing.extend(listed.difference(&on_disk));
            present.extend(listed.intersection(&on_disk));
            for &id in on_disk.difference(listed) {
                if id == newest + 1 && id >= FIRST_SEGMENT_ID {
                    present.push(id);
                } else if id > newest {
                    let name = segment_name(id);
                    let aside = free_name(fs, dir, &format!("{name}.unlisted"))?;
                    fs.rename(&path_in(dir, &name), &path_in(dir, &aside))
                        .map_err(io(format!("moving {name} aside")))?;
                    report.set_aside.push(aside);
                }
                // Unlisted files below the newest are compaction leftovers that open removes.
            }
        }
        // Without a manifest a gap in the ids cannot tell a missing file from one compaction retired
        // (compaction keeps segments with nothing to reclaim): the files present are the store.
        None => present.extend(&on_disk),
    }
    present.sort_unstable();
    // Base LSNs of the normal segments present (headers only: one segment is in memory at a time), to
    // bound what a missing or damaged one held.
    let mut bases = std::collections::BTreeMap::new();
    for &id in &present {
        let name = segment_name(id);
        let file = fs
            .open(&path_in(dir, &name))
            .map_err(io(format!("opening {name}")))?;
        let len = file.len().map_err(io(format!("reading {name}")))?;
        if let Ok(Ok((found, base))) = crate::segment::read_segment_header(&*file, len) {
            if found == id {
                bases.insert(id, base);
            }
        }
    }
    let base_of = |id: u32| bases.get(&id).copied();
    let next_normal_base = |id: u32| -> Option<u64> {
        present
            .iter()
            .filter(|&&p| p > id && p >= FIRST_SEGMENT_ID)
            .find_map(|&p| base_of(p))
    };
    let newest_present = present.last().copied();
    let mut last_lsn_before: Option<u64> = None;
    let mut unfinished = None;
    let mut all: Vec<u32> = present.iter().chain(missing.iter()).copied().collect();
    all.sort_unstable();
    for id in all {
        let name = segment_name(id);
        if missing.contains(&id) {
            let lost = if id < FIRST_SEGMENT_ID {
                Lost::Keys {
                    after: None,
                    before: None,
                }
            } else {
                let last = next_normal_base(id);
                let first = last_lsn_before.unwrap_or(0) + 1;
                last_lsn_before = last.or(last_lsn_before);
                Lost::Lsns { first, last }
            };
            report.missing.push(Missing { file: name, lost });
            continue;
        }
        let bytes = read_all(fs, dir, &name)?;
        let bytes = &bytes;
        let s = scan(id, bytes);
        let is_newest = Some(id) == newest_present;
        let ordered = id >= FIRST_SEGMENT_ID;
        // The highest LSN before this segment: the base of a segment whose header is damaged.
        let before = last_lsn_before.unwrap_or(0);
        if is_newest
            && s.header_damaged
            && s.records_kept == 0
            && !listed.as_ref().is_some_and(|l| l.contains(&id))
        {
            // An unfinished rotation's segment: recovery sets it aside and removes it (so it stays
            // unlisted).
            unfinished = Some(id);
            continue;
        }
        // The newest segment's invalid tail is a torn write for recovery to cut, not damage.
        let damaged = s
            .regions
            .iter()
            .any(|r| !(is_newest && r.end == bytes.len()));
        if ordered {
            last_lsn_before = [s.last_lsn, s.base_lsn, last_lsn_before]
                .into_iter()
                .flatten()
                .max();
        }
        if !damaged && !s.header_damaged {
            if !ordered && rebuild_hint_if_needed(fs, dir, id, bytes.len() as u64, &s)? {
                report.hints_rebuilt.push(hint::hint_name(id));
            }
            continue;
        }
        // Rewrite: header (the base LSN from the original, or else the last LSN before this segment).
        // A damaged header's base LSN is the highest LSN before this segment: replication's reads pick
        // the segment by it, so it must not be above or far below what the predecessor holds.
        let base = if ordered {
            s.base_lsn.unwrap_or(before)
        } else {
            0
        };
        let mut out = encode_segment_header(id, base).to_vec();
        for (from, to) in &s.kept {
            out.extend_from_slice(bytes.get(*from..*to).unwrap_or_default());
        }
        let next_base = next_normal_base(id);
        let mut damage = Vec::new();
        if s.header_damaged {
            damage.push(Damage {
                offset: 0,
                bytes: SEGMENT_HEADER_LEN as u64,
                records_dropped: 0,
                lost: Lost::Nothing,
            });
        }
        for r in &s.regions {
            let lost = if ordered {
                let first = r.lsn_before.or(s.base_lsn).unwrap_or(base) + 1;
                let last = match r.lsn_after {
                    Some(after) => Some(after.saturating_sub(1)),
                    None => next_base,
                };
                Lost::Lsns { first, last }
            } else {
                Lost::Keys {
                    after: r.key_before.clone(),
                    before: r.key_after.clone(),
                }
            };
            damage.push(Damage {
                offset: r.start as u64,
                bytes: (r.end - r.start) as u64,
                records_dropped: r.dropped,
                lost,
            });
        }
        let saved = free_name(fs, dir, &format!("{name}.damaged"))?;
        write_new(fs, dir, &saved, bytes)?;
        let tmp = format!("{name}.tmp");
        write_new(fs, dir, &tmp, &out)?;
        // IMPORTANT: the original is saved durably before the salvage replaces it under its name.
        fs.sync_dir(dir).map_err(io("syncing the data directory"))?;
        fs.rename(&path_in(dir, &tmp), &path_in(dir, &name))
            .map_err(io(format!("replacing {name}")))?;
        match fs.remove(&path_in(dir, &hint::hint_name(id))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(EngineError::io(
                    format!("removing {}", hint::hint_name(id)),
                    e,
                ))
            }
            _ => {}
        }
        fs.sync_dir(dir).map_err(io("syncing the data directory"))?;
        if !ordered {
            write_hint(fs, dir, id, out.len() as u64, &s)?;
            report.hints_rebuilt.push(hint::hint_name(id));
        }
        report.salvaged.push(Salvaged {
            file: name,
            original_saved_to: saved,
            records_kept: s.records_kept,
            damage,
        });
    }
    let ids: BTreeSet<u32> = present
        .into_iter()
        .filter(|&id| Some(id) != unfinished)
        .collect();
    if report.manifest_rebuilt.is_some()
        || !report.missing.is_empty()
        || listed.as_ref() != Some(&ids)
    {
        manifest::store(fs, dir, &ids)?;
    }
    Ok(report)
}

fn write_hint(fs: &dyn FileSystem, dir: &Path, id: u32, len: u64, s: &Scan) -> EngineResult<()> {
    let entries: Vec<(u64, &[u8], Location)> = s
        .puts
        .iter()
        .map(|(lsn, key, offset, len)| {
            (
                *lsn,
                key.as_bytes(),
                Location {
                    segment: id,
                    offset: *offset,
                    len: *len,
                },
            )
        })
        .collect();
    hint::write(fs, dir, id, &hint::encode(id, len, &entries))
}

/// Rewrites the hint of an intact compaction output if it is missing or does not verify.
fn rebuild_hint_if_needed(
    fs: &dyn FileSystem,
    dir: &Path,
    id: u32,
    len: u64,
    s: &Scan,
) -> EngineResult<bool> {
    let name = hint::hint_name(id);
    let valid = match read_all(fs, dir, &name) {
        Ok(bytes) => hint::for_each(&bytes, id, len, |_, _, _| {}).is_ok(),
        Err(_) => false,
    };
    if valid {
        return Ok(false);
    }
    write_hint(fs, dir, id, len, s)?;
    Ok(true)
}
