#!/usr/bin/env python3
"""Goal 7, second half, of the cluster issue: one Raft voter with two learners against the static
asynchronous replication of REPLICATION_MODE (a leader shipping to two followers).

Both run on 127.0.0.1 in one sitting, with the default durability (`always`) and three release kv-server
processes each, configured alike (a leader with REPLICATION_REPLICA_HOSTS naming two followers,
REPLICATION_ACK_FOLLOWERS=0):
- static: REPLICATION_ENGINE=static, the leader ships its log to each follower;
- Raft: REPLICATION_ENGINE=raft, the leader is the only voter (a write commits once it holds it durably)
  and keeps its followers learners, which receive the log but do not vote, so a write waits for no
  learner, as with asynchronous replication.
wrk -t1 sends puts of 256-byte values under random keys (the Go API's POST /put, bench/http/put_go.lua)
to the leader at 16 and 64 connections, median of ROUNDS x SECS. After the load it measures how long the
two replicas take to hold the leader's last write (a lag the load built up). Prints one table with req/s,
p50, p99, the CPU time of the three servers per 1000 writes (steadier than req/s on a shared machine: on
two cores the servers are CPU-bound, so throughput follows it) and the ratio (goal: Raft >= 0.9 x static).
Never asserts.

`--against OTHER` runs the Raft topology with OTHER (another kv-server build) instead of static, rounds
alternating between the two builds: an A/B comparison of a change to the Raft path.

Usage: bench/cluster/learners_vs_static.py [--secs 5] [--rounds 3] [--server target/release/kv-server]
       [--against /path/to/other/kv-server]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "http"))
import goals as g  # noqa: E402

PORTS = (18701, 18702, 18703)
TOKEN = "bench-replication-token-0123"


def url(port):
    return f"http://127.0.0.1:{port}"


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


def cpu_secs(procs):
    """User + system CPU seconds the processes have used (/proc/<pid>/stat fields 14 and 15)."""
    total = 0
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured_run(port, conns, secs, procs):
    """One wrk run of puts: (req/s, p50, p99, non-2xx, CPU ms of `procs` per 1000 writes)."""
    before = cpu_secs(procs)
    rps, p50, p99, errors = g.wrk(port, "put_go.lua", conns, secs)
    cpu = (cpu_secs(procs) - before) * 1000 / max(rps * secs / 1000, 1e-9)
    return rps, p50, p99, errors, cpu


def load(port, secs, rounds, applied, procs):
    """The put runs against `port` (median by req/s), then seconds until every replica's `applied()`
    reaches the leader's."""
    out = {}
    for c in g.CONNS:
        runs = sorted((measured_run(port, c, secs, procs) for _ in range(rounds)), key=lambda r: r[0])
        out[c] = runs[len(runs) // 2]
    target = g.status(port)["last_lsn"]
    t0 = time.time()
    until("replicas converge", lambda: all(a >= target for a in applied()), 120)
    return out, time.time() - t0


def run_replication(server, secs, rounds, engine):
    """A leader and two followers with REPLICATION_ENGINE=`engine`: the load, then the drain time."""
    with tempfile.TemporaryDirectory() as root:
        common = ["--bind", "127.0.0.1", "--replication-token", TOKEN, "--replication-engine", engine]
        procs = [g.start([server, *common, "--port", str(p), "--data-path", f"{root}/f{p}",
                          "--replication-mode", "follower", "--replication-leader-host", url(PORTS[0])],
                         env=dict(os.environ, RUST_LOG="error")) for p in PORTS[1:]]
        procs.append(g.start([server, *common, "--port", str(PORTS[0]), "--data-path", f"{root}/leader",
                              "--replication-replica-hosts", ",".join(url(p) for p in PORTS[1:])],
                             env=dict(os.environ, RUST_LOG="error")))
        try:
            for p in PORTS:
                g.wait_up(p, "/health-check")
            ready = "streaming" if engine == "static" else "learner"
            until("followers replicate", lambda: all(
                f["state"] == ready for f in g.status(PORTS[0])["followers"]))

            def applied():
                docs = [g.status(p) for p in PORTS[1:]]
                # A static follower's applied LSN; a learner's is its engine's last LSN.
                return [(d.get("replication") or {}).get("applied_lsn", d["last_lsn"]) for d in docs]
            return load(PORTS[0], secs, rounds, applied, procs)
        finally:
            for p in procs:
                g.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", default=None)
    ap.add_argument("--against", default=None, help="A/B: Raft with this other kv-server build")
    args = ap.parse_args()
    g.need("wrk", "wrk")
    os.chdir(g.ROOT)
    if args.server is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "kv-server"], check=True)
        args.server = "target/release/kv-server"
    if args.against:
        return compare(args)
    static, static_drain = run_replication(args.server, args.secs, args.rounds, "static")
    raft, raft_drain = run_replication(args.server, args.secs, args.rounds, "raft")
    print(f"Machine: {os.cpu_count()} cores; wrk -t1, median of {args.rounds} x {args.secs} s; 256-byte "
          "values, random keys; to the leader; durability always; 2 replicas")
    print()
    print("| topology | connections | req/s | p50 ms | p99 ms | non-2xx | CPU ms / 1000 writes | "
          "Raft / static (goal >= 0.9) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for c in g.CONNS:
        for name, res in (("REPLICATION_ENGINE=static: leader + 2 followers (async)", static),
                          ("REPLICATION_ENGINE=raft: 1 voter + 2 learners", raft)):
            rps, p50, p99, errors, cpu = res[c]
            ratio = f"{raft[c][0] / static[c][0]:.2f}" if "raft" in name else ""
            print(f"| {name} | {c} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} | {cpu:.1f} | {ratio} |")
    print()
    print(f"Replicas hold the leader's last write {static_drain:.2f} s (static) and {raft_drain:.2f} s "
          "(Raft learners) after the load stops.")


def compare(args):
    """Raft topology with `--server` (B) against `--against` (A), one round of each in turn."""
    builds = (("A", args.against), ("B", args.server))
    rows = {name: {c: [] for c in g.CONNS} for name, _ in builds}
    for _ in range(args.rounds):
        for name, server in builds:
            res, _ = run_replication(server, args.secs, 1, "raft")
            for c in g.CONNS:
                rows[name][c].append(res[c])
    print(f"A = {args.against}, B = {args.server}; REPLICATION_ENGINE=raft, 1 voter + 2 learners; "
          f"{args.rounds} alternating rounds of {args.secs} s")
    print()
    print("| build | connections | req/s per round | median req/s | median p99 ms | median CPU ms / 1000 writes |")
    print("|---|---:|---|---:|---:|---:|")
    for c in g.CONNS:
        for name, _ in builds:
            runs = rows[name][c]
            med = lambda i: sorted(r[i] for r in runs)[len(runs) // 2]  # noqa: E731
            per = ", ".join(f"{r[0]:,.0f}" for r in runs)
            print(f"| {name} | {c} | {per} | {med(0):,.0f} | {med(2):.2f} | {med(4):.1f} |")


if __name__ == "__main__":
    sys.exit(main())
