//! A secret string (the replication token) that cannot leak by accident: its `Debug` and `Display` print
//! `<redacted>`, so logging a configuration or an error that holds one never shows it. The value is read
//! only through [`Secret::expose`], which makes every use visible in review.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// A secret; see the module doc.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// So a command-line parser can build one directly (it never fails).
impl FromStr for Secret {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-token");
        let shown = format!("{s} {s:?} {:?} {:#?}", Some(s.clone()), vec![s.clone()]);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert_eq!(s.expose(), "hunter2-token");
    }
}
