#!/usr/bin/env python3
"""The performance issue's goals, measured in one sitting and printed as ratios (never asserted).

Runs, on this machine and in this order: the bare hyper ceiling (crates/infra-http/examples/ceiling.rs),
kv-server with `--durability always` and `--durability never` (10 000 preloaded keys of 256 bytes, the Go
system's endpoints plus the /v1 listing), and redis-server from Debian with `appendfsync always` and with no
AOF (via redis-benchmark). Every wrk workload is run ROUNDS times (default 3) for SECS seconds (default 5)
with `wrk -t1`, and the median req/s of the rounds is reported, with the p50 and p99 of the median round.
Prints one Markdown table of the measurements and one of the goals (1-6 of the performance issue).

Usage: bench/http/goals.py [--secs 5] [--rounds 3] [--server target/release/kv-server]
Installs wrk and redis from Debian's packages when missing (needs root).
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LUA = os.path.join(ROOT, "bench", "http")
KV_PORT, CEIL_PORT, REDIS_PORT = 18281, 18282, 18283
CONNS = (16, 64)


def need(tool, package):
    if shutil.which(tool):
        return
    print(f"installing {package} (for {tool})", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def wait_up(port, path="/"):
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"port {port} did not come up")


def to_ms(text):
    """wrk's latency ('812.00us', '1.20ms', '2.01s') in milliseconds."""
    m = re.match(r"([\d.]+)(us|ms|s)$", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def wrk(port, script, conns, secs):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency"]
    if script:
        cmd += ["-s", os.path.join(LUA, script)]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/"], check=True, capture_output=True,
                         text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p50, p99, int(errors.group(1)) if errors else 0


def median_run(port, script, conns, secs, rounds):
    runs = sorted((wrk(port, script, conns, secs) for _ in range(rounds)), key=lambda r: r[0])
    return runs[len(runs) // 2]


def redis_set(conns, rounds):
    """Median SET req/s of redis-benchmark (256-byte values, 100 000 random keys)."""
    rates = []
    for _ in range(rounds):
        out = subprocess.run(["redis-benchmark", "-p", str(REDIS_PORT), "-t", "set", "-d", "256", "-r",
                              "100000", "-n", "200000", "-c", str(conns), "--csv"],
                             check=True, capture_output=True, text=True).stdout
        row = [line for line in out.splitlines() if line.startswith('"SET"')][0]
        rates.append(float(row.split(",")[1].strip('"')))
    return statistics.median(rates)


def start(cmd, **kw):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def preload(port):
    for b in range(10):
        body = json.dumps({f"key{i:05d}": "v" * 256 for i in range(b * 1000, b * 1000 + 1000)}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/batchput", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()


WORKLOADS = [("GET", "get.lua"), ("PUT", "put_go.lua"), ("readrange 100", "range.lua"),
             ("listing 100", "listing.lua"), ("batchput 10", "batch.lua")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", default=None, help="kv-server binary (default: build this checkout's)")
    args = ap.parse_args()
    need("wrk", "wrk")
    need("redis-server", "redis-server")
    need("redis-benchmark", "redis-tools")
    os.chdir(ROOT)
    if args.server is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "kv-server"], check=True)
        args.server = "target/release/kv-server"
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kv-infra-http", "--example", "ceiling"],
                   check=True)
    results = {}  # (system, workload, conns) -> (rps, p50, p99, errors)

    ceiling = start(["target/release/examples/ceiling", str(CEIL_PORT)])
    try:
        wait_up(CEIL_PORT)
        for c in CONNS:
            results[("ceiling", "GET", c)] = median_run(CEIL_PORT, None, c, args.secs, args.rounds)
            results[("ceiling", "POST", c)] = median_run(CEIL_PORT, "ceiling_post.lua", c, args.secs,
                                                          args.rounds)
    finally:
        stop(ceiling)

    for mode in ("always", "never"):
        with tempfile.TemporaryDirectory() as data:
            server = start([args.server, "--bind", "127.0.0.1", "--port", str(KV_PORT), "--data-path", data,
                            "--durability", mode], env=dict(os.environ, RUST_LOG="warn"))
            try:
                wait_up(KV_PORT, "/health-check")
                preload(KV_PORT)
                for c in CONNS:
                    for name, script in WORKLOADS:
                        results[(mode, name, c)] = median_run(KV_PORT, script, c, args.secs, args.rounds)
            finally:
                stop(server)

    redis = {}
    for aof, flags in (("always", ["--appendonly", "yes", "--appendfsync", "always"]),
                       ("no AOF", ["--appendonly", "no"])):
        with tempfile.TemporaryDirectory() as data:
            proc = start(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                          "--dir", data] + flags)
            try:
                for _ in range(100):
                    if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True,
                                      text=True).stdout.strip() == "PONG":
                        break
                    time.sleep(0.05)
                for c in CONNS:
                    redis[(aof, c)] = redis_set(c, args.rounds)
            finally:
                stop(proc)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "?")
    print(f"Machine: {os.cpu_count()} cores ({cpu}); server {args.server}; wrk -t1, median of "
          f"{args.rounds} x {args.secs} s; {time.strftime('%Y-%m-%d', time.gmtime())}\n")
    print("| system | workload | connections | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (system, name, c), (rps, p50, p99, err) in results.items():
        print(f"| {system} | {name} | {c} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {err} |")
    for (aof, c), rps in redis.items():
        print(f"| redis ({aof}) | SET 256 B | {c} | {rps:,.0f} | | | |")

    print("\n| goal | connections | measured | target | met |")
    print("|---|---:|---|---|---|")

    def row(goal, c, measured, target, ok):
        print(f"| {goal} | {c} | {measured} | {target} | {'yes' if ok else 'no'} |")

    for c in CONNS:
        r = results[("always", "PUT", c)][0] / redis[("always", c)]
        row("1. PUT `always` / Redis SET `appendfsync always`", c, f"{r:.2f}", ">= 1.0", r >= 1.0)
    for c in CONNS:
        r = results[("never", "PUT", c)][0] / results[("ceiling", "POST", c)][0]
        row("2. PUT `never` / ceiling POST", c, f"{r:.2f}", ">= 0.8", r >= 0.8)
    for mode in ("always", "never"):
        _, p50, p99, _ = results[(mode, "PUT", 64)]
        row(f"3. PUT `{mode}` p99 (x p50)", 64, f"{p99:.2f} ms ({p99 / p50:.1f}x)", "<= 5 ms, <= 4x",
            p99 <= 5 and p99 <= 4 * p50)
    for mode in ("always", "never"):
        for name in ("readrange 100", "listing 100"):
            for c in CONNS:
                rps = results[(mode, name, c)][0]
                row(f"4. {name} `{mode}`", c, f"{rps:,.0f} req/s", ">= 25 000", rps >= 25000)
    for mode, target in (("never", 30000), ("always", 25000)):
        for c in CONNS:
            rps = results[(mode, "batchput 10", c)][0]
            row(f"5. batchput 10 x 256 B `{mode}`", c, f"{rps:,.0f} req/s", f">= {target:,}", rps >= target)
    for mode in ("always", "never"):
        for c in CONNS:
            r = results[(mode, "GET", c)][0] / results[("ceiling", "GET", c)][0]
            row(f"6. GET `{mode}` / ceiling GET", c, f"{r:.2f}", ">= 0.9", r >= 0.9)
    print("\nNot measured by this script: goal 6's 'while a compaction runs', goal 3's 'runs long enough to"
          " include segment rotations and an automatic compaction', goals 7-8 (cargo bench, RSS).")


if __name__ == "__main__":
    main()
