#!/usr/bin/env python3
"""Goal 7, second half, of the cluster issue: one Raft voter with two learners against the static
asynchronous replication of REPLICATION_MODE (a leader shipping to two followers).

Both run on 127.0.0.1 in one sitting, with the default durability (`always`) and three release kv-server
processes each:
- static: a leader with REPLICATION_REPLICA_HOSTS naming two followers (REPLICATION_ACK_FOLLOWERS=0);
- Raft: node 1 alone in CLUSTER_PEERS (the only voter: a write commits once node 1 has it durably), then
  nodes 2 and 3 added with `POST /v1/cluster/add-learner`; learners receive the log but do not vote, so
  a write waits for no learner, as with asynchronous replication.
wrk -t1 sends puts of 256-byte values under random keys (the Go API's POST /put, bench/http/put_go.lua)
to the leader at 16 and 64 connections, median of ROUNDS x SECS. After the load it measures how long the
two replicas take to hold the leader's last write (a lag the load built up). Prints one table with req/s,
p50, p99 and the ratio (goal: Raft >= 0.9 x static). Never asserts.

Usage: bench/cluster/learners_vs_static.py [--secs 5] [--rounds 3] [--server target/release/kv-server]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "http"))
import goals as g  # noqa: E402

PORTS = (18701, 18702, 18703)
TOKEN = "bench-token"
HEADERS = {"x-kv-replication-token": TOKEN}


def url(port):
    return f"http://127.0.0.1:{port}"


def call(port, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url(port) + path, data=data, headers=dict(HEADERS, **{
        "Content-Type": "application/json"}), method="GET" if body is None else "POST")
    return json.load(urllib.request.urlopen(req, timeout=10))


def until(what, check, secs=30):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{what}: not within {secs} s")


def load(port, secs, rounds, applied):
    """The put runs against `port`, then seconds until every replica's `applied()` reaches the leader's."""
    out = {}
    for c in g.CONNS:
        out[c] = g.median_run(port, "put_go.lua", c, secs, rounds)
    target = g.status(port)["last_lsn"]
    t0 = time.time()
    until("replicas converge", lambda: all(a >= target for a in applied()), 120)
    return out, time.time() - t0


def run_static(server, secs, rounds):
    with tempfile.TemporaryDirectory() as root:
        common = ["--bind", "127.0.0.1", "--replication-token", TOKEN]
        procs = [g.start([server, *common, "--port", str(p), "--data-path", f"{root}/f{p}",
                          "--replication-mode", "follower", "--replication-leader-host", url(PORTS[0])],
                         env=dict(os.environ, RUST_LOG="error")) for p in PORTS[1:]]
        procs.append(g.start([server, *common, "--port", str(PORTS[0]), "--data-path", f"{root}/leader",
                              "--replication-replica-hosts", ",".join(url(p) for p in PORTS[1:])],
                             env=dict(os.environ, RUST_LOG="error")))
        try:
            for p in PORTS:
                g.wait_up(p, "/health-check")

            def applied():
                return [g.status(p)["replication"]["applied_lsn"] for p in PORTS[1:]]
            until("followers stream", lambda: all(
                f["state"] == "streaming" for f in g.status(PORTS[0])["followers"]))
            return load(PORTS[0], secs, rounds, applied)
        finally:
            for p in procs:
                g.stop(p)


def run_learners(server, secs, rounds):
    with tempfile.TemporaryDirectory() as root:
        procs = []
        for i, p in enumerate(PORTS):
            members = ",".join(f"{j + 1}={url(q)}" for j, q in enumerate(PORTS[: i + 1]) if j in (0, i))
            procs.append(g.start([server, "--bind", "127.0.0.1", "--port", str(p), "--data-path",
                                  f"{root}/n{i + 1}", "--cluster-node-id", str(i + 1), "--cluster-peers",
                                  members, "--cluster-id", "bench", "--replication-token", TOKEN],
                                 env=dict(os.environ, RUST_LOG="error")))
        try:
            for p in PORTS:
                g.wait_up(p, "/health-check")
            until("node 1 leads", lambda: call(PORTS[0], "/v1/cluster")["state"] == "leader")
            for i, p in enumerate(PORTS[1:], start=2):
                call(PORTS[0], "/v1/cluster/add-learner", {"id": i, "url": url(p)})

            def applied():
                return [call(p, "/v1/cluster")["applied_index"] or 0 for p in PORTS[1:]]
            until("learners follow", lambda: min(applied()) >= call(PORTS[0], "/v1/cluster")["commit_index"])
            return load(PORTS[0], secs, rounds, applied)
        finally:
            for p in procs:
                g.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", default=None)
    args = ap.parse_args()
    g.need("wrk", "wrk")
    os.chdir(g.ROOT)
    if args.server is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "kv-server"], check=True)
        args.server = "target/release/kv-server"
    static, static_drain = run_static(args.server, args.secs, args.rounds)
    raft, raft_drain = run_learners(args.server, args.secs, args.rounds)
    print(f"Machine: {os.cpu_count()} cores; wrk -t1, median of {args.rounds} x {args.secs} s; 256-byte "
          "values, random keys; to the leader; durability always; 2 replicas")
    print()
    print("| topology | connections | req/s | p50 ms | p99 ms | non-2xx | Raft / static (goal >= 0.9) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for c in g.CONNS:
        for name, res in (("static leader + 2 followers (async)", static),
                          ("Raft: 1 voter + 2 learners", raft)):
            rps, p50, p99, errors = res[c]
            ratio = f"{raft[c][0] / static[c][0]:.2f}" if name.startswith("Raft") else ""
            print(f"| {name} | {c} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} | {ratio} |")
    print()
    print(f"Replicas hold the leader's last write {static_drain:.2f} s (static) and {raft_drain:.2f} s "
          "(Raft learners) after the load stops.")


if __name__ == "__main__":
    sys.exit(main())
