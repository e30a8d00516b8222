#!/usr/bin/env python3
"""Two kv-server builds side by side on the read workloads: GET and readrange 100 at 16 and 64 connections.

Runs the bare hyper ceiling's GET first, then each server in turn on a fresh data directory (`always`
mode, 10 000 preloaded keys), with the helpers of goals.py (wrk -t1, median of ROUNDS x SECS). Prints one
line per run and each server's GET / ceiling ratio. For before/after figures of a read-path change in one
sitting; never asserts.

Usage: bench/http/ab_get.py BEFORE_BINARY AFTER_BINARY [--secs 5] [--rounds 3]
"""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import goals as g  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    servers = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    g.need("wrk", "wrk")
    os.chdir(g.ROOT)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kv-infra-http", "--example", "ceiling"],
                   check=True)
    res = {}
    ceil = g.start(["target/release/examples/ceiling", str(g.CEIL_PORT)])
    try:
        g.wait_up(g.CEIL_PORT)
        for c in g.CONNS:
            res[("ceiling", "GET", c)] = g.median_run(g.CEIL_PORT, None, c, args.secs, args.rounds)
    finally:
        g.stop(ceil)
    for name, exe in servers.items():
        with tempfile.TemporaryDirectory() as data:
            s = g.start([exe, "--bind", "127.0.0.1", "--port", str(g.KV_PORT), "--data-path", data,
                         "--durability", "always"], env=dict(os.environ, RUST_LOG="warn"))
            try:
                g.wait_up(g.KV_PORT, "/health-check")
                g.preload(g.KV_PORT)
                for wl, script in (("GET", "get.lua"), ("readrange 100", "range.lua")):
                    for c in g.CONNS:
                        res[(name, wl, c)] = g.median_run(g.KV_PORT, script, c, args.secs, args.rounds)
            finally:
                g.stop(s)
    for (system, wl, c), (rps, p50, p99, errors) in sorted(res.items()):
        print(f"{system:8} {wl:14} {c:3} conns: {rps:9.0f} req/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
              f"non-2xx {errors}")
    for c in g.CONNS:
        for name in servers:
            ratio = res[(name, "GET", c)][0] / res[("ceiling", "GET", c)][0]
            print(f"{name} GET / ceiling GET at {c} connections: {ratio:.2f}")


if __name__ == "__main__":
    sys.exit(main())
