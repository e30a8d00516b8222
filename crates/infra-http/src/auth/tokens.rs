//! The client tokens and their roles, read from the token file (`AUTH_TOKENS_FILE`).
//!
//! Format: one `<role> <token>` a line, the role one of `read`, `write`, `admin`; blank lines and lines
//! whose first non-blank character is `#` are ignored; fields are separated by spaces or tabs. A token is
//! at least [`MIN_TOKEN_LEN`] characters of visible ASCII (it travels in a header) and appears once
//! (two roles for one token would be ambiguous). A file with no token is refused: with no tokens the
//! server runs in protected mode, which is said by leaving `AUTH_TOKENS_FILE` unset, not by an empty file.
//!
//! A lookup compares the given token with every configured one in constant time (`subtle`) and does not
//! stop at a match, so its duration tells nothing about which token, or how much of one, was right (a
//! comparison of unequal lengths ends early: the length of a token may show, not its contents).
//! Tokens are held as [`Secret`]s: no `Debug`, log or error shows them.

use std::fmt;
use std::path::Path;

use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::replication::Secret;

/// The shortest token accepted: 16 characters (64 bits as hex, more from a larger alphabet), so that a
/// guessable word is refused at start rather than discovered later. Use more: `openssl rand -hex 32`.
pub const MIN_TOKEN_LEN: usize = 16;

/// Whether `token` may be a token (a client token, or the replication token): visible ASCII (it is
/// sent in a header, where anything else would be dropped or trimmed) and at least
/// [`MIN_TOKEN_LEN`] characters. The error completes "the token ..." and never holds the token.
pub fn check_token(token: &str) -> Result<(), String> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be visible ASCII characters (it is sent in a header)".into());
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "is {} characters; at least {MIN_TOKEN_LEN} are needed (for example `openssl rand -hex 32`)",
            token.len()
        ));
    }
    Ok(())
}

/// What a client token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads, listings, status.
    Read,
    /// Read, plus put, batch and delete.
    Write,
    /// Write, plus compaction and the cluster's status (membership changes need the replication token).
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Read, Role::Write, Role::Admin];

    /// The role's name in the token file.
    pub const fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a token file was refused. Never holds a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Others than its owner may change the file: anyone who can may grant themselves `admin`.
    #[error("the token file {path} is writable by others than its owner (mode {mode:o}): anyone who can change it can grant themselves admin; chmod go-w {path}")]
    Writable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A line is not `<role> <token>`.
    #[error("token file line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the token itself).
        reason: String,
    },
    /// No token at all.
    #[error("the token file has no token: leave AUTH_TOKENS_FILE unset to run in protected mode (loopback clients only), or add `<role> <token>` lines")]
    Empty,
}

/// The configured client tokens (see the module doc).
#[derive(Clone)]
pub struct TokenTable {
    entries: Vec<(Role, Secret)>,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenTable")
            .field("tokens", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl TokenTable {
    /// Parses the token file's text (see the module doc).
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<(Role, Secret)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let bad = |reason: String| TokenFileError::Line { line, reason };
            let mut fields = content.split([' ', '\t']).filter(|f| !f.is_empty());
            let (Some(role), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad(
                    "expected `<role> <token>` (two fields separated by spaces)".into(),
                ));
            };
            let role = Role::ALL
                .into_iter()
                .find(|r| r.name() == role)
                // Not echoed: a line written the wrong way round would put its token in the log.
                .ok_or_else(|| {
                    bad("the first field must be the role: read, write or admin".into())
                })?;
            check_token(token).map_err(|why| bad(format!("the token {why}")))?;
            if let Some(other) = entries.iter().position(|(_, t)| t.expose() == token) {
                return Err(bad(format!(
                    "the same token as the line with the {} role: a token has one role",
                    entries[other].0
                )));
            }
            entries.push((role, Secret::new(token)));
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(Self { entries })
    }

    /// Reads and parses the token file at `path`. Refuses a file that others than its owner may write;
    /// returns with the table a warning for one that others may read (its tokens are then not secret).
    pub fn load(path: &Path) -> Result<(Self, Option<String>), TokenFileError> {
        let shown = path.display().to_string();
        let read_err = |source| TokenFileError::Read {
            path: shown.clone(),
            source,
        };
        // One open: the mode checked is the mode of the file read.
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        let mode = permissions(&file).map_err(read_err)?;
        if mode & 0o022 != 0 {
            return Err(TokenFileError::Writable { path: shown, mode });
        }
        let warning = (mode & 0o044 != 0).then(|| {
            format!(
                "the token file {shown} is readable by others than its owner (mode {mode:o}): chmod 600 {shown}"
            )
        });
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).map_err(read_err)?;
        Ok((Self::parse(&text)?, warning))
    }

    /// The role of `given`, if it is a configured token (constant time: see the module doc).
    pub fn role_of(&self, given: &[u8]) -> Option<Role> {
        let mut code = 0u8;
        for (role, token) in &self.entries {
            let hit = token.expose().as_bytes().ct_eq(given);
            code.conditional_assign(&role.code(), hit);
        }
        Role::from_code(code)
    }

    /// How many tokens have each role, weakest first.
    pub fn counts(&self) -> [(Role, usize); 3] {
        Role::ALL.map(|r| (r, self.entries.iter().filter(|(e, _)| *e == r).count()))
    }
}

#[cfg(unix)]
fn permissions(file: &std::fs::File) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(file.metadata()?.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn permissions(file: &std::fs::File) -> std::io::Result<u32> {
    file.metadata().map(|_| 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "read-token-0123456789";
    const W: &str = "write-token-0123456789";
    const A: &str = "admin-token-0123456789";

    #[test]
    fn each_token_has_its_role_and_others_none() {
        let t = TokenTable::parse(&format!(
            "# comment\n\n  read {R}\nwrite\t{W}\n   # indented comment\nadmin   {A}  \n"
        ))
        .unwrap();
        assert_eq!(t.role_of(R.as_bytes()), Some(Role::Read));
        assert_eq!(t.role_of(W.as_bytes()), Some(Role::Write));
        assert_eq!(t.role_of(A.as_bytes()), Some(Role::Admin));
        for wrong in [
            "",
            "read",
            &R[..R.len() - 1],
            &format!("{R}x"),
            "ADMIN-TOKEN-0123456789",
        ] {
            assert_eq!(t.role_of(wrong.as_bytes()), None, "{wrong:?}");
        }
        assert_eq!(
            t.counts(),
            [(Role::Read, 1), (Role::Write, 1), (Role::Admin, 1)]
        );
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }

    #[test]
    fn bad_lines_are_refused_with_their_number_and_without_the_token() {
        let cases = [
            (format!("read {R}\nroot {A}"), 2, "must be the role"),
            (format!("read {R}\n{A} admin"), 2, "must be the role"),
            (format!("admin {A} extra"), 1, "two fields"),
            ("admin".to_string(), 1, "two fields"),
            ("read short".to_string(), 1, "at least 16"),
            (format!("read {R}\n\nadmin {R}"), 3, "one role"),
            (
                "read tok\u{e9}n-0123456789abcdef".to_string(),
                1,
                "visible ASCII",
            ),
        ];
        for (text, line, says) in cases {
            let err = TokenFileError::to_string(&TokenTable::parse(&text).unwrap_err());
            assert!(err.contains(&format!("line {line}:")), "{err}");
            assert!(err.contains(says), "{err}");
            assert!(!err.contains(R) && !err.contains(A), "{err}");
        }
        assert!(matches!(
            TokenTable::parse("# nothing\n\n"),
            Err(TokenFileError::Empty)
        ));
    }

    #[test]
    fn debug_shows_no_token() {
        let t = TokenTable::parse(&format!("admin {A}")).unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains(A), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_may_write_is_refused_and_one_they_may_read_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("admin {A}\n")).unwrap();
        let chmod =
            |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        chmod(0o600);
        let (t, warning) = TokenTable::load(&path).unwrap();
        assert_eq!(t.role_of(A.as_bytes()), Some(Role::Admin));
        assert_eq!(warning, None);
        chmod(0o644);
        let (_, warning) = TokenTable::load(&path).unwrap();
        assert!(warning.unwrap().contains("chmod 600"));
        for mode in [0o602, 0o620, 0o666] {
            chmod(mode);
            let err = TokenTable::load(&path).unwrap_err().to_string();
            assert!(err.contains("writable by others"), "{mode:o}: {err}");
        }
        let err = TokenTable::load(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, TokenFileError::Read { .. }), "{err}");
    }
}
