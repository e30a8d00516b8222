//! The test run's id, and the names of the Docker objects it owns.
//!
//! Several checkouts (or CI jobs) may test against one Docker engine at the same time, so nothing a run
//! creates has an engine-wide name:
//!
//! - **Run id**: `KV_TEST_RUN_ID`, 1-32 lowercase ASCII letters and digits. `make test` sets a fresh one per
//!   run (a hash of the checkout path, the time and make's PID). Without it (plain `cargo nextest run`) the
//!   id is `c` + a hash of the checkout path: stable, because every test process of one run must agree on
//!   it (nextest runs each test in its own process) and so that the image is reused, not piled up.
//! - **Image**: `moniepoint-kv:test-<run>`.
//! - **Containers, networks, volumes**: every name starts `kvtest-<run>-` (compose objects too: the project
//!   is `kvtest-<run>-compose-<pid>`); containers also carry the label `kvtest.run=<run>`.
//! - **Cleanup** (`make test-clean`, `.ci/run`) removes exactly the objects whose name starts
//!   `kvtest-<run>-`, and the run's image: [`RunId::owns`] is that rule. Because a run id has no `-`, the
//!   prefixes of two different ids never match each other's names.

use std::path::Path;

/// Environment variable holding the run id.
pub const RUN_ID_VAR: &str = "KV_TEST_RUN_ID";
/// Label key carrying the run id on every container the tests start.
pub const RUN_LABEL: &str = "kvtest.run";
/// Longest accepted run id (names stay well under Docker's limits).
pub const MAX_LEN: usize = 32;

/// A validated run id: 1-[`MAX_LEN`] characters from `[a-z0-9]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunId(String);

impl RunId {
    /// Parses a run id, saying what is wrong with a bad one.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_LEN {
            return Err(format!(
                "{RUN_ID_VAR} must be 1-{MAX_LEN} characters long, not {} ({s:?})",
                s.len()
            ));
        }
        // No '-' (or other separators): it would let one id's prefix match another id's names.
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        {
            return Err(format!(
                "{RUN_ID_VAR} may hold only lowercase letters and digits; {s:?} has {c:?}"
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The id of runs from the checkout at `root` when `KV_TEST_RUN_ID` is unset: `c` + 64-bit FNV-1a of the
    /// path, in hex.
    pub fn for_checkout(root: &Path) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in root.as_os_str().as_encoded_bytes() {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        Self(format!("c{h:016x}"))
    }

    /// The id itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The image the run tests: `moniepoint-kv:test-<run>`.
    pub fn image(&self) -> String {
        format!("moniepoint-kv:test-{}", self.0)
    }

    /// The prefix of every container, network and volume name of the run: `kvtest-<run>-`.
    pub fn prefix(&self) -> String {
        format!("kvtest-{}-", self.0)
    }

    /// Name prefix of one cluster of the run (`unique` tells the clusters of the run apart).
    pub fn cluster_prefix(&self, unique: &str) -> String {
        format!("{}{unique}", self.prefix())
    }

    /// The compose project of the process `pid` of the run (compose names its objects after it).
    pub fn compose_project(&self, pid: u32) -> String {
        format!("{}compose-{pid}", self.prefix())
    }

    /// Whether the cleanup of this run removes the object called `name`.
    pub fn owns(&self, name: &str) -> bool {
        name.starts_with(&self.prefix())
    }
}

/// This process's run id: `KV_TEST_RUN_ID`, or [`RunId::for_checkout`] of the workspace when unset.
///
/// # Panics
/// When `KV_TEST_RUN_ID` is set but not a valid run id.
pub fn current() -> RunId {
    match std::env::var(RUN_ID_VAR) {
        Ok(s) => RunId::parse(&s).unwrap_or_else(|e| panic!("{e}")),
        Err(_) => RunId::for_checkout(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every name a run gives Docker objects: cluster containers and network, and compose's containers,
    /// network and volumes (compose v1 and v2 spellings).
    fn names_of(run: &RunId) -> Vec<String> {
        let cluster = run.cluster_prefix("4242-beef");
        let project = run.compose_project(4242);
        vec![
            format!("{cluster}-leader"),
            format!("{cluster}-f0"),
            format!("{cluster}-net"),
            format!("{project}_leader_1"),
            format!("{project}-follower1-1"),
            format!("{project}_default"),
            format!("{project}_leader-data"),
        ]
    }

    #[test]
    fn two_runs_have_disjoint_names_and_each_cleanup_matches_only_its_own() {
        // "ab" is a prefix of "abc" and "ab1": the case a looser rule would get wrong.
        let ids = ["ab", "abc", "ab1", "c0123456789abcdef"];
        for a in ids {
            for b in ids {
                let (a, b) = (RunId::parse(a).unwrap(), RunId::parse(b).unwrap());
                let (na, nb) = (names_of(&a), names_of(&b));
                assert!(na.iter().all(|n| a.owns(n)), "{a:?} must own its {na:?}");
                if a == b {
                    continue;
                }
                assert_ne!(a.image(), b.image());
                for n in &nb {
                    assert!(!na.contains(n), "{a:?} and {b:?} share the name {n}");
                    assert!(!a.owns(n), "the cleanup of {a:?} would remove {n} of {b:?}");
                }
            }
        }
    }

    #[test]
    fn the_cleanup_leaves_objects_of_no_run_alone() {
        let run = RunId::parse("ab").unwrap();
        for other in [
            "kvtest-leader",
            "kvtest-ab",
            "kvtest-abc-leader",
            "moniepoint-kv_leader_1",
            "xkvtest-ab-leader",
        ] {
            assert!(!run.owns(other), "{other}");
        }
    }

    #[test]
    fn run_ids_are_lowercase_letters_and_digits() {
        for ok in ["a", "0", "c0123456789abcdef", &"z".repeat(MAX_LEN)] {
            assert_eq!(RunId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "a-b",
            "a_b",
            "A",
            "a.b",
            "a b",
            "é",
            &"z".repeat(MAX_LEN + 1),
        ] {
            let err = RunId::parse(bad).unwrap_err();
            assert!(err.contains(RUN_ID_VAR), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_default_id_is_a_valid_id_per_checkout() {
        let a = RunId::for_checkout(Path::new("/work/one"));
        assert_eq!(a, RunId::for_checkout(Path::new("/work/one")));
        assert_ne!(a, RunId::for_checkout(Path::new("/work/two")));
        assert_eq!(RunId::parse(a.as_str()).unwrap(), a);
    }
}
