//! A 24-byte key that keeps keys of up to 22 bytes inline (no heap allocation, no pointer to chase while
//! comparing) and longer ones in a boxed slice. Orders exactly like its bytes.

use std::borrow::Borrow;
use std::cmp::Ordering;

const INLINE: usize = 22;

/// See the module doc.
#[derive(Clone)]
pub enum InlineKey {
    /// `len` bytes stored in place.
    Inline {
        /// How many of `bytes` are the key.
        len: u8,
        /// The key, zero-padded.
        bytes: [u8; INLINE],
    },
    /// A longer key on the heap.
    Heap(Box<[u8]>),
}

impl InlineKey {
    /// Longest key stored inline.
    pub const INLINE: usize = INLINE;

    /// The key's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            InlineKey::Inline { len, bytes } => bytes.get(..*len as usize).unwrap_or_default(),
            InlineKey::Heap(b) => b,
        }
    }
}

impl From<&[u8]> for InlineKey {
    fn from(key: &[u8]) -> Self {
        if key.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..key.len()].copy_from_slice(key);
            InlineKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            InlineKey::Heap(key.into())
        }
    }
}

impl Borrow<[u8]> for InlineKey {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for InlineKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}
impl Eq for InlineKey {}
impl PartialOrd for InlineKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InlineKey {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            // Two inline keys: their zero-padded bytes, compared as big-endian words (no `memcmp` call:
            // a keydir lookup makes ~20 of these), then their lengths. That is byte order: where one key is
            // a prefix of the other, the padding compares equal to (or below) the rest of the longer key,
            // and the shorter key sorts first by length.
            (InlineKey::Inline { len: la, bytes: a }, InlineKey::Inline { len: lb, bytes: b }) => {
                words(a).cmp(&words(b)).then(la.cmp(lb))
            }
            _ => self.as_slice().cmp(other.as_slice()),
        }
    }
}

/// The 22 inline bytes as big-endian words, which order like the bytes.
fn words(b: &[u8; INLINE]) -> (u64, u64, u64) {
    let word = |at: usize, n: usize| {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&b[at..at + n]);
        u64::from_be_bytes(w)
    };
    (word(0, 8), word(8, 8), word(16, 6))
}

impl std::fmt::Debug for InlineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.as_slice().escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn is_24_bytes() {
        assert_eq!(std::mem::size_of::<InlineKey>(), 24);
    }

    proptest! {
        #[test]
        fn orders_and_round_trips_like_bytes(a in proptest::collection::vec(any::<u8>(), 0..40), b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let (ka, kb) = (InlineKey::from(&a[..]), InlineKey::from(&b[..]));
            prop_assert_eq!(ka.as_slice(), &a[..]);
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(ka == kb, a == b);
        }

        #[test]
        fn a_key_and_its_extensions_by_zero_and_small_bytes_order_like_bytes(a in proptest::collection::vec(0u8..3, 0..24), tail in proptest::collection::vec(0u8..2, 0..4)) {
            // Zero bytes look like the inline padding: the case a word comparison could get wrong.
            let b: Vec<u8> = a.iter().chain(&tail).copied().collect();
            let (ka, kb) = (InlineKey::from(&a[..]), InlineKey::from(&b[..]));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(kb.cmp(&ka), b.cmp(&a));
        }
    }
}
