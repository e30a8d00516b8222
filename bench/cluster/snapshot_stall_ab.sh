#!/usr/bin/env bash
# A/B of the write stall around Raft snapshots (docs/benchmarks.md, "A snapshot stalls every write"):
# for each of two kv-server builds in turn, ROUNDS times, one voter (`--cluster-peers 1=<itself>`) on
# 127.0.0.1:18701 with the default snapshot interval takes wrk -t1 -c16 puts of 256-byte values under
# random keys for SECS seconds; prints req/s, p99, the max latency, the snapshots built and the keys at
# the end, one line per run. Needs wrk. Never asserts.
#
# Usage: bench/cluster/snapshot_stall_ab.sh BEFORE_SERVER AFTER_SERVER [SECS] [ROUNDS]
set -euo pipefail
before=$1
after=$2
secs=${3:-30}
rounds=${4:-2}
lua="$(dirname "$0")/../http/put_go.lua"
for round in $(seq "$rounds"); do
  for server in "$before" "$after"; do
    root=$(mktemp -d)
    RUST_LOG=info "$server" --bind 127.0.0.1 --port 18701 --data-path "$root/n1" --cluster-node-id 1 \
      --cluster-peers 1=http://127.0.0.1:18701 >"$root/log" 2>&1 &
    pid=$!
    sleep 3
    out=$(wrk -t1 -c16 -d"${secs}s" --latency -s "$lua" http://127.0.0.1:18701/)
    keys=$(curl -s http://127.0.0.1:18701/v1/status | python3 -c 'import json, sys; print(json.load(sys.stdin).get("keys", "?"))' || echo "?")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    max=$(echo "$out" | awk '$1 == "Latency" {print $4}')
    echo "round $round $server: $rps req/s, p99 $p99, max $max, snapshots $(grep -c 'BuildSnapshotDone' "$root/log" || true), keys $keys"
    kill "$pid"
    wait "$pid" || true
    rm -rf "$root"
  done
done
