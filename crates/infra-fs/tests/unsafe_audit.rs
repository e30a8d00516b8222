//! The workspace keeps its `unsafe` code in one audited module, `crates/infra-fs/src/mapped.rs` (memory
//! maps of segments). The workspace lint is `unsafe_code = "deny"` so that module can allow it; this test
//! is what keeps everything else free of it: it fails on any `unsafe` block, function, impl or lint
//! exemption elsewhere, and on any `unsafe` block in the module without a `// SAFETY:` comment right above.

use std::fs;
use std::path::{Path, PathBuf};

/// The one file allowed to contain `unsafe` code, relative to the workspace root.
const AUDITED: &str = "crates/infra-fs/src/mapped.rs";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/infra-fs sits two levels below the workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The words that introduce unsafe code, built so this file does not contain them itself.
fn markers() -> Vec<String> {
    let word = ["un", "safe"].concat();
    vec![
        format!("{word} {{"),
        format!("{word} fn"),
        format!("{word} impl"),
        format!("{word} trait"),
        format!("{word} extern"),
        format!("allow({word}_code"),
    ]
}

#[test]
fn unsafe_code_lives_only_in_the_audited_module() {
    let root = workspace_root();
    let mut files = Vec::new();
    for top in ["crates", "bin", "integration-tests"] {
        rust_files(&root.join(top), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} Rust files under {}: wrong root?",
        files.len(),
        root.display()
    );
    let markers = markers();
    let mut offending = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap_or(file);
        if rel == Path::new(AUDITED) {
            continue;
        }
        let text = fs::read_to_string(file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if markers.iter().any(|m| line.contains(m.as_str())) {
                offending.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "unsafe code outside {AUDITED}:\n{}",
        offending.join("\n")
    );
}

#[test]
fn every_unsafe_block_of_the_audited_module_says_why_it_is_sound() {
    let text =
        fs::read_to_string(workspace_root().join(AUDITED)).expect("the audited module exists");
    let block = format!("{} {{", ["un", "safe"].concat());
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = 0;
    for (n, line) in lines.iter().enumerate() {
        if !line.contains(block.as_str()) {
            continue;
        }
        blocks += 1;
        // The comment right above (over one or more `//` lines) must start with `SAFETY:`.
        let comment: Vec<&&str> = lines[..n]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("//"))
            .collect();
        assert!(
            comment
                .last()
                .is_some_and(|l| l.trim_start().starts_with("// SAFETY:")),
            "{AUDITED}:{}: an unsafe block without a `// SAFETY:` comment above it",
            n + 1
        );
    }
    assert!(
        blocks >= 1,
        "{AUDITED} has no unsafe block: update this audit"
    );
}
