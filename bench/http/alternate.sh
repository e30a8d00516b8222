#!/usr/bin/env bash
# One workload against two kv-server binaries, alternating them ROUNDS times, to tell a real difference from
# this shared machine's noise (a single run of bench/http/run.sh can move by 2x).
# Usage: bench/http/alternate.sh BEFORE_BIN AFTER_BIN [lua script, default put.lua] [durability, default
#        never] [connections, default 16] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE=${1:?before binary}; AFTER=${2:?after binary}
SCRIPT=bench/http/${3:-put.lua}; DURABILITY=${4:-never}; CONNS=${5:-16}; ROUNDS=${6:-3}
PORT=18191
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
for i in $(seq "$ROUNDS"); do
  for bin in "$BEFORE" "$AFTER"; do
    data=$(mktemp -d)
    RUST_LOG=warn "$bin" --bind 127.0.0.1 --port $PORT --data-path "$data" --durability "$DURABILITY" &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health-check" >/dev/null && break; sleep 0.1; done
    # The same preload as run.sh: key00000..key09999, 256-byte values, in batches of 1 000.
    for b in $(seq 0 9); do
      python3 -c "import json; print(json.dumps({'key%05d' % i: 'v'*256 for i in range($b*1000, $b*1000+1000)}))" |
        curl -sf -X POST --data-binary @- "http://127.0.0.1:$PORT/batchput" >/dev/null
    done
    out=$(wrk -t2 -c"$CONNS" -d5s --latency -s "$SCRIPT" "http://127.0.0.1:$PORT")
    echo "round $i $bin: $(awk '/Requests\/sec/ {print $2}' <<<"$out") req/s," \
      "p50 $(awk '$1=="50%" {print $2}' <<<"$out"), p99 $(awk '$1=="99%" {print $2}' <<<"$out")"
    kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$data"
  done
done
