#!/usr/bin/env bash
# HTTP load benchmark: wrk (Debian's package) against a release kv-server and, in the same run, the bare hyper
# ceiling server (crates/infra-http/examples/ceiling.rs). Prints a Markdown table for docs/benchmarks.md.
# Usage: bench/http/run.sh [seconds per run, default 5]
# KV_SERVER=path runs that kv-server binary instead of building this checkout's (e.g. a copy of an earlier
# commit's release build, to compare before and after in one sitting; see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
[ -n "${KV_SERVER:-}" ] || cargo build --release -q -p kv-server
cargo build --release -q -p kv-infra-http --example ceiling
BIN=target/release
SERVER_BIN=${KV_SERVER:-$BIN/kv-server}
PORT=18181
CEIL=18182
DATA=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$DATA"' EXIT

wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1$2" >/dev/null && return 0; sleep 0.1; done; echo "port $1 did not come up" >&2; exit 1; }

# run NAME URL SCRIPT CONNS -> "| NAME | CONNS | req/s | p50 | p99 |"
run() {
  local name=$1 url=$2 script=$3 conns=$4 out
  out=$(wrk -t2 -c"$conns" -d"${SECS}s" --latency ${script:+-s "$script"} "$url")
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" | tr '\n' ' ' || true)
  echo "| $name | $conns | $rps | $p50 | $p99 | ${errors:-} |"
}

echo "Server: $SERVER_BIN"
echo "Machine: $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)), wrk -t2, ${SECS}s per run, $(date -u +%F)"
echo
echo "| workload | connections | req/s | p50 | p99 | errors |"
echo "|---|---:|---:|---:|---:|---|"
"$BIN/examples/ceiling" $CEIL & wait_up $CEIL /
for c in 16 64; do
  run "ceiling GET (256 B body)" "http://127.0.0.1:$CEIL/" "" $c
  run "ceiling POST (256 B body, empty reply)" "http://127.0.0.1:$CEIL/" bench/http/ceiling_post.lua $c
done
for durability in never always; do
  rm -rf "$DATA"/*
  RUST_LOG=warn "$SERVER_BIN" --bind 127.0.0.1 --port $PORT --data-path "$DATA" --durability $durability &
  SERVER=$!
  wait_up $PORT /health-check
  # Preload key00000..key09999 (256-byte values) in batches of 1 000.
  for b in $(seq 0 9); do
    python3 -c "import json,sys; print(json.dumps({'key%05d' % i: 'v'*256 for i in range($b*1000, $b*1000+1000)}))" |
      curl -sf -X POST --data-binary @- "http://127.0.0.1:$PORT/batchput" >/dev/null
  done
  for c in 16 64; do
    run "GET random key of 10 000 ($durability)" "http://127.0.0.1:$PORT" bench/http/get.lua $c
    run "PUT 256 B random key ($durability)" "http://127.0.0.1:$PORT" bench/http/put.lua $c
    run "readrange 100 keys ($durability)" "http://127.0.0.1:$PORT" bench/http/range.lua $c
    run "batchput 10 x 256 B ($durability)" "http://127.0.0.1:$PORT" bench/http/batch.lua $c
  done
  kill -TERM $SERVER; wait $SERVER || true
done
