#!/usr/bin/env python3
"""Larger than RAM: run kv-server in a memory-limited cgroup, write far more value bytes than the limit
through the HTTP API, read every value back and compare, then report the peak RSS.

Usage: scripts/larger_than_ram.py SERVER_BINARY DATA_MIB LIMIT_MIB
Exits non-zero on any mismatch, error, or if the server dies (e.g. killed for memory). Needs root and a
cgroup memory controller (v2 or v1), as on the project's machines.
"""
import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

VALUE = 1 << 20  # 1 MiB values


def cgroup(limit: int) -> str:
    """Creates a cgroup limited to `limit` bytes of memory; returns its cgroup.procs path."""
    name = f"kv-larger-than-ram-{os.getpid()}"
    v2 = "/sys/fs/cgroup/cgroup.controllers"
    if os.path.exists(v2):
        path = f"/sys/fs/cgroup/{name}"
        os.makedirs(path, exist_ok=True)
        open(f"{path}/memory.max", "w").write(str(limit))
        open(f"{path}/memory.swap.max", "w").write("0")
    else:
        path = f"/sys/fs/cgroup/memory/{name}"
        os.makedirs(path, exist_ok=True)
        open(f"{path}/memory.limit_in_bytes", "w").write(str(limit))
        try:
            open(f"{path}/memory.memsw.limit_in_bytes", "w").write(str(limit))
        except OSError:
            pass  # no swap accounting: swap is off on these machines anyway
    return path


def value_of(i: int) -> bytes:
    seed = hashlib.sha256(f"value-{i}".encode()).digest()
    return (seed * (VALUE // len(seed) + 1))[:VALUE]


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def main():
    server, data_mib, limit_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    group = cgroup(limit_mib << 20)
    data_dir = tempfile.mkdtemp(prefix="kv-ltr-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Join the cgroup before exec, so every byte the server ever maps counts against the limit.
    cmd = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$0" "$@"', server,
           "--bind", "127.0.0.1", "--port", str(port), "--data-path", data_dir, "--durability", "never",
           "--segment-bytes", str(256 << 20)]
    proc = subprocess.Popen(cmd, env={**os.environ, "RUST_LOG": "warn"})
    try:
        for _ in range(300):
            try:
                if request(port, "GET", "/health-check")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("server did not start")
        started = time.time()
        for i in range(data_mib):
            status, body = request(port, "PUT", f"/v1/kv/big-{i:06d}", value_of(i))
            if status != 200:
                raise SystemExit(f"put {i}: {status} {body[:200]!r}")
        wrote = time.time() - started
        for i in range(data_mib):
            status, body = request(port, "GET", f"/v1/kv/big-{i:06d}")
            if status != 200 or body != value_of(i):
                raise SystemExit(f"value {i} came back wrong (status {status}, {len(body)} bytes)")
        if proc.poll() is not None:
            raise SystemExit(f"server died with {proc.returncode}")
        hwm = next(l for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmHWM")).split()[1]
        print(f"larger-than-RAM: wrote {data_mib} MiB in {wrote:.1f} s and read it all back correctly "
              f"under a {limit_mib} MiB memory limit; server peak RSS {int(hwm) // 1024} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)
        try:
            os.rmdir(group)
        except OSError:
            pass


if __name__ == "__main__":
    main()
