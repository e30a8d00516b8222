#!/usr/bin/env bash
# HTTP vs HTTPS: the same kv-server (release), GET and PUT (256-byte values, 10 000 preloaded keys), 16 and
# 64 connections, plain and TLS alternating ROUNDS times in one sitting (this machine is shared and noisy:
# compare within a round). The certificate is made here with openssl (a P-256 key, like rcgen's); wrk
# speaks TLS itself and does not verify it. Keep-alive connections: the handshake is paid once per
# connection, so this measures the cost of encrypting the bytes, not of handshakes.
# Usage: bench/http/tls.sh [kv-server binary, default target/release/kv-server] [rounds, default 3]
# Prints one line per run: workload, connections, scheme, req/s, p50, p99.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-target/release/kv-server}; ROUNDS=${2:-3}
PORT=18192
for tool in wrk openssl curl python3; do
  command -v "$tool" >/dev/null || apt-get install -y -qq "$tool" >/dev/null ||
    { echo "$tool not found and not installable: apt-get install $tool" >&2; exit 1; }
done
if [ "$BIN" = target/release/kv-server ]; then cargo build --release -p kv-server; fi
work=$(mktemp -d); pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
run() { # scheme workload connections
  local scheme=$1 script=$2 conns=$3 data tls=()
  data=$(mktemp -d -p "$work")
  [ "$scheme" = https ] && tls=(--tls-cert-file "$work/cert.pem" --tls-key-file "$work/key.pem")
  RUST_LOG=error "$BIN" --bind 127.0.0.1 --port $PORT --data-path "$data" "${tls[@]}" &
  pid=$!
  local up=
  for _ in $(seq 100); do curl -skf "$scheme://127.0.0.1:$PORT/health-check" >/dev/null && up=1 && break; sleep 0.1; done
  [ -n "$up" ] || { echo "kv-server ($scheme) did not come up" >&2; exit 1; }
  for b in $(seq 0 9); do
    python3 -c "import json; print(json.dumps({'key%05d' % i: 'v'*256 for i in range($b*1000, $b*1000+1000)}))" |
      curl -skf -X POST --data-binary @- "$scheme://127.0.0.1:$PORT/batchput" >/dev/null
  done
  local out
  out=$(wrk -t1 -c"$conns" -d5s --latency -s "bench/http/$script" "$scheme://127.0.0.1:$PORT")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then echo "wrk saw errors ($scheme $script $conns):" >&2; echo "$out" >&2; exit 1; fi
  printf '%-8s %3s %-5s %9s req/s  p50 %-8s p99 %s\n' "${script%.lua}" "$conns" "$scheme" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" "$(awk '$1=="50%" {print $2}' <<<"$out")" \
    "$(awk '$1=="99%" {print $2}' <<<"$out")"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}
for i in $(seq "$ROUNDS"); do
  echo "round $i"
  for script in get.lua put.lua; do
    for conns in 16 64; do
      run http "$script" "$conns"
      run https "$script" "$conns"
    done
  done
done
