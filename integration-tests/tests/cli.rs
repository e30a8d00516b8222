//! `kvctl` end to end: every subcommand against a spawned `kv-server` and against a data directory
//! (embedded), exit codes, binary values through stdin/stdout, a 100 000-line import/export round trip,
//! the shell driven by piped stdin, and bad input that must write nothing.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{binary, free_port, Server};

/// The environment variables kvctl reads; tests start without them.
const KVCTL_ENV: [&str; 4] = ["KV_URL", "KV_ENDPOINT", "KV_TIMEOUT", "KV_CONNECT_TIMEOUT"];

/// Runs kvctl with `args` (after the target arguments) and `stdin`; returns (exit code, stdout, stderr).
fn kvctl(target: &[String], args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, String) {
    kvctl_env(target, args, stdin, &[])
}

/// A kvctl command with `target` and `args`, none of kvctl's environment variables but `env`.
fn kvctl_command(target: &[String], args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary("kvctl"));
    for name in KVCTL_ENV {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied()).args(target).args(args);
    cmd
}

/// [`kvctl`] with environment variables.
fn kvctl_env(
    target: &[String],
    args: &[&str],
    stdin: &[u8],
    env: &[(&str, &str)],
) -> (i32, Vec<u8>, String) {
    let mut child = kvctl_command(target, args, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The same checks for both kinds of target.
fn exercise(target: &[String], what: &str) {
    let ok = |args: &[&str], stdin: &[u8]| {
        let (code, out, err) = kvctl(target, args, stdin);
        assert_eq!(code, 0, "{what}: kvctl {args:?} failed: {err}");
        out
    };
    assert_eq!(ok(&["put", "greeting", "hello world"], b""), b"OK\n");
    assert_eq!(
        ok(&["get", "greeting"], b""),
        b"hello world",
        "{what}: raw value, no newline added"
    );
    // Binary-exact through stdin and stdout.
    let binary_value: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    ok(&["put", "bin"], &binary_value);
    assert_eq!(
        ok(&["get", "bin"], b""),
        binary_value,
        "{what}: binary value round-trips"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("value");
    std::fs::write(&file, b"from a file").unwrap();
    ok(&["put", "filed", "--file", file.to_str().unwrap()], b"");
    assert_eq!(ok(&["get", "filed"], b""), b"from a file");
    let json_put = String::from_utf8(ok(&["--output", "json", "put", "j", "v"], b"")).unwrap();
    assert!(json_put.starts_with("{\"lsn\":"), "{what}: {json_put}");

    // Batches: all three formats.
    ok(&["batch"], br#"{"r1":"1","r2":"2"}"#);
    ok(
        &["batch"],
        b"{\"key\":\"r3\",\"value\":\"3\"}\n{\"key\":\"r4\",\"value\":\"4\"}\n",
    );
    ok(&["batch"], b"r5\t5\nr6\tsix\n");
    assert_eq!(
        ok(&["range", "r1", "r6"], b""),
        b"r1\t1\nr2\t2\nr3\t3\nr4\t4\nr5\t5\nr6\tsix\n"
    );
    assert_eq!(
        ok(&["range", "r0", "r9", "--limit", "2"], b""),
        b"r1\t1\nr2\t2\n"
    );
    assert_eq!(
        ok(&["--output", "json", "range", "r2", "r2"], b""),
        b"{\"key\":\"r2\",\"value\":\"2\"}\n"
    );

    // Delete is idempotent; a missing key exits 1.
    assert_eq!(ok(&["delete", "r1"], b""), b"OK\n");
    ok(&["delete", "r1"], b"");
    let (code, out, err) = kvctl(target, &["get", "r1"], b"");
    assert_eq!((code, out.len()), (1, 0), "{what}: missing key: {err}");
    assert!(err.contains("not found"), "{err}");

    // Bad input: exit 2 and nothing written.
    let before = ok(&["export", "", "\u{10ffff}"], b"");
    for (args, stdin) in [
        (vec!["batch"], &b"good\t1\nbad line without a tab\n"[..]),
        (vec!["batch"], &b"{\"a\": 5}"[..]),
        (vec!["put", "", "v"], &b""[..]),
        (vec!["range", "z", "a"], &b""[..]),
    ] {
        let (code, _, err) = kvctl(target, &args, stdin);
        assert_eq!(code, 2, "{what}: {args:?} should be a usage error: {err}");
        assert!(!err.is_empty());
    }
    assert_eq!(
        ok(&["export", "", "\u{10ffff}"], b""),
        before,
        "{what}: bad input wrote nothing"
    );
    let (code, _, _) = kvctl(target, &["no-such-command"], b"");
    assert_eq!(code, 2);

    // Status.
    let status: serde_json::Value =
        serde_json::from_slice(&ok(&["--output", "json", "status"], b"")).unwrap();
    assert!(status["keys"].as_u64().unwrap() >= 8, "{what}: {status}");

    // The shell, driven by piped stdin: no prompt, errors on stderr, it goes on.
    // Scripted, it exits with the first failure's code (here: not found), even after `exit`.
    let (code, out, err) = kvctl(target, &["shell"], b"put s1 shell value\nread s1\nbatchput a1=1 a2=2\nreadrange a1 a2\nread nope\nbogus\nhelp\nexit\nput never run\n");
    assert_eq!(
        code, 1,
        "{what}: the first failure was a missing key: {err}"
    );
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.starts_with("OK\nshell value\nOK\na1\t1\na2\t2\n"),
        "{what}: {out}"
    );
    assert!(out.contains("readrange START END"), "help text");
    assert!(
        err.contains("not found") && err.contains("unknown command"),
        "{err}"
    );
    assert_eq!(
        kvctl(target, &["get", "never"], b"").0,
        1,
        "nothing after exit ran"
    );
    let (code, _, err) = kvctl(target, &["shell"], b"bogus\nread nope\nput s2 v\n");
    assert_eq!(code, 2, "{what}: first failure was a usage error: {err}");
    assert!(err.contains("2 command(s) failed"), "{what}: {err}");
    let (code, _, err) = kvctl(target, &["shell"], b"put s3 v\nread s3\n");
    assert_eq!(code, 0, "{what}: no failure: {err}");

    // Import of 100 000 lines, then export gives the same pairs.
    let mut lines = String::new();
    for i in 0..100_000 {
        lines.push_str(&format!("imp{i:06}\tvalue-{i}\n"));
    }
    let import_file = dir.path().join("import.tsv");
    std::fs::write(&import_file, &lines).unwrap();
    let (code, _, err) = kvctl(target, &["import", import_file.to_str().unwrap()], b"");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("imported 100000 pairs"), "{err}");
    let exported = ok(&["export", "imp000000", "imp999999"], b"");
    let exported = String::from_utf8(exported).unwrap();
    assert_eq!(exported.lines().count(), 100_000);
    for (i, line) in exported.lines().enumerate() {
        assert_eq!(
            line,
            format!("{{\"key\":\"imp{i:06}\",\"value\":\"value-{i}\"}}")
        );
    }
    // compact: a report, and the same contents after it.
    let report: serde_json::Value =
        serde_json::from_slice(&ok(&["--output", "json", "compact"], b"")).unwrap();
    // (64 MiB segments: everything is in the active segment, which holds garbage, so a manual compaction
    // seals it and merges it.)
    assert_eq!(report["input_segments"], 1, "{what}: {report}");
    assert!(
        report["output_bytes"].as_u64() < report["input_bytes"].as_u64(),
        "{what}: {report}"
    );
    assert!(
        report["runs"].is_u64() && report["millis"].is_u64(),
        "{what}: {report}"
    );
    assert_eq!(
        ok(&["export", "imp000000", "imp999999"], b"").len(),
        exported.len(),
        "{what}: contents kept by compaction"
    );

    // export | import round-trips binary data too.
    let bin_export = ok(&["export", "bin", "bin"], b"");
    assert!(String::from_utf8_lossy(&bin_export).contains("value_base64"));
    ok(&["delete", "bin"], b"");
    let bin_file = dir.path().join("bin.jsonl");
    std::fs::write(&bin_file, &bin_export).unwrap();
    ok(&["import", bin_file.to_str().unwrap()], b"");
    assert_eq!(ok(&["get", "bin"], b""), binary_value);
}

#[test]
fn every_subcommand_against_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port(), &["--durability", "never"]);
    exercise(
        &["--url".into(), format!("http://{}", server.addr)],
        "remote",
    );
}

#[test]
fn every_subcommand_on_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    exercise(
        &["--data-dir".into(), dir.path().to_str().unwrap().into()],
        "embedded",
    );
}

#[test]
fn failures_have_their_exit_codes_and_messages() {
    // Unreachable server: 3.
    let (code, _, err) = kvctl(
        &["--url".into(), format!("http://127.0.0.1:{}", free_port())],
        &["get", "k"],
        b"",
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    // A data directory held by a server: 3, with a clear message.
    let dir = tempfile::tempdir().unwrap();
    let _server = Server::start(dir.path(), free_port(), &[]);
    let (code, _, err) = kvctl(
        &["--data-dir".into(), dir.path().to_str().unwrap().into()],
        &["get", "k"],
        b"",
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("locked by another process"), "{err}");
    assert!(Path::new(dir.path()).exists());
}

#[test]
fn the_load_generator_reports_throughput_and_latency() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port(), &["--durability", "never"]);
    let target = ["--url".to_string(), format!("http://{}", server.addr)];
    for args in [
        vec![
            "bench", "put", "-n", "300", "-c", "4", "--keys", "50", "--json",
        ],
        vec![
            "bench",
            "get",
            "-n",
            "300",
            "-c",
            "4",
            "--keys",
            "50",
            "--preload",
            "--distribution",
            "zipfian",
            "--json",
        ],
        vec![
            "bench",
            "range",
            "-n",
            "50",
            "-c",
            "2",
            "--keys",
            "200",
            "--preload",
            "--json",
        ],
        vec!["bench", "batch", "-n", "50", "-c", "2", "--json"],
        vec![
            "bench", "mixed", "-n", "200", "-c", "4", "--keys", "50", "--json",
        ],
    ] {
        let (code, out, err) = kvctl(&target, &args, b"");
        assert_eq!(code, 0, "{args:?}: {err}");
        let summary: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let n: u64 = args[3].parse().unwrap();
        assert_eq!(
            summary["requests"].as_u64().unwrap() + summary["errors"].as_u64().unwrap(),
            n,
            "{args:?}: {summary}"
        );
        assert_eq!(summary["errors"], 0, "{args:?}: {summary}");
        assert!(summary["requests_per_second"].as_f64().unwrap() > 0.0);
        assert!(
            summary["latency_us"]["p99"].as_u64().unwrap()
                >= summary["latency_us"]["p50"].as_u64().unwrap()
        );
    }
    let (_, out, _) = kvctl(&target, &["get", "key00000007"], b"");
    assert_eq!(out.len(), 256, "preload wrote 256-byte values");
    let (code, _, err) = kvctl(&target, &["bench", "get", "-c", "0"], b"");
    assert_eq!(code, 2, "{err}");
}

#[test]
fn an_empty_value_round_trips_through_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port(), &["--durability", "never"]);
    let target = ["--url".to_string(), format!("http://{}", server.addr)];
    let (code, out, err) = kvctl(&target, &["put", "k", ""], b"");
    assert_eq!((code, out.as_slice()), (0, &b"OK\n"[..]), "{err}");
    let (code, out, err) = kvctl(&target, &["get", "k"], b"");
    assert_eq!((code, out.len()), (0, 0), "an empty value, found: {err}");
    // An import with a binary pair goes pair by pair; the empty value next to it must get through too.
    let file = dir.path().join("mixed.jsonl");
    // "/wAB" is base64 of ff 00 01.
    std::fs::write(
        &file,
        "{\"key\":\"bin\",\"value_base64\":\"/wAB\"}\n{\"key\":\"empty\",\"value\":\"\"}\n",
    )
    .unwrap();
    let (code, _, err) = kvctl(&target, &["import", file.to_str().unwrap()], b"");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("imported 2 pairs"), "{err}");
    assert_eq!(kvctl(&target, &["get", "bin"], b"").1, [0xff, 0x00, 0x01]);
    let (code, out, err) = kvctl(&target, &["get", "empty"], b"");
    assert_eq!((code, out.len()), (0, 0), "{err}");
}

#[test]
fn a_server_that_never_answers_times_out() {
    // Accepts connections and never answers (the connections are held open until the test ends).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let target = ["--url".to_string(), format!("http://{addr}")];
    for (args, env) in [
        (vec!["--timeout", "300ms", "get", "k"], vec![]),
        (vec!["put", "k", "v"], vec![("KV_TIMEOUT", "0.3")]),
    ] {
        let (code, err) = run_bounded(&target, &args, &env);
        assert_eq!(code, 3, "{args:?} {env:?}: {err}");
        assert!(
            err.contains("request timeout") && err.contains("--timeout"),
            "{args:?}: the message names the timeout: {err}"
        );
    }
    // A bad duration is a usage error.
    let (code, _, err) = kvctl(&target, &["--timeout", "soon", "get", "k"], b"");
    assert_eq!(code, 2, "{err}");
}

/// Runs kvctl with a hang guard: kills it if it has not exited after 60 s (a guard against hanging the
/// suite, not a speed check). Returns the exit code and stderr.
fn run_bounded(target: &[String], args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut child = kvctl_command(target, args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("kvctl {args:?} still running after 60 s: no timeout fired");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn closing_stdout_early_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let target = [
        "--data-dir".to_string(),
        dir.path().to_str().unwrap().into(),
    ];
    let lines: String = (0..50_000)
        .map(|i| format!("k{i:06}\t{}\n", "v".repeat(40)))
        .collect();
    let (code, _, err) = kvctl(&target, &["import", "-"], lines.as_bytes());
    assert_eq!(code, 0, "{err}");
    // Like `kvctl range ... | head -c 10`: far more output than a pipe holds, and the reader goes away.
    let mut child = Command::new(binary("kvctl"))
        .args(&target)
        .args(["range", "k", "l"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "no message: {err}");
}

#[test]
fn a_missing_data_directory_is_created_only_by_writes() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("typo");
    let target = ["--data-dir".to_string(), missing.to_str().unwrap().into()];
    for args in [
        vec!["get", "k"],
        vec!["range", "a", "z"],
        vec!["export", "a", "z"],
        vec!["status"],
        vec!["compact"],
        vec!["delete", "k"],
        vec!["shell"],
    ] {
        let (code, _, err) = kvctl(&target, &args, b"read k\n");
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(!missing.exists(), "{args:?} created the directory");
    }
    let (code, _, err) = kvctl(&target, &["put", "k", "v"], b"");
    assert_eq!(code, 0, "a write creates the store: {err}");
    assert_eq!(kvctl(&target, &["get", "k"], b"").1, b"v");
}

#[test]
fn the_version_names_the_git_revision() {
    let (code, out, err) = kvctl(&[], &["--version"], b"");
    assert_eq!(code, 0, "{err}");
    let version = String::from_utf8(out).unwrap();
    let revision = version
        .trim_end()
        .strip_prefix(&format!("kvctl {} (git ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version:?}"));
    let in_a_checkout = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| o.status.success());
    if in_a_checkout {
        let hex = revision.strip_suffix("-dirty").unwrap_or(revision);
        assert!(
            hex.len() == 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{version:?}"
        );
    } else {
        assert_eq!(revision, "unknown");
    }
}

#[test]
fn completion_scripts_are_generated() {
    for (shell, marker) in [
        ("bash", "complete -F _kvctl"),
        ("zsh", "#compdef kvctl"),
        ("fish", "complete -c kvctl"),
    ] {
        let (code, out, err) = kvctl(&[], &["completion", shell], b"");
        assert_eq!(code, 0, "{shell}: {err}");
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("import"),
            "{shell}: subcommands are completed"
        );
    }
    assert_eq!(kvctl(&[], &["completion", "tcsh"], b"").0, 2);
}

#[test]
fn the_server_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), free_port(), &["--durability", "never"]);
    let url = format!("http://{}", server.addr);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = kvctl_env(&[], &["put", "k", "v"], b"", &[("KV_URL", &url)]);
    assert_eq!(code, 0, "KV_URL: {err}");
    let (code, out, err) = kvctl_env(&[], &["get", "k"], b"", &[("KV_ENDPOINT", &url)]);
    assert_eq!((code, out.as_slice()), (0, &b"v"[..]), "KV_ENDPOINT: {err}");
    // --url wins over KV_URL, and KV_URL over KV_ENDPOINT.
    let target = ["--url".to_string(), url.clone()];
    assert_eq!(
        kvctl_env(&target, &["get", "k"], b"", &[("KV_URL", &nowhere)]).0,
        0
    );
    let env = [("KV_URL", url.as_str()), ("KV_ENDPOINT", nowhere.as_str())];
    assert_eq!(kvctl_env(&[], &["get", "k"], b"", &env).0, 0);
}

/// Issue: one flipped byte in a sealed segment made the store unopenable with no way back. The server
/// refuses to start and names `kvctl repair`; the repair keeps every other write and names the lost LSN.
#[test]
fn a_damaged_sealed_segment_is_refused_at_start_and_repaired_by_kvctl() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server::start(dir.path(), port, &["--segment-bytes", "4096"]);
    for i in 0..100 {
        let (status, _) = server.client().request(
            "PUT",
            &format!("/v1/kv/k{i:03}"),
            format!("value-{i:03}-{}", "x".repeat(40)).as_bytes(),
        );
        assert_eq!(status, 200);
    }
    server.signal("TERM");
    drop(server);
    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3);
    // A byte in the middle of the first sealed segment's records.
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[24 + 200] ^= 0x20;
    std::fs::write(&segs[0], bytes).unwrap();

    let out = Command::new(binary("kv-server"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &free_port().to_string(),
            "--data-path",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the server must refuse a damaged store"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kvctl repair"), "{stderr}");

    let target = vec!["--data-dir".to_string(), dir.path().display().to_string()];
    let (code, stdout, stderr) = kvctl(&target, &["repair"], b"");
    let report = String::from_utf8_lossy(&stdout);
    assert_eq!(code, 0, "{report}{stderr}");
    assert!(report.contains("1 write(s), LSNs"), "{report}");
    assert!(report.contains("the store opens: 99 keys"), "{report}");
    let (code, stdout, _) = kvctl(&target, &["--output", "json", "repair"], b"");
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(json["clean"], true, "a second repair finds nothing: {json}");
    // Every other write is back; the server starts again.
    let server = Server::start(dir.path(), port, &[]);
    let (_, listing) = server.client().request("GET", "/v1/kv?limit=1000", b"");
    let listing: serde_json::Value = serde_json::from_slice(&listing).unwrap();
    assert_eq!(listing["items"].as_array().unwrap().len(), 99);

    // Without --data-dir it is a usage error.
    let (code, _, stderr) = kvctl(&[], &["repair"], b"");
    assert_eq!(code, 2, "{stderr}");
}
