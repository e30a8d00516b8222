#!/usr/bin/env bash
# The write stall a Raft snapshot causes (docs/benchmarks.md, "A snapshot stalls every write"): one voter
# (`--cluster-peers 1=<itself>`) on 127.0.0.1:18701 takes wrk -t1 -c16 puts of 256-byte values under
# random keys for SECS seconds, once with the default snapshot interval and once without snapshots;
# prints req/s, latency (max in wrk's Latency line) and p99, and the snapshots built. Needs wrk. Never
# asserts.
#
# Usage: bench/cluster/snapshot_stall.sh [SECS] [SERVER]
set -euo pipefail
secs=${1:-30}
server=${2:-target/release/kv-server}
lua="$(dirname "$0")/../http/put_go.lua"
run() {
  local root pid
  root=$(mktemp -d)
  RUST_LOG=info "$server" --bind 127.0.0.1 --port 18701 --data-path "$root/n1" --cluster-node-id 1 \
    --cluster-peers 1=http://127.0.0.1:18701 "$@" >"$root/log" 2>&1 &
  pid=$!
  sleep 3
  echo "== ${*:-default snapshot interval}"
  wrk -t1 -c16 -d"${secs}s" --latency -s "$lua" http://127.0.0.1:18701/ | grep -E "Requests/sec|99%|Latency "
  echo "snapshots built: $(grep -c 'BuildSnapshotDone' "$root/log" || true)"
  kill "$pid"
  wait "$pid" || true
  rm -rf "$root"
}
run
run --cluster-snapshot-entries 100000000
