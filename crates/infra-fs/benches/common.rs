//! Helpers shared by the benchmarks: machine facts, RSS, percentiles, random keys.
#![allow(dead_code)]

use rand::RngCore;

/// Resident set size of this process, in bytes (from /proc/self/statm).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A one-line description of the machine.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), Linux")
}

/// `n` random 16-byte keys.
pub fn random_keys(n: usize, seed: u64) -> Vec<[u8; 16]> {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut k = [0u8; 16];
            rng.fill_bytes(&mut k);
            k
        })
        .collect()
}

/// (p50, p99, p99.9, max) of nanosecond samples, in microseconds.
pub fn percentiles(samples: &mut [u64]) -> (f64, f64, f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    (
        at(0.5),
        at(0.99),
        at(0.999),
        samples.last().copied().unwrap_or(0) as f64 / 1000.0,
    )
}

/// The value of `--name=value` among the arguments, or the environment variable `env`.
pub fn arg(name: &str, env: &str) -> Option<String> {
    let prefix = format!("--{name}=");
    std::env::args()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
        .or_else(|| std::env::var(env).ok())
}
