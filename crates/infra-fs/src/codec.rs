//! The on-disk format: segment header and records. Also described in `docs/storage-format.md`.
//!
//! ## Segment header (24 bytes, at offset 0 of every segment file)
//!
//! | offset | size | type     | endianness | meaning                                                     |
//! |-------:|-----:|----------|------------|-------------------------------------------------------------|
//! | 0      | 7    | bytes    | -          | magic `MPKVLOG`                                             |
//! | 7      | 1    | u8       | -          | format version ([`FORMAT_VERSION`])                         |
//! | 8      | 4    | u32      | little     | segment id (must match the file name)                       |
//! | 12     | 8    | u64      | little     | base LSN: the store's last LSN when the segment was created |
//! | 20     | 4    | u32      | little     | CRC32C of bytes 0..20                                       |
//!
//! The base LSN keeps the LSN sequence alive when compaction drops the newest records (say, a final
//! delete): recovery resumes from the highest LSN of any record *or* header, so LSNs never go backwards.
//!
//! ## Record (29-byte header, then key, then value), repeated until the end of the file
//!
//! | offset | size  | type | endianness | meaning                                                      |
//! |-------:|------:|------|------------|--------------------------------------------------------------|
//! | 0      | 4     | u32  | little     | CRC32C of bytes 4..(29 + key_len + value_len)                |
//! | 4      | 8     | u64  | little     | LSN                                                          |
//! | 12     | 8     | u64  | little     | timestamp, microseconds since the Unix epoch                 |
//! | 20     | 1     | u8   | -          | kind: 1 put, 2 tombstone, 3 batch header                     |
//! | 21     | 4     | u32  | little     | key length                                                   |
//! | 25     | 4     | u32  | little     | value length                                                 |
//! | 29     | k     | -    | -          | key                                                          |
//! | 29 + k | v     | -    | -          | value                                                        |
//!
//! The checksum covers every byte of the record after itself (header fields, key and value), so a flipped
//! bit anywhere, a torn write, or a record read at the wrong offset all fail [`Crc::check`].
//!
//! A **batch** is a batch-header record (empty key; value = member count as u32 little-endian) followed by
//! exactly that many put/tombstone records, all carrying the header's LSN (see [`WriteOp`], which frames
//! every write).
//!
//! ## Invariants
//! - Within a normal segment (id at least `segment::FIRST_SEGMENT_ID`) LSNs never decrease, and are equal
//!   only for the members of a batch, which carry their header's LSN. Compaction outputs (ids below it) hold
//!   puts only, in key order, each with its original LSN.
//! - A batch never spans two segments.
//! - Keys of put and tombstone records are non-empty; lengths are below [`MAX_KEY_LEN`] / [`MAX_VALUE_LEN`].
//! - Decoding never panics and never trusts a length before checking it against the bytes available.

use std::fmt;

use kv_domain::BatchOp;

/// Segment files start with these 7 bytes, then the version byte.
pub const MAGIC: &[u8; 7] = b"MPKVLOG";
/// Version of the format described above.
pub const FORMAT_VERSION: u8 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN: usize = SEG_OFF_CRC + 4;

// Field offsets of the segment header (the table above).
const SEG_OFF_VERSION: usize = MAGIC.len();
const SEG_OFF_ID: usize = SEG_OFF_VERSION + 1;
const SEG_OFF_BASE_LSN: usize = SEG_OFF_ID + 4;
const SEG_OFF_CRC: usize = SEG_OFF_BASE_LSN + 8;
const _: () = assert!(SEGMENT_HEADER_LEN == 24);
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 4 + 8 + 8 + 1 + 4 + 4;
/// Hard ceiling on key length the decoder accepts (the configurable service limit is far lower).
pub const MAX_KEY_LEN: u32 = 1 << 20;
/// Hard ceiling on value length the decoder accepts (the configurable service limit is lower).
pub const MAX_VALUE_LEN: u32 = 1 << 30;
// The engine contract (`kv_domain::check_record`, `check_batch`) refuses exactly what the format cannot
// hold, and charges a batch its encoded size.
const _: () = assert!(
    MAX_KEY_LEN as usize == kv_domain::MAX_KEY_LEN
        && MAX_VALUE_LEN as usize == kv_domain::MAX_VALUE_LEN
        && RECORD_HEADER_LEN as u64 == kv_domain::OP_COST
        && BATCH_HEADER_LEN as u64 == kv_domain::BATCH_COST
);

const OFF_LSN: usize = 4;
const OFF_TS: usize = OFF_LSN + 8;
const OFF_KIND: usize = OFF_TS + 8;
const OFF_KEY_LEN: usize = OFF_KIND + 1;
const OFF_VALUE_LEN: usize = OFF_KEY_LEN + 4;
const _: () = assert!(OFF_VALUE_LEN + 4 == RECORD_HEADER_LEN);

/// What a record does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecordKind {
    /// Sets the key to the value.
    Put = 1,
    /// Deletes the key.
    Tombstone = 2,
    /// Starts a batch; the value holds the member count.
    BatchHeader = 3,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Put),
            2 => Some(Self::Tombstone),
            3 => Some(Self::BatchHeader),
            _ => None,
        }
    }
}

/// A CRC32C checksum.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Crc(pub u32);

impl Crc {
    /// The checksum of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Crc(crc32c::crc32c(bytes))
    }
    /// Checks `bytes` against this checksum.
    pub fn check(self, bytes: &[u8]) -> Result<(), DecodeError> {
        let actual = Crc::of(bytes);
        if actual == self {
            Ok(())
        } else {
            Err(DecodeError::ChecksumMismatch {
                stored: self.0,
                actual: actual.0,
            })
        }
    }
}

/// Why bytes did not decode. Never a panic.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header or the lengths it declares.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The segment does not start with the magic bytes.
    #[error("bad magic")]
    BadMagic,
    /// A version this code does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The checksum does not match.
    #[error("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")]
    ChecksumMismatch {
        /// Stored checksum.
        stored: u32,
        /// Computed checksum.
        actual: u32,
    },
    /// Unknown record kind.
    #[error("unknown record kind {0}")]
    BadKind(u8),
    /// A valid record in the wrong place: LSN going backwards, a batch cut short or interleaved.
    #[error("record out of sequence: {0}")]
    OutOfSequence(&'static str),
    /// A length over the decoder's ceiling.
    #[error("implausible length: key {key_len}, value {value_len}")]
    BadLength {
        /// Declared key length.
        key_len: u32,
        /// Declared value length.
        value_len: u32,
    },
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Encodes a segment header.
pub fn encode_segment_header(id: u32, base_lsn: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..SEG_OFF_VERSION].copy_from_slice(MAGIC);
    h[SEG_OFF_VERSION] = FORMAT_VERSION;
    h[SEG_OFF_ID..SEG_OFF_BASE_LSN].copy_from_slice(&id.to_le_bytes());
    h[SEG_OFF_BASE_LSN..SEG_OFF_CRC].copy_from_slice(&base_lsn.to_le_bytes());
    let crc = Crc::of(&h[..SEG_OFF_CRC]);
    h[SEG_OFF_CRC..].copy_from_slice(&crc.0.to_le_bytes());
    h
}

/// Decodes a segment header, returning the segment id it names and its base LSN.
pub fn decode_segment_header(b: &[u8]) -> Result<(u32, u64), DecodeError> {
    let h = b.get(..SEGMENT_HEADER_LEN).ok_or(DecodeError::Truncated {
        need: SEGMENT_HEADER_LEN,
        have: b.len(),
    })?;
    if h.get(..SEG_OFF_VERSION) != Some(&MAGIC[..]) {
        return Err(DecodeError::BadMagic);
    }
    Crc(le_u32(h, SEG_OFF_CRC)).check(h.get(..SEG_OFF_CRC).unwrap_or_default())?;
    let version = h.get(SEG_OFF_VERSION).copied().unwrap_or(0);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    Ok((le_u32(h, SEG_OFF_ID), le_u64(h, SEG_OFF_BASE_LSN)))
}

/// A record's fixed-size header, decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordHeader {
    /// Stored checksum.
    pub crc: Crc,
    /// The write's LSN.
    pub lsn: u64,
    /// Microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// Kind.
    pub kind: RecordKind,
    /// Key length.
    pub key_len: u32,
    /// Value length.
    pub value_len: u32,
}

impl RecordHeader {
    /// Total record length: header, key and value.
    pub fn record_len(&self) -> usize {
        RECORD_HEADER_LEN + self.key_len as usize + self.value_len as usize
    }
}

/// Decodes the fixed header at the start of `b` (no checksum check: that needs the whole record).
pub fn decode_record_header(b: &[u8]) -> Result<RecordHeader, DecodeError> {
    if b.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated {
            need: RECORD_HEADER_LEN,
            have: b.len(),
        });
    }
    let kind_byte = b.get(OFF_KIND).copied().unwrap_or(0);
    let kind = RecordKind::from_u8(kind_byte).ok_or(DecodeError::BadKind(kind_byte))?;
    let key_len = le_u32(b, OFF_KEY_LEN);
    let value_len = le_u32(b, OFF_VALUE_LEN);
    let plausible = key_len <= MAX_KEY_LEN
        && value_len <= MAX_VALUE_LEN
        && match kind {
            RecordKind::Put | RecordKind::Tombstone => key_len > 0,
            RecordKind::BatchHeader => key_len == 0 && value_len == 4,
        }
        && (kind != RecordKind::Tombstone || value_len == 0);
    if !plausible {
        return Err(DecodeError::BadLength { key_len, value_len });
    }
    Ok(RecordHeader {
        crc: Crc(le_u32(b, 0)),
        lsn: le_u64(b, OFF_LSN),
        timestamp_micros: le_u64(b, OFF_TS),
        kind,
        key_len,
        value_len,
    })
}

/// A whole record, decoded and verified, borrowing its key and value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The header.
    pub header: RecordHeader,
    /// The key (empty for a batch header).
    pub key: &'a [u8],
    /// The value (empty for a tombstone; the member count for a batch header).
    pub value: &'a [u8],
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} lsn={} key=\"{}\" value=\"{}\"",
            self.header.kind,
            self.header.lsn,
            self.key.escape_ascii(),
            self.value.escape_ascii()
        )
    }
}

impl Record<'_> {
    /// The member count of a batch header.
    pub fn batch_count(&self) -> u32 {
        le_u32(self.value, 0)
    }
}

/// Decodes and verifies the record at the start of `b`. `b` may extend past the record.
pub fn decode_record(b: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header = decode_record_header(b)?;
    let len = header.record_len();
    let rec = b.get(..len).ok_or(DecodeError::Truncated {
        need: len,
        have: b.len(),
    })?;
    header.crc.check(rec.get(4..).unwrap_or_default())?;
    let key_end = RECORD_HEADER_LEN + header.key_len as usize;
    Ok(Record {
        header,
        key: rec.get(RECORD_HEADER_LEN..key_end).unwrap_or_default(),
        value: rec.get(key_end..).unwrap_or_default(),
    })
}

/// Appends one encoded record to `out`, returning its length. The key and value are at most
/// [`MAX_KEY_LEN`] / [`MAX_VALUE_LEN`] bytes: writers check them first (`kv_domain::check_record`), and
/// compaction and repair copy records that decoded (the decoder refuses larger lengths).
pub fn encode_record(
    out: &mut Vec<u8>,
    kind: RecordKind,
    lsn: u64,
    timestamp_micros: u64,
    key: &[u8],
    value: &[u8],
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&timestamp_micros.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&u32_field(key.len()).to_le_bytes());
    out.extend_from_slice(&u32_field(value.len()).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = Crc::of(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.0.to_le_bytes());
    out.len() - start
}

/// The length a record with this key and value occupies.
pub fn record_len(key: &[u8], value: &[u8]) -> usize {
    RECORD_HEADER_LEN + key.len() + value.len()
}

/// A length, offset or count as the `u32` of a record field or a keydir [`kv_domain::Location`].
///
/// Every caller proves the bound by a limit check made before it (the record limits above for lengths;
/// `kv_domain::MAX_WRITE_COST` and `Options::MAX_SEGMENT_BYTES` for offsets and batch counts in the
/// active segment; recovery's size check of each segment file it replays). Should one ever be wrong the
/// field saturates instead of wrapping to a smaller valid-looking one, and debug builds stop at once. Only
/// a saturated record length is then refused by the decoder (as implausible); a saturated keydir
/// location is not checked anywhere, so the bounds above are what keeps locations right.
pub fn u32_field(n: impl TryInto<u32> + Copy + fmt::Debug) -> u32 {
    let narrowed = n.try_into().ok();
    debug_assert!(narrowed.is_some(), "{n:?} does not fit a u32 field");
    narrowed.unwrap_or(u32::MAX)
}

// ----- Batch framing -----------------------------------------------------------------------------------

/// One write as the log frames it: a single put or tombstone record, or a batch.
///
/// A batch is framed as a batch-header record (kind 3, empty key, value = the member count as u32
/// little-endian) followed by its members, one put or tombstone record each, all carrying the header's
/// LSN and written in one append, so a batch never spans two segments. There is no commit record: the
/// header's count says where the batch ends, and recovery drops a batch whose members are not all there
/// (see `crate::recovery`).
#[derive(Clone, Copy, Debug)]
pub enum WriteOp<'a> {
    /// A put of the key to the value.
    Put(&'a [u8], &'a [u8]),
    /// A delete of the key.
    Delete(&'a [u8]),
    /// A batch's operations (non-empty).
    Batch(&'a [BatchOp]),
}

/// Length of a batch-header record: a record header and the member count.
pub const BATCH_HEADER_LEN: usize = RECORD_HEADER_LEN + 4;

impl<'a> WriteOp<'a> {
    /// Bytes [`WriteOp::encode`] appends.
    pub fn encoded_len(&self) -> u64 {
        let mut total = 0u64;
        self.for_each_record(|_, len, _, _| total += len as u64);
        total
    }

    /// Appends every record of the write (a batch: its header, then its members) to `out`.
    pub fn encode(&self, lsn: u64, timestamp_micros: u64, out: &mut Vec<u8>) {
        let ts = timestamp_micros;
        match *self {
            WriteOp::Put(k, v) => {
                encode_record(out, RecordKind::Put, lsn, ts, k, v);
            }
            WriteOp::Delete(k) => {
                encode_record(out, RecordKind::Tombstone, lsn, ts, k, &[]);
            }
            WriteOp::Batch(b) => {
                let count = u32_field(b.len()).to_le_bytes();
                encode_record(out, RecordKind::BatchHeader, lsn, ts, &[], &count);
                for member in b {
                    let (kind, key, value) = member_parts(member);
                    encode_record(out, kind, lsn, ts, key, value);
                }
            }
        }
    }

    /// Calls `f(offset, len, kind, key)` for every record [`WriteOp::encode`] appends, offsets relative
    /// to the start of the write.
    pub fn for_each_record(&self, mut f: impl FnMut(usize, usize, RecordKind, &'a [u8])) {
        match *self {
            WriteOp::Put(k, v) => f(0, record_len(k, v), RecordKind::Put, k),
            WriteOp::Delete(k) => f(0, record_len(k, &[]), RecordKind::Tombstone, k),
            WriteOp::Batch(b) => {
                f(0, BATCH_HEADER_LEN, RecordKind::BatchHeader, &[]);
                let mut at = BATCH_HEADER_LEN;
                for member in b {
                    let (kind, key, value) = member_parts(member);
                    let len = record_len(key, value);
                    f(at, len, kind, key);
                    at += len;
                }
            }
        }
    }
}

/// The record kind, key and value of one batch member.
fn member_parts(op: &BatchOp) -> (RecordKind, &[u8], &[u8]) {
    match op {
        BatchOp::Put { key, value } => (RecordKind::Put, key, value),
        BatchOp::Delete { key } => (RecordKind::Tombstone, key, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = encode_segment_header(42, 7);
        assert_eq!(decode_segment_header(&h), Ok((42, 7)));
        let mut bad = h;
        bad[9] ^= 1;
        assert!(matches!(
            decode_segment_header(&bad),
            Err(DecodeError::ChecksumMismatch { .. })
        ));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(decode_segment_header(&bad), Err(DecodeError::BadMagic));
        assert!(matches!(
            decode_segment_header(&h[..10]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn record_round_trips() {
        let mut buf = Vec::new();
        let n = encode_record(&mut buf, RecordKind::Put, 7, 99, b"key", b"value");
        assert_eq!(n, record_len(b"key", b"value"));
        let r = decode_record(&buf).unwrap();
        assert_eq!(
            (r.header.lsn, r.header.timestamp_micros, r.key, r.value),
            (7, 99, &b"key"[..], &b"value"[..])
        );
        assert_eq!(r.header.kind, RecordKind::Put);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, RecordKind::Put, 1, 2, b"k", b"some value");
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            if let Ok(r) = decode_record(&b) {
                panic!("flip of bit {bit} decoded as {r:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_record(&bytes);
            let _ = decode_segment_header(&bytes);
        }

        #[test]
        fn any_record_round_trips(key in proptest::collection::vec(any::<u8>(), 1..64), value in proptest::collection::vec(any::<u8>(), 0..256), lsn: u64, ts: u64) {
            let mut buf = Vec::new();
            encode_record(&mut buf, RecordKind::Put, lsn, ts, &key, &value);
            let r = decode_record(&buf).unwrap();
            prop_assert_eq!(r.key, &key[..]);
            prop_assert_eq!(r.value, &value[..]);
            prop_assert_eq!(r.header.lsn, lsn);
        }
    }
}
