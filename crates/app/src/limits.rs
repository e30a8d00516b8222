//! Size limits on keys and values.

/// Size limits enforced by the use cases. Defaults (DESIGN §2): key at most 4 KiB, value at most 64 MiB.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Largest accepted key, in bytes.
    pub max_key_bytes: usize,
    /// Largest accepted value, in bytes.
    pub max_value_bytes: usize,
    /// Most operations in one batch.
    pub max_batch_ops: usize,
}

impl Limits {
    /// Default largest key: 4 KiB.
    pub const DEFAULT_MAX_KEY_BYTES: usize = 4 * 1024;
    /// Default largest value: 64 MiB.
    pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;
    /// Default most operations per batch.
    pub const DEFAULT_MAX_BATCH_OPS: usize = 100_000;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: Self::DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: Self::DEFAULT_MAX_VALUE_BYTES,
            max_batch_ops: Self::DEFAULT_MAX_BATCH_OPS,
        }
    }
}
