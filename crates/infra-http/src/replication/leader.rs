//! The leader side: one shipper task per follower, acknowledgement waits, lag accounting.
//!
//! One concern (a leader's shipping protocol) at ~800 lines with its tests; it is kept whole rather than
//! split because replication moves onto Raft next (issue 14), which replaces this file.
//!
//! ## A shipper's session
//! 1. Handshake: `GET /v1/replication/state` on the follower gives its history id, applied LSN and whether
//!    a snapshot is unfinished. A follower of another history, a follower ahead of this leader, or a node
//!    that is itself a leader is *refused* (logged as an error, shown in status, retried every few
//!    seconds: nothing is ever overwritten).
//! 2. A follower that never synced, or whose snapshot is unfinished, or whose next entry this leader's log
//!    no longer holds (compacted), gets a snapshot: pages of the keydir in key order at base LSN `B` (the
//!    durable LSN when it starts), then streaming continues from `B + 1`. The follower's position is
//!    pinned (`LogShipping::retain_log_after`) from the start, so compaction cannot take the history after `B`:
//!    at most one snapshot per catch-up.
//! 3. Streaming: entries are read from the log after the follower's position (up to `FRAME_BYTES` per
//!    request, so batching grows with load), only up to the durable LSN, and posted in LSN order; the
//!    follower answers with its durable applied LSN, which moves the cursor and feeds acknowledgement
//!    waits. Memory per follower is one frame: a slow or dead follower costs the leader nothing but its
//!    pinned history on disk while it is connected.
//! 4. Any transport error ends the session; the shipper reconnects with backoff and starts at 1 again, so
//!    catch-up after a restart or a partition needs nothing from the operator.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use kv_app::SnapshotPage;
use kv_domain::{KeyRange, LogCursor, LogRead, LogShipping, Lsn};
use parking_lot::Mutex;
use serde_json::json;
use tokio::sync::{watch, Notify};

use super::wire;
use super::{Secret, HISTORY_HEADER, LEADER_LSN_HEADER, TOKEN_HEADER};
use crate::client::Client;
use crate::prom::{Kind, Writer};

/// Payload bytes per apply request (at least one entry is always sent).
const FRAME_BYTES: usize = 1 << 20;
/// Most entries per snapshot page ...
const PAGE_ENTRIES: usize = 512;
/// ... and about this many payload bytes (at least one entry).
const PAGE_BYTES: usize = 4 << 20;
/// Writes remembered for lag accounting.
const RECENT_WRITES: usize = 1 << 16;
/// A shipper this close to the newest LSN reads the log inline (see `session_inner`).
const NEAR_TIP: u64 = 256;
/// Time allowed for one replication request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How many followers must have durably applied a write before the leader answers.
#[derive(Clone, Copy, Debug)]
pub struct AckPolicy {
    /// 0: asynchronous.
    pub followers: usize,
    /// How long a write waits for them.
    pub timeout: Duration,
}

/// One follower as the leader sees it.
#[derive(Debug)]
pub struct Link {
    /// Its base URL.
    pub url: String,
    /// Its durable applied LSN, as last acknowledged.
    pub applied: AtomicU64,
    info: Mutex<LinkInfo>,
}

#[derive(Debug, Default)]
struct LinkInfo {
    phase: &'static str,
    detail: String,
    snapshots: u64,
    entries: u64,
    frames: u64,
    bytes: u64,
    sessions: u64,
    last_contact: Option<Instant>,
}

impl Link {
    fn set(&self, phase: &'static str, detail: impl Into<String>) {
        let mut i = self.info.lock();
        i.phase = phase;
        i.detail = detail.into();
    }
}

/// The leader's replication state, shared by the shippers and the request handlers.
pub struct LeaderHub {
    engine: Arc<dyn LogShipping>,
    history: String,
    token: Option<Secret>,
    ack: AckPolicy,
    links: Vec<Arc<Link>>,
    /// The last LSN written (wakes idle shippers).
    written: watch::Sender<u64>,
    /// (LSN, cumulative payload bytes before it, when) of recent writes, for lag in bytes and seconds.
    recent: Mutex<VecDeque<(u64, u64, Instant)>>,
    total_bytes: AtomicU64,
    /// Signalled whenever a follower acknowledges.
    acked: Notify,
    /// Each follower's pinned position while a session is open.
    pins: Mutex<Vec<Option<Lsn>>>,
}

impl std::fmt::Debug for LeaderHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderHub")
            .field("history", &self.history)
            .field("followers", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// Why a session ended.
enum End {
    /// Unreachable or failing: retry with backoff.
    Down(String),
    /// The follower must not be served (foreign history, ahead, a leader): retry slowly.
    Refused(String),
    /// The follower's position changed under us (it restarted, wants a snapshot): handshake again now.
    Resync(String),
    /// The server is stopping.
    Shutdown,
}

fn header(name: &'static str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::from_str(value)
        .ok()
        .map(|v| (HeaderName::from_static(name), v))
}

impl LeaderHub {
    /// A hub for `followers` (base URLs) of the history `history`.
    pub fn new(
        engine: Arc<dyn LogShipping>,
        history: String,
        token: Option<Secret>,
        ack: AckPolicy,
        followers: &[String],
    ) -> Arc<Self> {
        let (written, _) = watch::channel(engine.last_lsn().0);
        Arc::new(Self {
            links: followers
                .iter()
                .map(|url| {
                    Arc::new(Link {
                        url: url.trim_end_matches('/').to_string(),
                        applied: AtomicU64::new(0),
                        info: Mutex::new(LinkInfo {
                            phase: "connecting",
                            ..LinkInfo::default()
                        }),
                    })
                })
                .collect(),
            pins: Mutex::new(vec![None; followers.len()]),
            engine,
            history,
            token,
            ack,
            written,
            recent: Mutex::new(VecDeque::new()),
            total_bytes: AtomicU64::new(0),
            acked: Notify::new(),
        })
    }

    /// This leader's history id.
    pub fn history(&self) -> &str {
        &self.history
    }

    /// The acknowledgement policy.
    pub fn ack_policy(&self) -> AckPolicy {
        self.ack
    }

    /// Starts one shipper per follower; they stop when `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        for i in 0..self.links.len() {
            let hub = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { hub.ship(i, shutdown).await });
        }
    }

    /// Called after every acknowledged local write: wakes the shippers and feeds lag accounting.
    pub fn record_write(&self, lsn: Lsn, payload_bytes: usize) {
        {
            // Under the lock, so the cumulative counts stay in LSN order with the entries.
            let mut recent = self.recent.lock();
            let before = self
                .total_bytes
                .fetch_add(payload_bytes as u64, Ordering::Relaxed);
            if recent.len() == RECENT_WRITES {
                recent.pop_front();
            }
            if recent.back().is_none_or(|r| r.0 < lsn.0) {
                recent.push_back((lsn.0, before, Instant::now()));
            }
        }
        self.written.send_modify(|l| *l = (*l).max(lsn.0));
    }

    /// Waits until the policy's number of followers have durably applied `lsn`. `Err(n)`: only `n` had
    /// when the timeout struck (the write is durable here and will still replicate).
    pub async fn wait_acks(&self, lsn: Lsn) -> Result<(), usize> {
        let need = self.ack.followers;
        if need == 0 {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.ack.timeout;
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let have = self
                .links
                .iter()
                .filter(|l| l.applied.load(Ordering::Acquire) >= lsn.0)
                .count();
            if have >= need {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(have);
            }
        }
    }

    fn pin(&self, i: usize, at: Option<Lsn>) {
        let mut pins = self.pins.lock();
        if let Some(p) = pins.get_mut(i) {
            *p = at;
        }
        self.engine
            .retain_log_after(pins.iter().flatten().min().copied());
    }

    /// (entries, bytes, seconds) between `applied` and this leader's last LSN. Exact while the writes the
    /// follower lacks are among the last `RECENT_WRITES`; beyond, bytes are estimated from the average
    /// size of those, and seconds count from the oldest remembered write (a lower bound).
    fn lag(&self, applied: u64) -> (u64, u64, f64) {
        let last = self.engine.last_lsn().0;
        if applied >= last {
            return (0, 0, 0.0);
        }
        let entries = last - applied;
        let recent = self.recent.lock();
        let total = self.total_bytes.load(Ordering::Relaxed);
        let Some(&(_, oldest_before, _)) = recent.front() else {
            return (entries, 0, 0.0);
        };
        let average = (total - oldest_before.min(total)) as f64 / recent.len() as f64;
        // The first remembered write the follower lacks.
        let idx = recent.partition_point(|&(l, _, _)| l <= applied);
        match recent.get(idx) {
            Some(&(lsn, before, at)) => {
                let unknown = if idx == 0 {
                    lsn.saturating_sub(applied + 1)
                } else {
                    0
                };
                let bytes = (total - before.min(total)) as f64 + average * unknown as f64;
                (entries, bytes as u64, at.elapsed().as_secs_f64())
            }
            // Writes this process did not see (before a restart): estimate.
            None => (entries, (average * entries as f64) as u64, 0.0),
        }
    }

    /// The `followers` array of the status document.
    pub fn followers_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.links
                .iter()
                .map(|l| {
                    let applied = l.applied.load(Ordering::Acquire);
                    let (entries, bytes, secs) = self.lag(applied);
                    let i = l.info.lock();
                    json!({
                        "url": l.url,
                        "state": i.phase,
                        "detail": i.detail,
                        "applied_lsn": applied,
                        "lag_entries": entries,
                        "lag_bytes": bytes,
                        "lag_seconds": secs,
                        "snapshots_sent": i.snapshots,
                        "entries_shipped": i.entries,
                        "frames_shipped": i.frames,
                        "bytes_shipped": i.bytes,
                        "sessions": i.sessions,
                        "last_contact_ms_ago": i.last_contact.map(|t| t.elapsed().as_millis() as u64),
                    })
                })
                .collect(),
        )
    }

    /// Writes the metrics of every follower.
    pub fn write_metrics(&self, w: &mut Writer) {
        // One sample per follower (a consistent row), then one family per metric.
        let rows: Vec<[f64; 6]> = self
            .links
            .iter()
            .map(|l| {
                let applied = l.applied.load(Ordering::Acquire);
                let (entries, bytes, secs) = self.lag(applied);
                let i = l.info.lock();
                let up = matches!(i.phase, "streaming" | "snapshot");
                [
                    applied as f64,
                    entries as f64,
                    bytes as f64,
                    secs,
                    f64::from(u8::from(up)),
                    i.snapshots as f64,
                ]
            })
            .collect();
        // Counters end in `_total` and nothing else does (Prometheus naming; promtool checks it).
        let families = [
            (
                "kv_replication_follower_applied_lsn",
                Kind::Gauge,
                "Durable applied LSN of each follower.",
            ),
            (
                "kv_replication_follower_lag_entries",
                Kind::Gauge,
                "Writes a follower lacks.",
            ),
            (
                "kv_replication_follower_lag_bytes",
                Kind::Gauge,
                "Payload bytes of the writes a follower lacks.",
            ),
            (
                "kv_replication_follower_lag_seconds",
                Kind::Gauge,
                "Age of the oldest write a follower lacks.",
            ),
            (
                "kv_replication_follower_up",
                Kind::Gauge,
                "1 when a follower is streaming or in a snapshot.",
            ),
            (
                "kv_replication_snapshots_sent_total",
                Kind::Counter,
                "Snapshots sent to each follower.",
            ),
        ];
        for (column, (name, kind, help)) in families.iter().enumerate() {
            w.family(name, *kind, help);
            for (l, row) in self.links.iter().zip(&rows) {
                w.sample(
                    name,
                    &[("follower", &l.url)],
                    row.get(column).copied().unwrap_or(0.0),
                );
            }
        }
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h: Vec<_> = [
            header(HISTORY_HEADER, &self.history),
            header(LEADER_LSN_HEADER, &self.engine.last_lsn().0.to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(t) = &self.token {
            h.extend(header(TOKEN_HEADER, t.expose()));
        }
        h
    }

    async fn request(
        &self,
        client: &mut Client,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, End> {
        let sent = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.send_with(method, path, &self.headers(), Bytes::from(body)),
        )
        .await
        .map_err(|_| End::Down(format!("{path} timed out")))?;
        let (status, _, body) = sent.map_err(|e| End::Down(e.to_string()))?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = json
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("")
            .to_string();
        match status {
            s if s.is_success() => Ok(json),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(End::Refused(format!(
                "the follower rejected the replication token: {message}"
            ))),
            StatusCode::CONFLICT if message.contains("history mismatch") => {
                Err(End::Refused(message))
            }
            StatusCode::CONFLICT => Err(End::Resync(message)),
            s => Err(End::Down(format!("{path} answered {s}: {message}"))),
        }
    }

    /// The shipper of follower `i`: sessions until shutdown.
    async fn ship(self: Arc<Self>, i: usize, mut shutdown: watch::Receiver<bool>) {
        let Some(link) = self.links.get(i).cloned() else {
            return;
        };
        let mut client = match Client::new(&link.url) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(follower = %link.url, "bad follower URL, not replicating to it: {e}");
                link.set("refused", e.to_string());
                return;
            }
        };
        let mut backoff = Duration::from_millis(50);
        let mut last_problem = String::new();
        loop {
            let sessions_before = link.info.lock().sessions;
            let end = self.session(i, &link, &mut client, &mut shutdown).await;
            self.pin(i, None);
            // A request that failed or timed out may have left the connection mid-exchange: start afresh.
            if let Ok(fresh) = Client::new(&link.url) {
                client = fresh;
            }
            if link.info.lock().sessions != sessions_before {
                backoff = Duration::from_millis(50); // it was reachable: retry soon
            }
            let wait = match end {
                End::Shutdown => return,
                End::Down(msg) => {
                    if msg != last_problem {
                        tracing::warn!(follower = %link.url, "follower unreachable, will retry: {msg}");
                    }
                    link.set("down", msg.clone());
                    last_problem = msg;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    backoff
                }
                End::Refused(msg) => {
                    if msg != last_problem {
                        tracing::error!(follower = %link.url, "REFUSING to replicate to this follower: {msg}");
                    }
                    link.set("refused", msg.clone());
                    last_problem = msg;
                    Duration::from_secs(3)
                }
                End::Resync(msg) => {
                    tracing::info!(follower = %link.url, "resynchronising: {msg}");
                    Duration::from_millis(20)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn session(
        &self,
        i: usize,
        link: &Link,
        client: &mut Client,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        match self.session_inner(i, link, client, shutdown).await {
            Ok(()) => End::Shutdown,
            Err(e) => e,
        }
    }

    async fn session_inner(
        &self,
        i: usize,
        link: &Link,
        client: &mut Client,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        let st = self
            .request(client, Method::GET, "/v1/replication/state", Vec::new())
            .await?;
        let role = st.get("role").and_then(|r| r.as_str()).unwrap_or("");
        if role != "follower" {
            return Err(End::Refused(format!(
                "{} is not a follower (role {role:?}); check REPLICATION_REPLICA_HOSTS",
                link.url
            )));
        }
        let history = st.get("history").and_then(|h| h.as_str());
        let applied = Lsn(st.get("applied_lsn").and_then(|a| a.as_u64()).unwrap_or(0));
        let unfinished = st
            .get("snapshot_in_progress")
            .and_then(|s| s.as_bool())
            .unwrap_or(false);
        if let Some(h) = history {
            if h != self.history {
                return Err(End::Refused(format!(
                    "history mismatch: the follower holds history {h}, this leader's is {} (was the leader restarted on an empty or foreign data directory?); the follower keeps its data",
                    self.history
                )));
            }
        }
        let last = self.engine.last_lsn();
        if history.is_some() && !unfinished && applied > last {
            return Err(End::Refused(format!(
                "the follower has applied LSN {applied}, ahead of this leader's last LSN {last}: histories diverged"
            )));
        }
        {
            let mut info = link.info.lock();
            info.sessions += 1;
            info.last_contact = Some(Instant::now());
        }
        link.applied.store(applied.0, Ordering::Release);
        self.acked.notify_waiters();
        tracing::info!(follower = %link.url, applied = applied.0, leader_lsn = last.0, "connected to follower");
        let mut cursor = if history.is_none() || unfinished {
            tracing::info!(follower = %link.url, "follower has no complete copy: sending a snapshot");
            self.snapshot(i, link, client).await?
        } else {
            if applied < last {
                tracing::info!(follower = %link.url, from = applied.0, to = last.0, "catching up");
            }
            LogCursor::after(applied)
        };
        link.set("streaming", "");
        let mut written = self.written.subscribe();
        loop {
            self.pin(i, Some(cursor.after));
            // Near the tip the entries were just written (page cache, a few KiB): read them inline rather
            // than pay a hop to the blocking pool per frame. Far behind (catch-up), read on the pool.
            let near_tip = self.engine.last_lsn().0.saturating_sub(cursor.after.0) < NEAR_TIP;
            let read = if near_tip {
                self.engine.read_log(&cursor, FRAME_BYTES)
            } else {
                let engine = self.engine.clone();
                let from = cursor.clone();
                tokio::task::spawn_blocking(move || engine.read_log(&from, FRAME_BYTES))
                    .await
                    .map_err(|e| End::Down(format!("log reader failed: {e}")))?
            }
            .map_err(|e| End::Down(format!("reading the log: {e}")))?;
            match read {
                LogRead::Gone { oldest } => {
                    tracing::info!(follower = %link.url, after = cursor.after.0, oldest = oldest.0,
                        "the history the follower needs was compacted away: sending a snapshot");
                    cursor = self.snapshot(i, link, client).await?;
                    link.set("streaming", "");
                }
                LogRead::Entries { entries, .. } if entries.is_empty() => {
                    // Nothing durable to ship: wait for a write (or, while a write awaits its interval
                    // fsync, poll briefly).
                    let pending = self.engine.durable_lsn() < self.engine.last_lsn();
                    let idle = if pending {
                        Duration::from_millis(2)
                    } else {
                        Duration::from_millis(200)
                    };
                    tokio::select! {
                        _ = written.changed() => {}
                        _ = tokio::time::sleep(idle) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                LogRead::Entries { entries, next } => {
                    let payload: usize = entries.iter().map(|e| e.payload_bytes()).sum();
                    let count = entries.len() as u64;
                    let body = wire::encode_entries(&entries);
                    let answer = self
                        .request(client, Method::POST, "/v1/replication/apply", body)
                        .await?;
                    let acked = Lsn(answer
                        .get("applied_lsn")
                        .and_then(|a| a.as_u64())
                        .unwrap_or(0));
                    link.applied.fetch_max(acked.0, Ordering::AcqRel);
                    self.acked.notify_waiters();
                    {
                        let mut info = link.info.lock();
                        info.entries += count;
                        info.frames += 1;
                        info.bytes += payload as u64;
                        info.last_contact = Some(Instant::now());
                    }
                    cursor = if acked == next.after {
                        next
                    } else {
                        // The follower is elsewhere than we thought: continue from where it is.
                        LogCursor::after(acked)
                    };
                }
            }
            if *shutdown.borrow() {
                return Ok(());
            }
        }
    }

    /// Sends a full snapshot; returns the cursor to stream from (its base).
    async fn snapshot(&self, i: usize, link: &Link, client: &mut Client) -> Result<LogCursor, End> {
        link.set("snapshot", "");
        // Pin first, then read the base: compaction cannot take anything after it.
        self.pin(i, Some(self.engine.durable_lsn()));
        let base = self.engine.durable_lsn();
        self.pin(i, Some(base));
        let started = Instant::now();
        tracing::info!(follower = %link.url, base = base.0, "snapshot: starting");
        let mut range = KeyRange::all();
        let mut after = None;
        let mut first = true;
        let mut sent = 0usize;
        loop {
            let engine = self.engine.clone();
            let r = range.clone();
            // Keys first, then values up to PAGE_BYTES: memory stays bounded whatever the value sizes.
            let (entries, through) = tokio::task::spawn_blocking(move || {
                let keys = engine.scan_keys(&r, PAGE_ENTRIES)?;
                let mut entries = Vec::new();
                let mut bytes = 0;
                let mut processed = 0;
                for key in &keys {
                    if bytes >= PAGE_BYTES {
                        break;
                    }
                    processed += 1;
                    // A key deleted meanwhile is left out; the page's range still covers it, and the
                    // delete's log entry follows the snapshot anyway.
                    if let Some(value) = engine.get(key)? {
                        bytes += key.len() + value.len();
                        entries.push(kv_domain::Entry {
                            key: key.clone(),
                            value,
                        });
                    }
                }
                // The page covers up to the last key looked at; the final page is open-ended.
                let complete = processed == keys.len() && keys.len() < PAGE_ENTRIES;
                let through = if complete {
                    None
                } else {
                    keys.get(processed.wrapping_sub(1)).cloned()
                };
                Ok::<_, kv_domain::EngineError>((entries, through))
            })
            .await
            .map_err(|e| End::Down(format!("snapshot reader failed: {e}")))?
            .map_err(|e| End::Down(format!("reading the snapshot: {e}")))?;
            let last = through.is_none();
            if last {
                // Values read above may be newer than the durable LSN (interval mode): finish only once
                // they are durable, so a completed snapshot never holds a write a crash could take back.
                let target = self.engine.last_lsn();
                while self.engine.durable_lsn() < target {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            sent += entries.len();
            let page = SnapshotPage {
                base,
                first,
                last,
                after: after.clone(),
                through: through.clone(),
                entries: entries.into_iter().map(|e| (e.key, e.value)).collect(),
            };
            self.request(
                client,
                Method::POST,
                "/v1/replication/snapshot",
                wire::encode_page(&page),
            )
            .await?;
            link.info.lock().last_contact = Some(Instant::now());
            first = false;
            match through {
                Some(t) => {
                    range = KeyRange::all().after(&t);
                    after = Some(t);
                }
                None => break,
            }
        }
        link.applied.store(base.0, Ordering::Release);
        self.acked.notify_waiters();
        link.info.lock().snapshots += 1;
        tracing::info!(follower = %link.url, base = base.0, keys = sent,
            millis = started.elapsed().as_millis() as u64, "snapshot: complete, streaming from its base");
        Ok(LogCursor::after(base))
    }
}

/// The acknowledgement port of `kv_app::replicate_write`.
#[async_trait::async_trait]
impl kv_domain::FollowerAcks for LeaderHub {
    fn record_write(&self, lsn: Lsn, payload_bytes: usize) {
        LeaderHub::record_write(self, lsn, payload_bytes);
    }

    fn requirement(&self) -> kv_domain::AckRequirement {
        kv_domain::AckRequirement {
            followers: self.ack.followers,
            timeout: self.ack.timeout,
        }
    }

    async fn wait_acks(&self, lsn: Lsn) -> Result<(), usize> {
        LeaderHub::wait_acks(self, lsn).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kv_domain::{Engine, MemoryEngine};

    #[test]
    fn lag_counts_the_entries_and_bytes_a_follower_lacks() {
        let engine = Arc::new(MemoryEngine::new());
        let hub = LeaderHub::new(
            engine.clone(),
            "h".into(),
            None,
            AckPolicy {
                followers: 0,
                timeout: Duration::from_secs(1),
            },
            &["http://127.0.0.1:1".to_string()],
        );
        // A pause after write 7: a follower lacking it is at least that much older than one lacking 8.
        let pause = Duration::from_millis(40);
        for i in 1..=10u64 {
            let lsn = engine.put(format!("k{i}").as_bytes(), b"v").unwrap();
            hub.record_write(lsn, 100 * i as usize);
            if i == 7 {
                std::thread::sleep(pause);
            }
        }
        // Caught up: nothing.
        assert_eq!(hub.lag(10), (0, 0, 0.0));
        // Lacks writes 7..=10: 700 + 800 + 900 + 1000 bytes.
        let lacking_8 = hub.lag(7).2;
        let (entries, bytes, secs) = hub.lag(6);
        assert_eq!((entries, bytes), (4, 3400));
        // The age of the oldest write lacked: write 7's, which is older than write 8's by the pause.
        assert!(
            secs - lacking_8 >= pause.as_secs_f64(),
            "lag of a follower lacking write 7: {secs} s, lacking 8: {lacking_8} s"
        );
        // Lacks everything.
        assert_eq!(hub.lag(0).0, 10);
        assert_eq!(hub.lag(0).1, 5500);
        // The same figures reach the status document and the metrics.
        hub.links[0].applied.store(6, Ordering::Release);
        let json = hub.followers_json();
        assert_eq!(json[0]["lag_entries"], 4);
        assert_eq!(json[0]["lag_bytes"], 3400);
        let mut w = Writer::new();
        hub.write_metrics(&mut w);
        let metrics = w.finish();
        assert!(
            metrics.contains(
                "kv_replication_follower_lag_bytes{follower=\"http://127.0.0.1:1\"} 3400\n"
            ),
            "{metrics}"
        );
        assert!(metrics
            .contains("kv_replication_follower_applied_lsn{follower=\"http://127.0.0.1:1\"} 6\n"));
    }
}
