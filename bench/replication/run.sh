#!/usr/bin/env bash
# Replication benchmark: release kv-server processes on 127.0.0.1 (a leader and up to four followers, all on
# this machine), driven by `kvctl bench`. Prints Markdown tables for docs/benchmarks.md:
#   1. leader write throughput with 0, 1, 2 and 4 followers, asynchronous and with REPLICATION_ACK_FOLLOWERS=1;
#   2. replication lag p50/p99 (lag_probe.py) under a steady load at half the leader's measured maximum;
#   3. catch-up rate of a follower that is CATCHUP writes behind.
# Usage: bench/replication/run.sh [seconds per run, default 10] [catch-up writes, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
CATCHUP=${2:-1000000}
cargo build --release -q -p kv-server -p kvctl
BIN=$PWD/target/release
DATA=$(mktemp -d)
LP=18300
FPORTS=(18301 18302 18303 18304)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

wait_up() { for _ in $(seq 200); do curl -sf "http://127.0.0.1:$1/health-check" >/dev/null && return 0; sleep 0.05; done; echo "port $1 did not come up" >&2; exit 1; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
status() { curl -sf "http://127.0.0.1:$1/v1/status"; }
applied() { status "$1" | json "d['replication']['applied_lsn'] if d.get('replication') else d['last_lsn']"; }

PIN_LEADER=""    # e.g. "taskset -c 0": CPU placement of the leader
PIN_OTHERS=""    # ... and of the followers and the load generator
start_follower() { # index
  local p=${FPORTS[$1]}
  RUST_LOG=warn $PIN_OTHERS "$BIN/kv-server" --bind 127.0.0.1 --port "$p" --data-path "$DATA/f$1" \
    --replication-mode follower --replication-leader-host "http://127.0.0.1:$LP" --replication-token bench-replication-token-0123 &
  FPID[$1]=$!; PIDS+=($!)
  wait_up "$p"
}
start_leader() { # followers ack [extra args]
  local n=$1 ack=$2; shift 2
  local hosts=""
  for i in $(seq 0 $((n - 1))); do hosts+="${hosts:+,}http://127.0.0.1:${FPORTS[$i]}"; done
  RUST_LOG=warn $PIN_LEADER "$BIN/kv-server" --bind 127.0.0.1 --port $LP --data-path "$DATA/leader" \
    --replication-replica-hosts "$hosts" --replication-ack-followers "$ack" --replication-token bench-replication-token-0123 "$@" &
  LPID=$!; PIDS+=($!)
  wait_up $LP
}
stop_all() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); rm -rf "${DATA:?}"/*; }
converge() { # followers -> seconds until all applied == leader's last LSN
  local n=$1 target t0; target=$(status $LP | json "d['last_lsn']"); t0=$(date +%s.%N)
  for i in $(seq 0 $((n - 1))); do
    until [ "$(applied "${FPORTS[$i]}")" -ge "$target" ]; do sleep 0.05; done
  done
  python3 -c "import sys; print(round($(date +%s.%N) - $t0, 2))"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
bench_put() { # extra kvctl args -> "req/s p50 p99 leader-CPU-ms-per-1000-writes"
  local t0 t1 out
  t0=$(cpu_ticks "$LPID")
  out=$($PIN_OTHERS "$BIN/kvctl" bench put -c 64 -d "$SECS" --keys 100000 --json --url "http://127.0.0.1:$LP" "$@")
  t1=$(cpu_ticks "$LPID")
  json "'%d %s %s %.1f' % (d['requests_per_second'], d['latency_us']['p50'], d['latency_us']['p99'], ($t1 - $t0) * 1000.0 / $(getconf CLK_TCK) / (d['requests'] / 1000.0))" <<<"$out"
}

echo "Machine: $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)); leader and followers"
echo "on the same machine; durability always everywhere; kvctl bench put -c 64, 256 B values, ${SECS}s per run; $(date -u +%F)"
echo
echo "| followers | acknowledgement | leader put req/s | p50 µs | p99 µs | leader CPU ms per 1 000 writes | followers caught up after |"
echo "|---:|---|---:|---:|---:|---:|---:|"
declare -A MAX
for n in 0 1 2 4; do
  for ack in 0 1; do
    [ "$n" -eq 0 ] && [ "$ack" -eq 1 ] && continue
    for i in $(seq 0 $((n - 1))); do start_follower "$i"; done
    start_leader "$n" "$ack"
    read -r rps p50 p99 cpu < <(bench_put)
    MAX[$n.$ack]=$rps
    caught=$(converge "$n")
    echo "| $n | $([ "$ack" -eq 0 ] && echo asynchronous || echo "N=1") | $rps | $p50 | $p99 | $cpu | ${caught} s |"
    stop_all
  done
done

echo
echo "The same with the leader pinned to CPU 0 and the followers and the load generator to CPU 1 (taskset), so"
echo "that followers do not take the leader's CPU: what shipping costs the leader itself."
echo
echo "| followers | acknowledgement | leader put req/s | p50 µs | p99 µs | leader CPU ms per 1 000 writes | followers caught up after |"
echo "|---:|---|---:|---:|---:|---:|---:|"
PIN_LEADER="taskset -c 0"; PIN_OTHERS="taskset -c 1"
for cfg in 0.0 4.0 4.1; do
  n=${cfg%.*}; ack=${cfg#*.}
  for i in $(seq 0 $((n - 1))); do start_follower "$i"; done
  start_leader "$n" "$ack"
  read -r rps p50 p99 cpu < <(bench_put)
  caught=$(converge "$n")
  echo "| $n | $([ "$ack" -eq 0 ] && echo asynchronous || echo "N=1") | $rps | $p50 | $p99 | $cpu | ${caught} s |"
  stop_all
done
PIN_LEADER=""; PIN_OTHERS=""

echo
echo "| followers | steady load (half the measured maximum) | achieved req/s | lag p50 ms | lag p90 ms | lag p99 ms | lag max ms | probes |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in 1 4; do
  half=$(( ${MAX[$n.0]} / 2 ))
  for i in $(seq 0 $((n - 1))); do start_follower "$i"; done
  start_leader "$n" 0
  "$BIN/kvctl" bench put -c 64 -d "$SECS" --keys 100000 --rate "$half" --json --url "http://127.0.0.1:$LP" > "$DATA/load.json" &
  LOAD=$!
  sleep 1
  lag=$(python3 bench/replication/lag_probe.py "http://127.0.0.1:$LP" "http://127.0.0.1:${FPORTS[$((n - 1))]}" $((SECS - 2)) 50)
  wait $LOAD
  got=$(json "int(d['requests_per_second'])" < "$DATA/load.json")
  echo "| $n | $half | $got | $(json "'%s | %s | %s | %s | %s' % (d['p50_ms'], d['p90_ms'], d['p99_ms'], d['max_ms'], d['probes'])" <<<"$lag") |"
  stop_all
done

echo
echo "| catch-up | writes behind | seconds | records/s | snapshots |"
echo "|---|---:|---:|---:|---:|"
start_follower 0
start_leader 1 0 --compact-garbage-ratio 0
"$BIN/kvctl" bench put -n 1000 -c 8 --keys 1000 --json --url "http://127.0.0.1:$LP" >/dev/null
converge 1 >/dev/null
kill "${FPID[0]}"; wait "${FPID[0]}" 2>/dev/null || true
before=$(status $LP | json "d['last_lsn']")
"$BIN/kvctl" bench put -n "$CATCHUP" -c 64 --keys "$CATCHUP" --json --url "http://127.0.0.1:$LP" >/dev/null
behind=$(( $(status $LP | json "d['last_lsn']") - before ))
start_follower 0
secs=$(converge 1)
snaps=$(status $LP | json "d['followers'][0]['snapshots_sent']")
echo "| incremental (log shipping) | $behind | $secs | $(python3 -c "print(int($behind / $secs))") | $snaps |"
