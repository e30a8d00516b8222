#!/usr/bin/env python3
"""Goal 7 of the cluster issue: writes to a 3-node kv-server Raft cluster against a 3-node etcd cluster.

Both run on 127.0.0.1 in one sitting, with their default durability (each write fsynced on a majority):
three `kv-server` nodes (CLUSTER_NODE_ID/CLUSTER_PEERS; a member's writes are durable in its Raft log,
whatever --durability says, which only a server before the engine stopped syncing its applies used) and
three `etcd` members
(Debian's etcd-server). wrk -t1 sends puts of 256-byte values under random keys to the leader of each (the
Go API's POST /put for kv-server, bench/http/put_go.lua; etcd's JSON gateway POST /v3/kv/put,
bench/cluster/etcd_put.lua) at 16 and 64 connections, median of ROUNDS x SECS. Prints one table with
req/s, p50 and p99 and the ratio to etcd (goal: >= 1.5). Never asserts.

Usage: bench/cluster/raft_vs_etcd.py [--secs 5] [--rounds 3] [--server target/release/kv-server]
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

KV_PORTS = (18501, 18502, 18503)
ETCD_CLIENT = (18601, 18602, 18603)
ETCD_PEER = (18611, 18612, 18613)
TOKEN = "bench-replication-token-0123"


def get_json(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    return json.load(urllib.request.urlopen(req, timeout=2))


def kv_leader_port():
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            st = get_json(f"http://127.0.0.1:{KV_PORTS[0]}/v1/cluster", {"x-kv-replication-token": TOKEN})
            if st["leader_id"]:
                return KV_PORTS[st["leader_id"] - 1]
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit("the kv-server cluster elected no leader in 30 s")


def etcd_leader_port():
    deadline = time.time() + 30
    while time.time() < deadline:
        for port in ETCD_CLIENT:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v3/maintenance/status", data=b"{}",
                                             method="POST")
                st = json.load(urllib.request.urlopen(req, timeout=2))
                if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return port
            except Exception:
                pass
        time.sleep(0.2)
    raise SystemExit("etcd elected no leader in 30 s")


def run_kv(server, secs, rounds, durability):
    peers = ",".join(f"{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(KV_PORTS))
    with tempfile.TemporaryDirectory() as root:
        procs = [g.start([server, "--bind", "127.0.0.1", "--port", str(p), "--data-path", f"{root}/n{i + 1}",
                          "--cluster-node-id", str(i + 1), "--cluster-peers", peers,
                          "--replication-token", TOKEN, "--durability", durability],
                         env=dict(os.environ, RUST_LOG="error"))
                 for i, p in enumerate(KV_PORTS)]
        try:
            port = kv_leader_port()
            return {c: g.median_run(port, "put_go.lua", c, secs, rounds) for c in g.CONNS}
        finally:
            for p in procs:
                g.stop(p)


def run_etcd(secs, rounds):
    initial = ",".join(f"e{i + 1}=http://127.0.0.1:{p}" for i, p in enumerate(ETCD_PEER))
    with tempfile.TemporaryDirectory() as root:
        procs = [g.start(["etcd", "--name", f"e{i + 1}", "--data-dir", f"{root}/e{i + 1}",
                          "--listen-client-urls", f"http://127.0.0.1:{c}",
                          "--advertise-client-urls", f"http://127.0.0.1:{c}",
                          "--listen-peer-urls", f"http://127.0.0.1:{p}",
                          "--initial-advertise-peer-urls", f"http://127.0.0.1:{p}",
                          "--initial-cluster", initial, "--initial-cluster-state", "new",
                          "--initial-cluster-token", "bench"])
                 for i, (c, p) in enumerate(zip(ETCD_CLIENT, ETCD_PEER))]
        try:
            port = etcd_leader_port()
            lua = os.path.join(os.path.dirname(os.path.abspath(__file__)), "etcd_put.lua")
            return {c: g.median_run(port, lua, c, secs, rounds) for c in g.CONNS}
        finally:
            for p in procs:
                g.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server", default=None)
    ap.add_argument("--durability", default="always",
                    help="kv-server's DURABILITY (the Raft log fsyncs every entry on a majority either way)")
    args = ap.parse_args()
    g.need("wrk", "wrk")
    g.need("etcd", "etcd-server")
    os.chdir(g.ROOT)
    if args.server is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "kv-server"], check=True)
        args.server = "target/release/kv-server"
    kv = run_kv(args.server, args.secs, args.rounds, args.durability)
    etcd = run_etcd(args.secs, args.rounds)
    print(f"Machine: {g.machine() if hasattr(g, 'machine') else os.cpu_count()} cores; wrk -t1, median of "
          f"{args.rounds} x {args.secs} s; 256-byte values, random keys; to each cluster's leader")
    print()
    print("| system | connections | req/s | p50 ms | p99 ms | non-2xx | ours / etcd (goal >= 1.5) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for c in g.CONNS:
        for name, res in (("kv-server, 3-node Raft", kv),
                          ("etcd 3.4, 3 members", etcd)):
            rps, p50, p99, errors = res[c]
            ratio = f"{kv[c][0] / etcd[c][0]:.2f}" if name.startswith("kv") else ""
            print(f"| {name} | {c} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
