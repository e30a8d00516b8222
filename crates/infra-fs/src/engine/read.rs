//! The read path: from the keydir's location to a verified value.

use kv_domain::{EngineError, EngineResult, Key, Location, Value};

use super::Inner;
use crate::codec::{decode_record, RecordKind, RECORD_HEADER_LEN};
use crate::segment::{segment_name, Segment};

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
        let corrupted = |reason: String| EngineError::Corrupted {
            file: seg.name.clone(),
            offset: loc.offset as u64,
            reason,
        };
        let rec = decode_record(&buf).map_err(|e| corrupted(e.to_string()))?;
        if rec.header.kind != RecordKind::Put || rec.key != key {
            return Err(corrupted(format!(
                "expected a put of key {:?}, found {rec:?}",
                Key::from(key)
            )));
        }
        let value_start = RECORD_HEADER_LEN + rec.key.len();
        buf.drain(..value_start);
        Ok(Value::from(buf))
    }
}
