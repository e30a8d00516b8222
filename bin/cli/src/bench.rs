//! `kvctl bench`: a load generator against a server, like `redis-benchmark` or etcd's benchmark tool.
//!
//! Each of `--connections` tasks owns one keep-alive HTTP/1.1 connection, driven with raw bytes as wrk does,
//! and sends requests back to back (closed loop); `--threads` threads each run a single-threaded runtime
//! with their share of the connections. Every request's latency goes into a per-connection HDR histogram,
//! merged at the end. Keys are `key00000000`-style over `--keys`, drawn uniformly or from a Zipf
//! distribution. Workloads: `put` (raw `PUT /v1/kv/{key}`), `get` (`GET /v1/kv/{key}`), `range`
//! (`GET /readrange` over 100 consecutive keys), `batch` (`POST /batchput` of 10 pairs), `mixed`
//! (`--read-ratio` gets, the rest puts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hyper::Method;
use kv_infra_http::client::Client;
use rand::distributions::Distribution;
use rand::{Rng, SeedableRng};

use crate::error::CliError;
use crate::raw_conn::RawConn;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// PUT of a value under a random key.
    Put,
    /// GET of a random key.
    Get,
    /// readrange of 100 consecutive keys.
    Range,
    /// batchput of 10 random pairs.
    Batch,
    /// --read-ratio gets, the rest puts.
    Mixed,
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent 0.99 (a few hot keys).
    Zipfian,
}

/// `kvctl bench` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// The client token (kvctl's --token, KV_TOKEN or --token-file), sent with every request.
    #[arg(skip)]
    pub token: Option<kv_infra_http::replication::Secret>,
    /// The workload.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Concurrent connections (one request in flight on each).
    #[arg(short = 'c', long, default_value_t = 16)]
    pub connections: usize,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Seconds to run (ignored when --requests is given).
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many requests in total instead of after --duration.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Key distribution.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    pub distribution: KeyDistribution,
    /// Share of gets in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Limit the total request rate to this many per second, spread evenly over the connections (a
    /// steady load for latency and replication-lag measurements; default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write every key once before measuring (needed for get, range and mixed on an empty server).
    #[arg(long)]
    pub preload: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The result of a run.
#[derive(Debug)]
struct Summary {
    requests: u64,
    errors: u64,
    seconds: f64,
    latency: Histogram<u64>,
}

fn key(i: u64) -> String {
    format!("key{i:08}")
}

/// Runs the benchmark against `url` and prints the summary.
pub fn run(url: &str, args: &BenchArgs) -> Result<(), CliError> {
    if args.connections == 0
        || args.keys == 0
        || !(0.0..=1.0).contains(&args.read_ratio)
        || args.rate.is_some_and(|r| r.is_nan() || r <= 0.0)
    {
        return Err(CliError::usage(
            "--connections, --keys and --rate must be positive, --read-ratio within 0..=1",
        ));
    }
    if url.starts_with("https://") {
        // Its connections are raw bytes over TCP, as wrk's are: no TLS.
        return Err(CliError::usage(
            "bench speaks plain HTTP only; measure HTTPS with wrk (bench/http/tls.sh)",
        ));
    }
    Client::new(url).map_err(|e| CliError::usage(e.to_string()))?;
    if args.preload {
        current_thread()?.block_on(preload(url, args))?;
    }
    let summary = measure(url, args)?;
    print_summary(args, &summary);
    if summary.requests == 0 {
        return Err(CliError::failure("no request succeeded"));
    }
    Ok(())
}

async fn preload(url: &str, args: &BenchArgs) -> Result<(), CliError> {
    let mut client = Client::new(url)
        .and_then(|c| c.with_bearer(args.token.as_ref()))
        .map_err(|e| CliError::usage(e.to_string()))?;
    let value = "v".repeat(args.value_size);
    let mut i = 0;
    while i < args.keys {
        let end = (i + 1000).min(args.keys);
        let pairs: Vec<(String, String)> = (i..end).map(|k| (key(k), value.clone())).collect();
        client.batch(&pairs).await?;
        i = end;
    }
    Ok(())
}

fn current_thread() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(e.to_string()))
}

/// One thread per `--threads`, each with a single-threaded runtime driving its share of the connections
/// (wrk's structure: no work stealing, no cross-thread wake-ups on the hot path).
fn measure(url: &str, args: &BenchArgs) -> Result<Summary, CliError> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let budget = Arc::new(AtomicU64::new(args.requests.unwrap_or(u64::MAX)));
    let threads = args.threads.clamp(1, args.connections);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (url, args, budget) = (url.to_string(), args.clone(), budget.clone());
            std::thread::spawn(
                move || -> Result<Vec<(u64, u64, Histogram<u64>)>, CliError> {
                    let rt = current_thread()?;
                    rt.block_on(async move {
                        let local = tokio::task::LocalSet::new();
                        local
                            .run_until(async move {
                                let mut tasks = Vec::new();
                                for c in (t..args.connections).step_by(threads) {
                                    tasks.push(tokio::task::spawn_local(connection(
                                        url.clone(),
                                        args.clone(),
                                        budget.clone(),
                                        deadline,
                                        c,
                                    )));
                                }
                                let mut out = Vec::new();
                                for task in tasks {
                                    out.push(
                                        task.await
                                            .map_err(|e| CliError::failure(e.to_string()))??,
                                    );
                                }
                                Ok(out)
                            })
                            .await
                    })
                },
            )
        })
        .collect();
    let mut summary = Summary {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| CliError::failure(e.to_string()))?,
    };
    for h in handles {
        for (ok, errors, hist) in h
            .join()
            .map_err(|_| CliError::failure("a bench thread panicked"))??
        {
            summary.requests += ok;
            summary.errors += errors;
            let _ = summary.latency.add(&hist);
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// One connection's closed loop: (successful requests, errors, latency histogram in µs).
async fn connection(
    url: String,
    args: BenchArgs,
    budget: Arc<AtomicU64>,
    deadline: Instant,
    c: usize,
) -> Result<(u64, u64, Histogram<u64>), CliError> {
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let auth = match &args.token {
        None => None,
        // The raw request writes it as is: refuse what a header cannot carry (CR, LF), as the
        // client's `with_bearer` does.
        Some(t) if t.expose().bytes().all(|b| b.is_ascii_graphic()) => {
            Some(format!("Authorization: Bearer {}\r\n", t.expose()))
        }
        Some(_) => {
            return Err(CliError::usage(
                "the token holds characters a header cannot carry",
            ))
        }
    };
    let mut conn = RawConn::new(addr, auth);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| CliError::failure(e.to_string()))?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(c as u64 + 1);
    let zipf =
        rand_distr::Zipf::new(args.keys, 0.99).map_err(|e| CliError::usage(e.to_string()))?;
    let value = Bytes::from(vec![b'v'; args.value_size]);
    let (mut ok, mut errors) = (0u64, 0u64);
    // With --rate, each connection sends on a fixed schedule of its share of the rate.
    let interval = args
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r));
    let mut next_send = tokio::time::Instant::now();
    loop {
        if let Some(interval) = interval {
            tokio::time::sleep_until(next_send).await;
            next_send += interval;
        }
        if args.requests.is_none() && Instant::now() >= deadline {
            break;
        }
        if args.requests.is_some()
            && budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_err()
        {
            break;
        }
        let pick = |rng: &mut rand::rngs::SmallRng| match args.distribution {
            KeyDistribution::Uniform => rng.gen_range(0..args.keys),
            KeyDistribution::Zipfian => (zipf.sample(rng) as u64).saturating_sub(1),
        };
        let (method, path, body) = match args.workload {
            Workload::Put => (
                Method::PUT,
                format!("/v1/kv/{}", key(pick(&mut rng))),
                value.clone(),
            ),
            Workload::Get => (
                Method::GET,
                format!("/v1/kv/{}", key(pick(&mut rng))),
                Bytes::new(),
            ),
            Workload::Mixed if rng.gen_bool(args.read_ratio) => (
                Method::GET,
                format!("/v1/kv/{}", key(pick(&mut rng))),
                Bytes::new(),
            ),
            Workload::Mixed => (
                Method::PUT,
                format!("/v1/kv/{}", key(pick(&mut rng))),
                value.clone(),
            ),
            Workload::Range => {
                let s = pick(&mut rng).min(args.keys.saturating_sub(100));
                (
                    Method::GET,
                    format!("/readrange?start={}&end={}", key(s), key(s + 99)),
                    Bytes::new(),
                )
            }
            Workload::Batch => {
                let v = String::from_utf8_lossy(&value).into_owned();
                let pairs: serde_json::Map<String, serde_json::Value> = (0..10)
                    .map(|_| (key(pick(&mut rng)), serde_json::Value::String(v.clone())))
                    .collect();
                (
                    Method::POST,
                    "/batchput".to_string(),
                    Bytes::from(serde_json::Value::Object(pairs).to_string()),
                )
            }
        };
        let t = Instant::now();
        match conn.request(method.as_str(), &path, &body).await {
            Ok(status)
                if (200..300).contains(&status)
                    || (status == 404 && args.workload != Workload::Put) =>
            {
                ok += 1;
                let _ = hist.record((t.elapsed().as_micros() as u64).max(1));
            }
            Ok(_) => errors += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(CliError::failure(format!("cannot reach {url}: {e}")));
            }
            Err(_) => errors += 1,
        }
    }
    Ok((ok, errors, hist))
}

fn print_summary(args: &BenchArgs, s: &Summary) {
    let rate = s.requests as f64 / s.seconds.max(1e-9);
    let q = |p: f64| s.latency.value_at_quantile(p);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "workload": format!("{:?}", args.workload).to_lowercase(),
                "connections": args.connections,
                "requests": s.requests,
                "errors": s.errors,
                "seconds": s.seconds,
                "requests_per_second": rate,
                "latency_us": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": s.latency.max() },
            })
        );
    } else {
        println!(
            "workload {:?}, {} connections, {} keys ({:?}), {} B values",
            args.workload, args.connections, args.keys, args.distribution, args.value_size
        );
        println!(
            "{} requests, {} errors in {:.2} s: {rate:.0} req/s",
            s.requests, s.errors, s.seconds
        );
        println!(
            "latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            s.latency.max()
        );
    }
}
