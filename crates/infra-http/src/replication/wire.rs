//! The binary bodies of the replication endpoints (binary-safe, no escaping). All integers little-endian.
//!
//! ```text
//! entries   := entry*
//! entry     := lsn:u64 op_count:u32 op{op_count}
//! op        := kind:u8 (1 = put, 2 = delete) key_len:u32 key [value_len:u32 value]   (value only for a put)
//! page      := base:u64 flags:u8 (1 = first, 2 = last) after:opt_key through:opt_key count:u32 pair{count}
//! opt_key   := 0:u8 | 1:u8 len:u32 bytes
//! pair      := key_len:u32 key value_len:u32 value
//! ```
//! Decoding is strict: a short or trailing byte is an error, reported as 400 by the endpoint.

use kv_app::SnapshotPage;
use kv_domain::{BatchOp, Key, LogEntry, Lsn, Value};

/// A body that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("malformed replication body: {0}")]
pub struct WireError(&'static str);

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_opt(out: &mut Vec<u8>, k: &Option<Key>) {
    match k {
        None => out.push(0),
        Some(k) => {
            out.push(1);
            put_bytes(out, k);
        }
    }
}

/// Encodes log entries.
pub fn encode_entries(entries: &[LogEntry]) -> Vec<u8> {
    let size: usize = entries
        .iter()
        .map(|e| 12 + e.payload_bytes() + 9 * e.ops.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    for e in entries {
        out.extend_from_slice(&e.lsn.0.to_le_bytes());
        out.extend_from_slice(&(e.ops.len() as u32).to_le_bytes());
        for op in &e.ops {
            match op {
                BatchOp::Put { key, value } => {
                    out.push(1);
                    put_bytes(&mut out, key);
                    put_bytes(&mut out, value);
                }
                BatchOp::Delete { key } => {
                    out.push(2);
                    put_bytes(&mut out, key);
                }
            }
        }
    }
    out
}

/// Encodes a snapshot page.
pub fn encode_page(page: &SnapshotPage) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&page.base.0.to_le_bytes());
    out.push(u8::from(page.first) | (u8::from(page.last) << 1));
    put_opt(&mut out, &page.after);
    put_opt(&mut out, &page.through);
    out.extend_from_slice(&(page.entries.len() as u32).to_le_bytes());
    for (k, v) in &page.entries {
        put_bytes(&mut out, k);
        put_bytes(&mut out, v);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn opt_key(&mut self) -> Result<Option<Key>, WireError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(Key::from(self.bytes()?))),
            _ => Err(WireError("bad optional-key tag")),
        }
    }
}

/// Decodes log entries.
pub fn decode_entries(body: &[u8]) -> Result<Vec<LogEntry>, WireError> {
    let mut r = Reader(body);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let lsn = Lsn(r.u64()?);
        let count = r.u32()? as usize;
        if count == 0 {
            return Err(WireError("an entry without operations"));
        }
        let mut ops = Vec::with_capacity(count.min(r.0.len() / 5));
        for _ in 0..count {
            ops.push(match r.u8()? {
                1 => BatchOp::Put {
                    key: Key::from(r.bytes()?),
                    value: Value::from(r.bytes()?),
                },
                2 => BatchOp::Delete {
                    key: Key::from(r.bytes()?),
                },
                _ => return Err(WireError("bad operation kind")),
            });
        }
        out.push(LogEntry { lsn, ops });
    }
    Ok(out)
}

/// Decodes a snapshot page.
pub fn decode_page(body: &[u8]) -> Result<SnapshotPage, WireError> {
    let mut r = Reader(body);
    let base = Lsn(r.u64()?);
    let flags = r.u8()?;
    if flags > 3 {
        return Err(WireError("bad page flags"));
    }
    let after = r.opt_key()?;
    let through = r.opt_key()?;
    let count = r.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(r.0.len() / 8));
    for _ in 0..count {
        let k = Key::from(r.bytes()?);
        let v = Value::from(r.bytes()?);
        entries.push((k, v));
    }
    if !r.0.is_empty() {
        return Err(WireError("trailing bytes"));
    }
    Ok(SnapshotPage {
        base,
        first: flags & 1 != 0,
        last: flags & 2 != 0,
        after,
        through,
        entries,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_and_pages_round_trip_and_damage_is_rejected() {
        let entries = vec![
            LogEntry {
                lsn: Lsn(7),
                ops: vec![BatchOp::Put {
                    key: Key::from(&b"\x00k"[..]),
                    value: Value::from(&b"\xffv"[..]),
                }],
            },
            LogEntry {
                lsn: Lsn(8),
                ops: vec![
                    BatchOp::Delete {
                        key: Key::from("a"),
                    },
                    BatchOp::Put {
                        key: Key::from("b"),
                        value: Value::from(""),
                    },
                ],
            },
        ];
        let bytes = encode_entries(&entries);
        assert_eq!(decode_entries(&bytes).unwrap(), entries);
        let boundary = encode_entries(&entries[..1]).len();
        for cut in (1..bytes.len()).filter(|&c| c != boundary) {
            assert!(decode_entries(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(decode_entries(&bytes[..boundary]).unwrap(), entries[..1]);
        let page = SnapshotPage {
            base: Lsn(99),
            first: true,
            last: false,
            after: None,
            through: Some(Key::from("m")),
            entries: vec![(Key::from("a"), Value::from("1"))],
        };
        let bytes = encode_page(&page);
        assert_eq!(decode_page(&bytes).unwrap(), page);
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_page(&longer).is_err());
        assert!(decode_page(&bytes[..bytes.len() - 1]).is_err());
    }
}
