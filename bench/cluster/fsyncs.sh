#!/usr/bin/env bash
# Counts the fdatasync calls of a leader and two followers under load: how many fsyncs one write costs
# over the three servers, with static replication or with Raft learners (docs/benchmarks.md, "Where
# the fsyncs were"). Starts three kv-server processes on 127.0.0.1:18701-18703, warms up 2 s, then
# counts with `perf stat` for 5 s while wrk puts 256-byte values at CONNS connections. Needs perf
# (Debian: linux-perf) and wrk; run as root (syscall tracepoints). Never asserts.
#
# Usage: bench/cluster/fsyncs.sh [static|raft] [CONNS] [SERVER]
set -euo pipefail
engine=${1:-raft}
conns=${2:-64}
server=${3:-target/release/kv-server}
root=$(mktemp -d)
lua="$(dirname "$0")/../http/put_go.lua"
common=(--bind 127.0.0.1 --replication-token bench-replication-token-0123 --replication-engine "$engine")
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT
for port in 18702 18703; do
  RUST_LOG=error "$server" "${common[@]}" --port $port --data-path "$root/f$port" \
    --replication-mode follower --replication-leader-host http://127.0.0.1:18701 >/dev/null 2>&1 &
  pids+=($!)
done
RUST_LOG=error "$server" "${common[@]}" --port 18701 --data-path "$root/leader" \
  --replication-replica-hosts http://127.0.0.1:18702,http://127.0.0.1:18703 >/dev/null 2>&1 &
pids+=($!)
sleep 4
wrk -t1 -c"$conns" -d2s -s "$lua" http://127.0.0.1:18701/ >/dev/null
wrk -t1 -c"$conns" -d7s -s "$lua" http://127.0.0.1:18701/ >"$root/wrk.txt" &
load=$!
sleep 1
for pid in "${pids[@]}"; do
  perf stat -x, -e syscalls:sys_enter_fdatasync -p "$pid" -- sleep 5 2>"$root/stat.$pid" &
done
wait $load
sleep 1
rps=$(awk '/Requests\/sec/ {print $2}' "$root/wrk.txt")
total=0
names=(follower follower leader)
for i in 0 1 2; do
  n=$(cut -d, -f1 "$root/stat.${pids[$i]}")
  total=$((total + n))
  echo "${names[$i]}: $((n / 5)) fdatasync/s"
done
echo "$engine, $conns connections: $rps req/s; $(awk -v t="$total" -v r="$rps" 'BEGIN {printf "%.3f", t / 5 / r}') fdatasync per write over the three servers"
