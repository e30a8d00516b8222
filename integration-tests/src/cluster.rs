//! A leader and followers as real `kv-server` processes on 127.0.0.1, for the replication tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::{free_port, Client, Server};

/// The replication token the test clusters use.
pub const TOKEN: &str = "test-token-0123456789";

/// One node: its data directory, port and settings survive restarts.
#[derive(Debug)]
pub struct Node {
    /// Data directory.
    pub dir: PathBuf,
    /// Port.
    pub port: u16,
    /// Arguments after `--data-path`/`--port`.
    pub args: Vec<String>,
    /// The running process, if any.
    pub server: Option<Server>,
}

impl Node {
    /// A node (not started) in `dir` on a free port.
    pub fn new(dir: &Path, args: Vec<String>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            port: free_port(),
            args,
            server: None,
        }
    }

    /// Base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits until it is healthy.
    pub fn start(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.server = Some(Server::start(&self.dir, self.port, &args));
    }

    /// [`Node::start`], its log (stderr) appended to `log`.
    pub fn start_logging_to(&mut self, log: &Path) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        self.server = Some(Server::start_logging(&self.dir, self.port, &args, file));
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.signal("KILL");
            s.wait();
        }
    }

    /// SIGTERM; asserts a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.signal("TERM");
            assert_eq!(s.wait(), Some(0), "SIGTERM exits 0");
        }
    }

    /// A client (the node need not be running).
    pub fn client(&self) -> Client {
        Client::local(self.port)
    }

    /// The status document.
    pub fn status(&self) -> Json {
        status(self.client())
    }

    /// `last_lsn` from the status.
    pub fn last_lsn(&self) -> u64 {
        self.status()["last_lsn"].as_u64().unwrap()
    }

    /// A follower's applied LSN (zero while a snapshot is unfinished); a leader's last LSN.
    pub fn applied(&self) -> u64 {
        applied(self.client())
    }

    /// Every key/value (text keys and values), by paging the listing.
    pub fn contents(&self) -> BTreeMap<String, String> {
        contents(self.client())
    }
}

/// `GET /v1/cluster` (with the test token) of the node behind `c`, if it answers 200.
pub fn cluster_view(c: Client) -> Option<Json> {
    let (code, body) = c
        .try_request_with(
            "GET",
            "/v1/cluster",
            &[("x-kv-replication-token", TOKEN)],
            b"",
        )
        .ok()?;
    (code == 200).then(|| serde_json::from_slice(&body).unwrap())
}

/// The status document of the server behind `c`.
pub fn status(c: Client) -> Json {
    let (code, body) = c.request("GET", "/v1/status", b"");
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

/// A follower's applied LSN (zero while a snapshot is unfinished); a leader's last LSN.
pub fn applied(c: Client) -> u64 {
    let st = status(c);
    st["replication"]["applied_lsn"]
        .as_u64()
        .unwrap_or_else(|| st["last_lsn"].as_u64().unwrap())
}

/// Every key/value (text keys and values) of the server behind `c`, by paging the listing.
pub fn contents(c: Client) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/kv?limit=10000&cursor={c}"),
            None => "/v1/kv?limit=10000".to_string(),
        };
        let (code, body) = c.request("GET", &path, b"");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let page: Json = serde_json::from_slice(&body).unwrap();
        for item in page["items"].as_array().unwrap() {
            out.insert(
                item["key"].as_str().unwrap().to_string(),
                item["value"].as_str().unwrap().to_string(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Arguments of a leader shipping to `followers`.
pub fn leader_args(followers: &[&Node], extra: &[&str]) -> Vec<String> {
    let hosts: Vec<String> = followers.iter().map(|f| f.url()).collect();
    let mut args = vec![
        "--replication-replica-hosts".to_string(),
        hosts.join(","),
        "--replication-token".to_string(),
        TOKEN.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Arguments of a follower of `leader_port`.
pub fn follower_args(leader_port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--replication-mode".to_string(),
        "follower".to_string(),
        "--replication-leader-host".to_string(),
        format!("http://127.0.0.1:{leader_port}"),
        "--replication-token".to_string(),
        TOKEN.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A digest of contents (order-sensitive FNV-1a over keys and values), to compare nodes cheaply first.
pub fn digest(contents: &BTreeMap<String, String>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in contents {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Waits until every follower has applied the leader's last LSN, then asserts each holds exactly the
/// leader's contents (digest, then the sets). Returns the leader's contents.
pub fn assert_converged(
    leader: &Node,
    followers: &[&Node],
    within: Duration,
) -> BTreeMap<String, String> {
    let clients: Vec<Client> = followers.iter().map(|f| f.client()).collect();
    assert_clients_converged(leader.client(), &clients, within)
}

/// [`assert_converged`] over clients (of processes or containers).
pub fn assert_clients_converged(
    leader: Client,
    followers: &[Client],
    within: Duration,
) -> BTreeMap<String, String> {
    let target = status(leader)["last_lsn"].as_u64().unwrap();
    let deadline = Instant::now() + within;
    for f in followers {
        loop {
            let applied = applied(*f);
            assert!(
                applied <= target,
                "follower {} is ahead of the leader: {applied} > {target}",
                f.addr
            );
            if applied == target {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "follower {} did not catch up: applied {applied}, leader {target}; leader status {}",
                f.addr,
                status(leader)["followers"]
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let want = contents(leader);
    for f in followers {
        let got = contents(*f);
        if digest(&got) != digest(&want) {
            let missing: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(5)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|(k, _)| !want.contains_key(*k))
                .take(5)
                .collect();
            panic!(
                "follower {} differs from the leader ({} vs {} keys); differing: {missing:?}; extra: {extra:?}",
                f.addr,
                got.len(),
                want.len()
            );
        }
        assert_eq!(got, want);
    }
    want
}

/// The LSN in a write's JSON answer.
pub fn lsn_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Json>(body)
        .ok()?
        .get("lsn")?
        .as_u64()
}

/// A mixed workload through `c`: `ops` puts (both APIs), deletes and batches over 97 keys; asserts each
/// answers 200 and returns how many did.
pub fn workload(c: Client, seed: u64, ops: usize) -> usize {
    let mut ok = 0;
    for i in 0..ops as u64 {
        let k = (seed * 7919 + i * 31) % 97;
        let (status, _) = match i % 5 {
            0 => c.request("DELETE", &format!("/delete?key=k{k}"), b""),
            1 => c.request(
                "POST",
                "/batchput",
                format!(
                    r#"{{"k{k}":"b{seed}-{i}","k{}":"b{seed}-{i}"}}"#,
                    (k + 1) % 97
                )
                .as_bytes(),
            ),
            2 => c.request(
                "POST",
                "/put",
                format!(r#"{{"key":"k{k}","value":"p{seed}-{i}"}}"#).as_bytes(),
            ),
            _ => c.request(
                "PUT",
                &format!("/v1/kv/k{k}"),
                format!("r{seed}-{i}").as_bytes(),
            ),
        };
        assert_eq!(status, 200, "write {i} of client {seed}");
        ok += 1;
    }
    ok
}

/// The LSN of every log entry (a single record, or a batch by its header) in the normal segments of data
/// directory `dir`, in file order. For a follower that never took a snapshot after its first (empty) one,
/// this must be exactly `1..=last`: every leader write applied once, in order, with no gap.
pub fn entry_lsns(dir: &Path) -> Vec<u64> {
    use kv_infra_fs::codec::{RecordKind, SEGMENT_HEADER_LEN};
    use kv_infra_fs::segment::{parse_segment_name, scan_records, ScanEnd, FIRST_SEGMENT_ID};
    use kv_infra_fs::vfs::{FileSystem, RealFs};
    let fs = RealFs;
    let mut ids: Vec<u32> = fs
        .list(dir)
        .unwrap()
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .filter(|&id| id >= FIRST_SEGMENT_ID)
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let file = fs
            .open(&dir.join(kv_infra_fs::segment::segment_name(id)))
            .unwrap();
        let len = file.len().unwrap();
        let mut members = 0u32;
        let end = scan_records(&*file, SEGMENT_HEADER_LEN as u64, len, |_, r| {
            if members > 0 {
                members -= 1;
                return Ok(());
            }
            if r.header.kind == RecordKind::BatchHeader {
                members = r.batch_count();
            }
            out.push(r.header.lsn);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            end,
            ScanEnd::Clean,
            "segment {id} of {} is not clean",
            dir.display()
        );
    }
    out
}

/// One acknowledged write: its key and the `x-kv-lsn` / `x-kv-term` of its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The key written.
    pub key: String,
    /// Its LSN (the Raft index in a cluster).
    pub lsn: Option<u64>,
    /// The term it was committed in (clusters only).
    pub term: Option<u64>,
    /// When its answer arrived.
    pub at: Instant,
}

/// Threads writing unique keys `{tag}-{thread}-{i}` (value `v`) through one client until stopped, keeping
/// the writes that were acknowledged (answered 200). Failed writes (a server down) are not retried.
#[derive(Debug)]
pub struct AckedWriters {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<Ack>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl AckedWriters {
    /// Starts `threads` writers through `c`.
    pub fn start(c: Client, tag: &str, threads: usize) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, acked, tag) = (stop.clone(), acked.clone(), tag.to_string());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let key = format!("{tag}-{t}-{i}");
                        let answer = c.try_exchange("PUT", &format!("/v1/kv/{key}"), &[], b"v");
                        if let Some(a) = answer.as_ref().ok().filter(|a| a.status == 200) {
                            let stamp = |h| a.header(h).and_then(|v| v.parse().ok());
                            acked.lock().unwrap().push(Ack {
                                key,
                                lsn: stamp("x-kv-lsn"),
                                term: stamp("x-kv-term"),
                                at: Instant::now(),
                            });
                        } else {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Self {
            stop,
            acked,
            threads,
        }
    }

    /// Whether any write acknowledged so far satisfies `pred`.
    pub fn any(&self, pred: impl Fn(&Ack) -> bool) -> bool {
        self.acked.lock().unwrap().iter().any(pred)
    }

    /// How many writes were acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writers and returns every acknowledged key.
    pub fn stop(self) -> Vec<String> {
        self.stop_acks().into_iter().map(|a| a.key).collect()
    }

    /// Stops the writers and returns every acknowledged write with its LSN and term.
    pub fn stop_acks(self) -> Vec<Ack> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.acked.lock().unwrap())
    }
}

/// Panics unless every acknowledgement carries an LSN and a term and no two share an LSN: two leaders
/// acknowledging at once would hand out the same index twice (in different terms).
pub fn assert_unique_lsns(acks: &[Ack]) {
    let mut seen: BTreeMap<u64, &Ack> = BTreeMap::new();
    for a in acks {
        let (Some(lsn), Some(_)) = (a.lsn, a.term) else {
            panic!("an acknowledgement without x-kv-lsn and x-kv-term: {a:?}");
        };
        if let Some(other) = seen.insert(lsn, a) {
            panic!("two acknowledgements of LSN {lsn}: {other:?} and {a:?}");
        }
    }
}

/// Panics, naming up to five, if `contents` lacks any of the `acked` keys.
pub fn assert_all_present(acked: &[String], contents: &BTreeMap<String, String>, context: &str) {
    let missing: Vec<_> = acked
        .iter()
        .filter(|k| !contents.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes missing {context}: {missing:?}"
    );
}
