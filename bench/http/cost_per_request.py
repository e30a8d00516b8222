#!/usr/bin/env python3
"""Where the HTTP goals' gap is: system calls, CPU time and context switches per request, kv-server against
the bare hyper ceiling, in one sitting (never asserts).

For each workload, `perf stat` counts the server process's system calls (`raw_syscalls:sys_enter`), CPU
time (`task-clock`) and context switches over one wrk run (`wrk -t1`, SECS seconds), divided by the
requests wrk completed. Workloads: the ceiling's GET and POST; kv-server (10 000 preloaded keys of 256 B)
with GET and PUT in `always` mode and PUT in `never` mode. The ratio goals of the performance issue (GET and
PUT `never` against the ceiling) follow the CPU per request on two cores shared with wrk.

Usage: bench/http/cost_per_request.py [--secs 5] [--server target/release/kv-server]
Needs perf (Debian: linux-perf) and wrk; builds the ceiling example.
"""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import goals as g  # noqa: E402

EVENTS = "raw_syscalls:sys_enter,task-clock,context-switches"


def measure(pid, port, script, conns, secs):
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", EVENTS, "-p", str(pid), "--", "sleep",
                             str(secs)], stderr=subprocess.PIPE, text=True)
    rps = g.wrk(port, script, conns, secs)[0]
    _, out = perf.communicate()
    counts = {}
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) > 2:
            try:
                counts[fields[2]] = float(fields[0])
            except ValueError:
                counts[fields[2]] = float("nan")
    n = rps * secs
    return (rps, counts.get("raw_syscalls:sys_enter", float("nan")) / n,
            counts.get("task-clock", float("nan")) * 1000 / n,  # task-clock is in ms
            counts.get("context-switches", float("nan")) / n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--server", default="target/release/kv-server")
    args = ap.parse_args()
    g.need("wrk", "wrk")
    os.chdir(g.ROOT)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "kv-infra-http", "--example", "ceiling"],
                   check=True)
    rows = []
    ceil = g.start(["target/release/examples/ceiling", str(g.CEIL_PORT)])
    try:
        g.wait_up(g.CEIL_PORT)
        for c in g.CONNS:
            rows.append(("ceiling", "GET", c, measure(ceil.pid, g.CEIL_PORT, None, c, args.secs)))
            rows.append(("ceiling", "POST", c,
                         measure(ceil.pid, g.CEIL_PORT, "ceiling_post.lua", c, args.secs)))
    finally:
        g.stop(ceil)
    for mode, workloads in (("always", (("GET", "get.lua"), ("PUT", "put_go.lua"))),
                            ("never", (("PUT", "put_go.lua"),))):
        with tempfile.TemporaryDirectory() as data:
            s = g.start([args.server, "--bind", "127.0.0.1", "--port", str(g.KV_PORT), "--data-path", data,
                         "--durability", mode], env=dict(os.environ, RUST_LOG="warn"))
            try:
                g.wait_up(g.KV_PORT, "/health-check")
                g.preload(g.KV_PORT)
                for name, script in workloads:
                    for c in g.CONNS:
                        rows.append((mode, name, c, measure(s.pid, g.KV_PORT, script, c, args.secs)))
            finally:
                g.stop(s)
    print("| server | workload | connections | req/s | system calls / req | CPU µs / req | context switches / req |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for system, wl, c, (rps, sc, cpu, cs) in rows:
        print(f"| {system} | {wl} | {c} | {rps:,.0f} | {sc:.2f} | {cpu:.2f} | {cs:.3f} |")


if __name__ == "__main__":
    main()
