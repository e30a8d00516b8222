//! The server's metrics, written with [`crate::prom`]: request counts and latency histograms per route and status,
//! bytes in and out, the engine's gauges and counters (keys, segments, fsyncs, group-commit sizes,
//! poisoned flag), the build (`kv_build_info`), the role (`kv_role`) and the process (`process_*`, see
//! [`crate::process`]). Names follow Prometheus's conventions: counters, and only counters, end in `_total`
//! (`promtool check metrics` holds the exposition to that; `tests/metrics.rs` checks it).
//!
//! `kv_build_info{version, revision}` takes the crate version and the `KV_REVISION` environment variable
//! at compile time (`unknown` when the build did not set it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kv_domain::{EngineStatus, GroupCommitStats};

use crate::prom::{Kind, Writer};
use crate::route::Route;

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Route labels: the table's, then "other" for unknown paths.
const ROUTE_COUNT: usize = Route::ALL.len() + 1;

/// One (route, status) series: lock-free counters, so recording a request never contends on a lock.
#[derive(Debug, Default)]
struct Series {
    count: AtomicU64,
    sum_nanos: AtomicU64,
    /// Non-cumulative counts per bucket; the last entry is "+Inf".
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

/// The server's metrics: a fixed table of atomic series, one per route and status.
#[derive(Debug)]
pub struct Metrics {
    /// Statuses with a series of their own: every status some route answers ([`Route::all_statuses`]).
    /// Anything else (a status relayed from a leader of another version) is counted under "other".
    statuses: Vec<u16>,
    series: Vec<Series>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    stalled_closes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let statuses = Route::all_statuses();
        Self {
            series: (0..ROUTE_COUNT * (statuses.len() + 1))
                .map(|_| Series::default())
                .collect(),
            statuses,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            stalled_closes: AtomicU64::new(0),
        }
    }
}

fn route_label(i: usize) -> &'static str {
    Route::ALL.get(i).map_or("other", |r| r.label())
}

impl Metrics {
    fn status_label(&self, i: usize) -> String {
        self.statuses
            .get(i)
            .map_or_else(|| "other".to_string(), u16::to_string)
    }

    /// Records one request (`route`: `None` for a path no route matched).
    pub fn observe(&self, route: Option<Route>, status: u16, latency: Duration) {
        let r = route.map_or(ROUTE_COUNT - 1, Route::index);
        let columns = self.statuses.len() + 1;
        let st = self
            .statuses
            .iter()
            .position(|&x| x == status)
            .unwrap_or(self.statuses.len());
        let Some(series) = self.series.get(r * columns + st) else {
            return;
        };
        let secs = latency.as_secs_f64();
        series.count.fetch_add(1, Ordering::Relaxed);
        series
            .sum_nanos
            .fetch_add(latency.as_nanos() as u64, Ordering::Relaxed);
        let bucket = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = series.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts request body bytes (called by the body layer, [`crate::body::Counted`], only).
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a connection closed because its response made no progress (see [`crate::stall`]).
    pub fn count_stalled_close(&self) {
        self.stalled_closes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts response body bytes (called by the body layer, [`crate::body::Counted`], only).
    pub fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Writes the server's metrics and the process's; `role` is `leader` or `follower`.
    pub fn write(&self, w: &mut Writer, engine: &EngineStatus, role: &str) {
        w.family(
            "kv_build_info",
            Kind::Gauge,
            "The server's version and source revision; always 1.",
        )
        .sample(
            "kv_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", option_env!("KV_REVISION").unwrap_or("unknown")),
            ],
            1,
        );
        w.family(
            "kv_role",
            Kind::Gauge,
            "This node's replication role: 1 for the role it has.",
        );
        for r in ["leader", "follower"] {
            w.sample("kv_role", &[("role", r)], u8::from(r == role));
        }
        // Snapshot of the non-empty series: (route, status, count, sum in seconds, bucket counts).
        let columns = self.statuses.len() + 1;
        let series: Vec<(&str, String, u64, f64, Vec<u64>)> = self
            .series
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let count = s.count.load(Ordering::Relaxed);
                (count > 0).then(|| {
                    let sum = s.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                    let buckets = s
                        .buckets
                        .iter()
                        .map(|b| b.load(Ordering::Relaxed))
                        .collect();
                    let (route, status) =
                        (route_label(i / columns), self.status_label(i % columns));
                    (route, status, count, sum, buckets)
                })
            })
            .collect();
        w.family(
            "kv_http_requests_total",
            Kind::Counter,
            "HTTP requests by route and status.",
        );
        for (route, status, count, _, _) in &series {
            w.sample(
                "kv_http_requests_total",
                &[("route", route), ("status", status)],
                count,
            );
        }
        w.family(
            "kv_http_request_duration_seconds",
            Kind::Histogram,
            "Request latency by route and status.",
        );
        for (route, status, count, sum, buckets) in &series {
            w.histogram(
                "kv_http_request_duration_seconds",
                &[("route", route), ("status", status)],
                &BUCKETS,
                buckets,
                sum,
                *count,
            );
        }
        w.counter(
            "kv_http_request_bytes_total",
            "Request body bytes read.",
            self.bytes_in.load(Ordering::Relaxed),
        )
        .counter(
            "kv_http_response_bytes_total",
            "Response body bytes sent.",
            self.bytes_out.load(Ordering::Relaxed),
        )
        .counter(
            "kv_http_stalled_connections_closed_total",
            "Connections closed because their response made no progress for the write timeout.",
            self.stalled_closes.load(Ordering::Relaxed),
        )
        .gauge("kv_keys", "Live keys.", engine.keys)
        .gauge("kv_segments", "Segment files.", engine.segments)
        .gauge(
            "kv_disk_bytes",
            "Bytes in segment files.",
            engine.disk_bytes,
        )
        .gauge(
            "kv_garbage_bytes",
            "Bytes of overwritten or deleted records.",
            engine.garbage_bytes,
        )
        .gauge(
            "kv_last_lsn",
            "LSN of the latest acknowledged write.",
            engine.last_lsn.0,
        )
        .gauge(
            "kv_poisoned",
            "1 when the engine refuses writes after an I/O failure.",
            u64::from(engine.poisoned.is_some()),
        )
        .counter(
            "kv_writes_total",
            "Writes acknowledged since start.",
            engine.writes,
        )
        .counter(
            "kv_fsyncs_total",
            "fdatasync calls on segment files since start.",
            engine.fsyncs,
        )
        .counter(
            "kv_compactions_total",
            "Compactions finished since start.",
            engine.compaction.runs,
        )
        .counter(
            "kv_compaction_input_bytes_total",
            "Bytes of segments merged by compaction.",
            engine.compaction.input_bytes,
        )
        .counter(
            "kv_compaction_output_bytes_total",
            "Bytes of segments written by compaction.",
            engine.compaction.output_bytes,
        )
        .gauge(
            "kv_compacting",
            "1 while a compaction runs.",
            u64::from(engine.compacting),
        );
        let g = &engine.group_commits;
        let total: u64 = g.counts.iter().sum();
        w.family(
            "kv_group_commit_size",
            Kind::Histogram,
            "Writes made durable per group commit (one fdatasync).",
        )
        .histogram(
            "kv_group_commit_size",
            &[],
            &GroupCommitStats::BOUNDS,
            &g.counts,
            g.writes,
            total,
        );
        crate::process::write(w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_a_route_answers_has_its_own_series() {
        let m = Metrics::default();
        for route in Route::ALL {
            for status in route.statuses() {
                assert!(m.statuses.contains(status), "{route:?} answers {status}");
            }
        }
    }

    #[test]
    fn renders_cumulative_histograms() {
        let m = Metrics::default();
        m.observe(Some(Route::Read), 200, Duration::from_micros(50));
        m.observe(Some(Route::Read), 200, Duration::from_millis(3));
        m.observe(Some(Route::Read), 404, Duration::from_millis(3));
        m.observe(None, 418, Duration::from_millis(3));
        let mut w = Writer::new();
        m.write(&mut w, &EngineStatus::default(), "leader");
        let text = w.finish();
        assert!(
            text.contains("kv_http_requests_total{route=\"/read\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("kv_http_request_duration_seconds_bucket{route=\"/read\",status=\"200\",le=\"0.0001\"} 1"));
        assert!(text.contains("kv_http_request_duration_seconds_bucket{route=\"/read\",status=\"200\",le=\"0.005\"} 2"));
        assert!(text.contains("kv_poisoned 0"));
        assert!(
            text.contains("kv_http_requests_total{route=\"other\",status=\"other\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("route=\"/put\""),
            "series with no requests are not rendered"
        );
    }
}
