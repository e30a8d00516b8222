//! `/metrics` is a valid Prometheus text exposition that `promtool check metrics` accepts, on a standalone
//! leader, a leader with followers configured and a follower (so the replication families are included).
//!
//! The exposition is read by a strict parser of the text format (below): any line it cannot parse fails
//! the test, where a lenient scraper library would skip it. On top it applies promtool's lints: counters,
//! and only counters, end in `_total`; every family has one HELP and one TYPE before its samples and its
//! samples are together; histograms are cumulative and end in `+Inf` equal to `_count`; no series repeats.
//! When `promtool` is on the PATH (Debian's `prometheus` package) the text is also checked by it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use kv_infra_http::replication::{AckPolicy, FollowerNode, LeaderHub, Replication, Role};

/// One sample line: metric name, labels (sorted), value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A metric family: its TYPE, HELP and samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: Option<String>,
    samples: Vec<Sample>,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses `{a="x",b="y\"z"}` (the text after the metric name) into labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((labels, s));
    };
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// The family a sample name belongs to, given the families declared so far.
fn family_of<'a>(name: &'a str, families: &BTreeMap<String, Family>) -> Option<&'a str> {
    if families.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        families
            .get(base)
            .filter(|f| f.kind == "histogram" || f.kind == "summary")
            .map(|_| base)
    })
}

/// Parses and lints an exposition; every problem is an error naming the line.
fn check_exposition(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        let (family, sample) = if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let (keyword, name) = (words.next(), words.next().unwrap_or(""));
            let rest = words.next().unwrap_or("");
            if !matches!(keyword, Some("HELP" | "TYPE")) {
                continue; // a plain comment
            }
            if !is_name(name, true) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let f = families.entry(name.to_string()).or_default();
            if !f.samples.is_empty() {
                return Err(at("HELP or TYPE after the family's samples".into()));
            }
            if keyword == Some("TYPE") {
                if !f.kind.is_empty() {
                    return Err(at("second TYPE".into()));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&rest) {
                    return Err(at(format!("unknown type {rest:?}")));
                }
                f.kind = rest.to_string();
            } else {
                if f.help.is_some() {
                    return Err(at("second HELP".into()));
                }
                f.help = Some(rest.to_string());
            }
            (name.to_string(), None)
        } else {
            let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
            let name = &line[..name_end];
            if !is_name(name, true) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let (labels, rest) = parse_labels(&line[name_end..]).map_err(at)?;
            let mut fields = rest.split_whitespace();
            let value =
                parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
            if let Some(ts) = fields.next() {
                ts.parse::<i64>()
                    .map_err(|e| at(format!("bad timestamp: {e}")))?;
            }
            if fields.next().is_some() {
                return Err(at("trailing text".into()));
            }
            let family = family_of(name, &families)
                .ok_or_else(|| at("sample without a TYPE before it".into()))?
                .to_string();
            if !series.insert((name.to_string(), labels.clone())) {
                return Err(at("series repeated".into()));
            }
            (
                family,
                Some(Sample {
                    name: name.to_string(),
                    labels,
                    value,
                }),
            )
        };
        // A family's lines are contiguous: once another family starts, it may not come back.
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(at(format!("family {family} is split")));
            }
            if let Some(prev) = current.replace(family.clone()) {
                finished.insert(prev);
            }
        }
        if let Some(s) = sample {
            families.get_mut(&family).unwrap().samples.push(s);
        }
    }
    for (name, f) in &families {
        if f.kind.is_empty() || f.help.as_deref().is_none_or(str::is_empty) {
            return Err(format!("{name}: needs both HELP and TYPE"));
        }
        if (f.kind == "counter") != name.ends_with("_total") {
            return Err(format!(
                "{name} is a {}: counters, and only counters, are named _total",
                f.kind
            ));
        }
        if f.kind == "histogram" {
            check_histogram(name, f)?;
        }
    }
    Ok(families)
}

/// Buckets cumulative per series, ending with `+Inf` equal to `_count`.
fn check_histogram(name: &str, f: &Family) -> Result<(), String> {
    let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in &f.samples {
        let mut labels = s.labels.clone();
        if s.name.ends_with("_bucket") {
            let le = labels
                .remove("le")
                .ok_or_else(|| format!("{name}: bucket without le"))?;
            buckets
                .entry(labels)
                .or_default()
                .push((parse_value(&le)?, s.value));
        } else if s.name.ends_with("_count") {
            counts.insert(labels, s.value);
        }
    }
    for (labels, b) in &buckets {
        if !b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("{name}{labels:?}: buckets not cumulative: {b:?}"));
        }
        let last = b.last().unwrap();
        if last.0 != f64::INFINITY || counts.get(labels) != Some(&last.1) {
            return Err(format!(
                "{name}{labels:?}: +Inf bucket missing or not _count"
            ));
        }
    }
    Ok(())
}

/// Runs `promtool check metrics` on the text when promtool is installed.
fn promtool_accepts(text: &str) {
    use std::io::Write as _;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not on PATH: checked by the Rust parser only");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Requests that give series of several statuses, then the checked exposition.
async fn scrape(s: &TestServer) -> BTreeMap<String, Family> {
    s.request("PUT", "/v1/kv/a", None, b"1").await;
    s.get("/read?key=a").await;
    s.get("/read?key=absent").await;
    s.get("/read").await;
    s.request("POST", "/read?key=a", None, b"").await;
    s.get("/v1/kv/a").await;
    s.get("/readrange?start=a&end=z").await;
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let families = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    promtool_accepts(&text);
    families
}

fn assert_families(families: &BTreeMap<String, Family>, names: &[&str]) {
    for name in names {
        assert!(families.contains_key(*name), "{name} missing");
    }
}

fn value(families: &BTreeMap<String, Family>, name: &str, label: (&str, &str)) -> f64 {
    families[name]
        .samples
        .iter()
        .find(|s| s.labels.get(label.0).map(String::as_str) == Some(label.1))
        .unwrap_or_else(|| panic!("{name}{{{}={}}} missing", label.0, label.1))
        .value
}

const COMMON: &[&str] = &[
    "kv_build_info",
    "kv_role",
    "kv_http_requests_total",
    "kv_http_request_duration_seconds",
    "kv_keys",
    "kv_group_commit_size",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
    "process_cpu_seconds_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_leader_exposes_valid_metrics() {
    let s = TestServer::default().await;
    let f = scrape(&s).await;
    assert_families(&f, COMMON);
    assert_eq!(value(&f, "kv_role", ("role", "leader")), 1.0);
    assert_eq!(value(&f, "kv_role", ("role", "follower")), 0.0);
    assert_eq!(
        value(&f, "kv_build_info", ("version", env!("CARGO_PKG_VERSION"))),
        1.0
    );
    // Every status has its own series: 405 and 404 are not lumped into "other".
    assert_eq!(value(&f, "kv_http_requests_total", ("status", "405")), 1.0);
    assert!(!f["kv_http_requests_total"].samples.iter().any(|s| s
        .labels
        .get("status")
        .map(String::as_str)
        == Some("other")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_followers_exposes_valid_metrics() {
    let s = TestServer::start_replicated(|engine, _| Replication {
        role: Role::Leader(Some(LeaderHub::new(
            engine,
            "0123456789abcdef".into(),
            None,
            AckPolicy {
                followers: 0,
                timeout: Duration::from_secs(1),
            },
            &["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
        ))),
        token: None,
        history: Some("0123456789abcdef".into()),
        max_read_wait: Duration::from_secs(1),
        ..Replication::standalone()
    })
    .await;
    let f = scrape(&s).await;
    assert_families(&f, COMMON);
    assert_families(
        &f,
        &[
            "kv_replication_follower_applied_lsn",
            "kv_replication_follower_lag_entries",
            "kv_replication_snapshots_sent_total",
        ],
    );
    assert_eq!(f["kv_replication_snapshots_sent_total"].kind, "counter");
    assert_eq!(f["kv_replication_follower_up"].samples.len(), 2);
    assert_eq!(value(&f, "kv_role", ("role", "leader")), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_exposes_valid_metrics() {
    let s = TestServer::start_replicated(|engine, dir| {
        let store = Arc::new(kv_infra_fs::FileMetaStore::new(dir));
        let replica = kv_app::Replica::open(engine, store).unwrap();
        Replication {
            // Nothing listens there: forwarded writes fail, which counts a forward failure.
            role: Role::Follower(FollowerNode::new(replica, "http://127.0.0.1:1", None).unwrap()),
            token: None,
            history: None,
            max_read_wait: Duration::from_secs(1),
            ..Replication::standalone()
        }
    })
    .await;
    let f = scrape(&s).await;
    assert_families(&f, COMMON);
    assert_families(
        &f,
        &[
            "kv_replication_applied_lsn",
            "kv_replication_lag_seconds",
            "kv_replication_forwarded_writes_total",
            "kv_replication_forward_failures_total",
        ],
    );
    assert_eq!(f["kv_replication_forward_failures_total"].kind, "counter");
    assert_eq!(value(&f, "kv_role", ("role", "follower")), 1.0);
    // The forwarded write's 503 (leader unreachable) has its own series.
    assert_eq!(value(&f, "kv_http_requests_total", ("status", "503")), 1.0);
}

#[test]
fn the_checker_refuses_what_promtool_refuses() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total 1\n";
    assert!(check_exposition(ok).is_ok());
    for bad in [
        "# HELP a_total A.\n# TYPE a_total gauge\na_total 1\n",
        "# HELP a A.\n# TYPE a counter\na 1\n",
        "# TYPE a gauge\na 1\n",
        "a 1\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",
        "# HELP a A.\n# TYPE a gauge\na{x=1} 1\n",
        "# HELP a A.\n# TYPE a gauge\na one\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
    ] {
        assert!(check_exposition(bad).is_err(), "accepted: {bad}");
    }
}
