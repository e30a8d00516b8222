//! Puts the git revision into `kvctl --version` as `KVCTL_GIT_REVISION`: the abbreviated commit, with
//! `-dirty` when tracked files differ from it, or `unknown` where git or the repository is absent (a Docker
//! build context or a source tarball). `KV_GIT_REVISION`, when set, is used as is (for builds that know
//! the revision but have no repository). Never fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KV_GIT_REVISION");
    let revision = std::env::var("KV_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=KVCTL_GIT_REVISION={revision}");
}

/// The directory of this package (git runs there).
fn here() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()))
}

/// The trimmed output of a successful `git ARGS`, or `None`.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(here())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

/// Rebuild when this git file changes (HEAD moved, a commit, staging): only for files that exist, since
/// cargo reruns a build script every time for a missing one.
fn watch(git_path: &str) {
    if let Some(p) = git(&["rev-parse", "--git-path", git_path]) {
        let p = here().join(p);
        if Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn from_git() -> Option<String> {
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    watch("HEAD");
    watch("index");
    watch("packed-refs");
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(&branch);
    }
    // Tracked files only: a stray untracked file does not change what was built.
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{revision}-dirty")
    } else {
        revision
    })
}
