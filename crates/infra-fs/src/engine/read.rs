//! The read path: from the keydir's location to a verified value, one at a time (`get`) or a run of
//! neighbours in one read (`scan`).
//!
//! Maps first: a segment is read through its memory map ([`crate::mapped`]), a copy out of the page cache
//! without a system call, whenever it has one covering the record; otherwise with `pread`, below.
//!
//! Coalescing (the `pread` path): a scan lists keys in order, and records of neighbouring keys are usually neighbours on
//! disk (compaction writes its outputs in key order; batches and sequential loads write runs of keys), so
//! the locations of one segment that follow each other with gaps of at most [`MAX_GAP`] bytes are read
//! with one `pread` of at most [`MAX_SPAN`] bytes, and each record is verified (CRC, kind, key) from that
//! buffer exactly as a single read verifies it.

use std::sync::Arc;

use kv_domain::{EngineError, EngineResult, Entry, Key, Location, Value};

use super::Inner;
use crate::codec::{decode_record, RecordKind, RECORD_HEADER_LEN};
use crate::mapped::Mapping;
use crate::segment::{segment_name, Segment};

/// Largest gap between two records read by one coalesced `pread` (bytes read and thrown away: cheaper
/// than a second system call up to about a page).
const MAX_GAP: u64 = 4096;
/// Largest span one coalesced `pread` covers.
const MAX_SPAN: u64 = 1 << 20;

impl Inner {
    /// The value of `key`, starting from the location `loc` the keydir gave. If compaction retired that
    /// segment in between (the keydir then points at the compacted copy), looks the key up again.
    pub(super) fn read_current(
        &self,
        key: &[u8],
        mut loc: Location,
    ) -> EngineResult<Option<Value>> {
        for _ in 0..8 {
            let seg = self.segments.read().get(&loc.segment).cloned();
            if let Some(seg) = &seg {
                if let Some(map) = self.mapping(seg)? {
                    if let Some(bytes) = map.get(loc.offset as u64, loc.len) {
                        let value = verify(seg, bytes, key, loc)?;
                        return Ok(Some(Value::from(value.to_vec())));
                    }
                }
            }
            // A segment retired (and deleted) by compaction after we looked it up reads as missing too.
            let file = match seg.as_ref().map(|s| s.file()) {
                Some(Ok(file)) => Some(file),
                Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(EngineError::io(
                        format!("opening {}", segment_name(loc.segment)),
                        e,
                    ));
                }
                _ => None,
            };
            match (seg, file) {
                (Some(seg), Some(file)) => {
                    return self.read_value(&seg, &*file, key, loc).map(Some)
                }
                _ => match self.index.get(key) {
                    Some(now) if now != loc => loc = now,
                    Some(_) => break,
                    None => return Ok(None),
                },
            }
        }
        Err(EngineError::Corrupted {
            file: segment_name(loc.segment),
            offset: loc.offset as u64,
            reason: "keydir points into a missing segment".into(),
        })
    }

    /// The values of `listed` (keys with the locations the keydir gave, in key order), skipping keys deleted
    /// meanwhile: runs of neighbouring records are read with one `pread` each (see the module doc).
    pub(super) fn read_listed(&self, listed: Vec<(Key, Location)>) -> EngineResult<Vec<Entry>> {
        let mut out = Vec::with_capacity(listed.len());
        let mut rest = listed.as_slice();
        while let Some(((_, first), _)) = rest.split_first() {
            let run = run_len(rest);
            let (this, after) = rest.split_at(run);
            rest = after;
            let seg = self.segments.read().get(&first.segment).cloned();
            if let Some(seg) = &seg {
                if let Some(map) = self.mapping(seg)? {
                    for (key, loc) in this {
                        let value = match map.get(loc.offset as u64, loc.len) {
                            Some(bytes) => {
                                Some(Value::from(verify(seg, bytes, key, *loc)?.to_vec()))
                            }
                            None => self.read_current(key, *loc)?,
                        };
                        if let Some(value) = value {
                            out.push(Entry {
                                key: key.clone(),
                                value,
                            });
                        }
                    }
                    continue;
                }
            }
            let opened = match seg {
                Some(seg) if run > 1 => seg.file().ok().map(|file| (seg, file)),
                _ => None,
            };
            match opened {
                Some((seg, file)) => self.read_run(&seg, &file, this, &mut out)?,
                // A single record, or a segment retired (or failing to open) meanwhile: the
                // one-at-a-time path handles each case.
                None => {
                    for (key, loc) in this {
                        if let Some(value) = self.read_current(key, *loc)? {
                            out.push(Entry {
                                key: key.clone(),
                                value,
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// `seg`'s memory map, or `None` when it has none (the file system has no maps, mapping failed, or the
    /// segment was retired and deleted meanwhile: the `pread` path handles each case).
    fn mapping(&self, seg: &Arc<Segment>) -> EngineResult<Option<Arc<Mapping>>> {
        match seg.mapping(self.opts.max_segment_bytes) {
            Ok(map) => Ok(map),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EngineError::io(format!("mapping {}", seg.name), e)),
        }
    }

    /// Reads the neighbouring records of `run` (one segment, see `run_len`) with one `pread`.
    fn read_run(
        &self,
        seg: &Segment,
        file: &Arc<dyn crate::vfs::FileHandle>,
        run: &[(Key, Location)],
        out: &mut Vec<Entry>,
    ) -> EngineResult<()> {
        let (Some((_, first)), Some((_, last))) = (run.first(), run.last()) else {
            return Ok(());
        };
        let start = first.offset as u64;
        let end = last.offset as u64 + last.len as u64;
        let mut buf = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| EngineError::io(format!("reading {} at {start}", seg.name), e))?;
        for (key, loc) in run {
            let at = (loc.offset as u64 - start) as usize;
            let bytes = buf.get(at..at + loc.len as usize).unwrap_or_default();
            let value = verify(seg, bytes, key, *loc)?;
            out.push(Entry {
                key: key.clone(),
                value: Value::from(value.to_vec()),
            });
        }
        Ok(())
    }

    /// Reads and verifies the record at `loc`, which the keydir says holds `key`'s latest value.
    fn read_value(
        &self,
        seg: &Segment,
        file: &dyn crate::vfs::FileHandle,
        key: &[u8],
        loc: Location,
    ) -> EngineResult<Value> {
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset as u64)
            .map_err(|e| EngineError::io(format!("reading {} at {}", seg.name, loc.offset), e))?;
        verify(seg, &buf, key, loc)?;
        // The record's key is `key` (verified), so its value starts right after it.
        buf.drain(..RECORD_HEADER_LEN + key.len());
        Ok(Value::from(buf))
    }
}

/// How many of `listed`'s first locations one coalesced read covers: the same segment, each record after
/// the previous one's end by at most [`MAX_GAP`], the whole span at most [`MAX_SPAN`].
fn run_len(listed: &[(Key, Location)]) -> usize {
    let Some((_, first)) = listed.first() else {
        return 0;
    };
    let start = first.offset as u64;
    let mut end = start + first.len as u64;
    let mut n = 1;
    for (_, loc) in listed.iter().skip(1) {
        let (at, to) = (loc.offset as u64, loc.offset as u64 + loc.len as u64);
        if loc.segment != first.segment || at < end || at - end > MAX_GAP || to - start > MAX_SPAN {
            break;
        }
        end = to;
        n += 1;
    }
    n
}

/// Verifies that `bytes` (exactly the record at `loc`) is an intact put of `key`, returning its value.
fn verify<'a>(seg: &Segment, bytes: &'a [u8], key: &[u8], loc: Location) -> EngineResult<&'a [u8]> {
    let corrupted = |reason: String| EngineError::Corrupted {
        file: seg.name.clone(),
        offset: loc.offset as u64,
        reason,
    };
    let rec = decode_record(bytes).map_err(|e| corrupted(e.to_string()))?;
    if rec.header.kind != RecordKind::Put || rec.key != key {
        return Err(corrupted(format!(
            "expected a put of key {:?}, found {rec:?}",
            Key::from(key)
        )));
    }
    Ok(rec.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(segment: u32, offset: u32, len: u32) -> (Key, Location) {
        (
            Key::from(format!("{segment}:{offset}").as_str()),
            Location {
                segment,
                offset,
                len,
            },
        )
    }

    #[test]
    fn a_run_ends_at_another_segment_a_wide_gap_a_backward_step_or_the_span_limit() {
        assert_eq!(run_len(&[]), 0);
        assert_eq!(run_len(&[at(1, 10, 5)]), 1);
        // Adjacent, then a gap of exactly MAX_GAP: one run.
        let gap = MAX_GAP as u32;
        assert_eq!(
            run_len(&[at(1, 10, 5), at(1, 15, 5), at(1, 20 + gap, 5)]),
            3
        );
        assert_eq!(
            run_len(&[at(1, 10, 5), at(1, 16 + gap, 5)]),
            1,
            "gap too wide"
        );
        assert_eq!(run_len(&[at(1, 10, 5), at(2, 15, 5)]), 1, "another segment");
        assert_eq!(run_len(&[at(1, 10, 5), at(1, 0, 5)]), 1, "a record before");
        assert_eq!(run_len(&[at(1, 10, 5), at(1, 12, 5)]), 1, "overlapping");
        let big = (MAX_SPAN / 2) as u32;
        assert_eq!(run_len(&[at(1, 0, big), at(1, big, big)]), 2);
        assert_eq!(
            run_len(&[at(1, 0, big), at(1, big, big), at(1, 2 * big, 1)]),
            2,
            "span limit"
        );
    }
}
