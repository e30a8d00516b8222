//! Metrics in the Prometheus text format: request counts and latency histograms per route and status,
//! bytes in and out, and the engine's gauges and counters (keys, segments, fsyncs, group-commit sizes,
//! poisoned flag).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use kv_domain::{EngineStatus, GroupCommitStats};

/// Latency histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Default, Clone)]
struct RouteStats {
    count: u64,
    sum_secs: f64,
    /// Non-cumulative counts per bucket; the last entry is "+Inf".
    buckets: [u64; BUCKETS.len() + 1],
}

/// The server's metrics. A std `Mutex` guards the per-route table: the critical section is a few additions,
/// never held across an `.await`.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<(&'static str, u16), RouteStats>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Metrics {
    /// Records one request.
    pub fn observe(&self, route: &'static str, status: u16, latency: Duration) {
        let secs = latency.as_secs_f64();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let stats = routes.entry((route, status)).or_default();
        stats.count += 1;
        stats.sum_secs += secs;
        let bucket = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = stats.buckets.get_mut(bucket) {
            *b += 1;
        }
    }

    /// Counts request body bytes.
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts response body bytes.
    pub fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, engine: &EngineStatus) -> String {
        let mut out = String::new();
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP kv_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE kv_http_requests_total counter");
        for ((route, status), s) in &routes {
            let _ = writeln!(
                out,
                "kv_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP kv_http_request_duration_seconds Request latency by route and status."
        );
        let _ = writeln!(out, "# TYPE kv_http_request_duration_seconds histogram");
        for ((route, status), s) in &routes {
            let labels = format!("route=\"{route}\",status=\"{status}\"");
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets.get(i).copied().unwrap_or(0);
                let _ = writeln!(out, "kv_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "kv_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "kv_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum_secs
            );
            let _ = writeln!(
                out,
                "kv_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "kv_http_request_bytes_total",
            "Request body bytes read.",
            self.bytes_in.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kv_http_response_bytes_total",
            "Response body bytes sent.",
            self.bytes_out.load(Ordering::Relaxed),
        );
        gauge(&mut out, "kv_keys", "Live keys.", engine.keys);
        gauge(&mut out, "kv_segments", "Segment files.", engine.segments);
        gauge(
            &mut out,
            "kv_disk_bytes",
            "Bytes in segment files.",
            engine.disk_bytes,
        );
        gauge(
            &mut out,
            "kv_garbage_bytes",
            "Bytes of overwritten or deleted records.",
            engine.garbage_bytes,
        );
        gauge(
            &mut out,
            "kv_last_lsn",
            "LSN of the latest acknowledged write.",
            engine.last_lsn.0,
        );
        gauge(
            &mut out,
            "kv_poisoned",
            "1 when the engine refuses writes after an I/O failure.",
            u64::from(engine.poisoned.is_some()),
        );
        counter(
            &mut out,
            "kv_writes_total",
            "Writes acknowledged since start.",
            engine.writes,
        );
        counter(
            &mut out,
            "kv_fsyncs_total",
            "fdatasync calls on segment files since start.",
            engine.fsyncs,
        );
        let g = &engine.group_commits;
        let _ = writeln!(
            out,
            "# HELP kv_group_commit_size Writes made durable per group commit (one fdatasync)."
        );
        let _ = writeln!(out, "# TYPE kv_group_commit_size histogram");
        let mut cumulative = 0;
        for (i, bound) in GroupCommitStats::BOUNDS.iter().enumerate() {
            cumulative += g.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "kv_group_commit_size_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let total: u64 = g.counts.iter().sum();
        let _ = writeln!(out, "kv_group_commit_size_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "kv_group_commit_size_sum {}", g.writes);
        let _ = writeln!(out, "kv_group_commit_size_count {total}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_histograms() {
        let m = Metrics::default();
        m.observe("/read", 200, Duration::from_micros(50));
        m.observe("/read", 200, Duration::from_millis(3));
        m.observe("/read", 404, Duration::from_millis(3));
        let text = m.render(&EngineStatus::default());
        assert!(
            text.contains("kv_http_requests_total{route=\"/read\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("kv_http_request_duration_seconds_bucket{route=\"/read\",status=\"200\",le=\"0.0001\"} 1"));
        assert!(text.contains("kv_http_request_duration_seconds_bucket{route=\"/read\",status=\"200\",le=\"0.005\"} 2"));
        assert!(text.contains("kv_poisoned 0"));
    }
}
