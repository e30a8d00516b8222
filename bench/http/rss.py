#!/usr/bin/env python3
"""Goal 8 of the performance issue: kv-server's resident memory after 2 M puts over 1 M keys.

Starts kv-server (durability from --durability, default `always`, the default mode) on a fresh data
directory, sends PUTS puts (default 2 000 000) of 256-byte values over KEYS keys (default 1 000 000) through
`POST /put` with wrk (bench/http/rss_put.lua, 64 connections), then reads the server's VmRSS and VmHWM
(peak) from /proc, and the two parts of VmRSS: RssAnon (the heap: keydir, buffers) and RssFile (pages of the
segments' memory maps that reads touched, which are page cache, shared and reclaimable), and its key count
from /v1/status. Prints one Markdown row. Never asserts: the goal
(<= 100 MB) is printed beside the figure.

Usage: bench/http/rss.py [--server target/release/kv-server] [--puts 2000000] [--keys 1000000]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORT = 18284


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default=None)
    ap.add_argument("--puts", type=int, default=2_000_000)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--durability", default="always")
    args = ap.parse_args()
    os.chdir(ROOT)
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if args.server is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "kv-server"], check=True)
        args.server = "target/release/kv-server"
    data = tempfile.mkdtemp(prefix="kv-rss-")
    server = subprocess.Popen([args.server, "--bind", "127.0.0.1", "--port", str(PORT), "--data-path", data,
                               "--durability", args.durability], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health-check", timeout=1).read()
                break
            except Exception:
                time.sleep(0.05)
        started = time.time()
        # wrk's threads stop after PUTS answers, but wrk itself sleeps out its duration: watch the LSN
        # and end it once every put is in.
        load = subprocess.Popen(["wrk", "-t1", "-c64", "-d3600s", "-s", "bench/http/rss_put.lua",
                                 f"http://127.0.0.1:{PORT}/"], stdout=subprocess.DEVNULL,
                                env=dict(os.environ, PUTS=str(args.puts), KEYS=str(args.keys)))
        while True:
            time.sleep(0.5)
            status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v1/status", timeout=10))
            if status["last_lsn"] >= args.puts or load.poll() is not None:
                break
        secs = time.time() - started
        load.terminate()
        load.wait(timeout=10)
        time.sleep(1)
        status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v1/status", timeout=10))
        keys = status["keys"]
        rss, hwm = status_kib(server.pid, "VmRSS"), status_kib(server.pid, "VmHWM")
        anon, file = status_kib(server.pid, "RssAnon"), status_kib(server.pid, "RssFile")
        print("| server | durability | puts | keys | seconds | RSS MB | of it anon / file MB | peak RSS MB "
              "| goal <= 100 MB |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        mb = lambda kib: kib * 1024 / 1e6
        print(f"| {args.server} | {args.durability} | {status['last_lsn']:,} | {keys:,} | {secs:.0f} | "
              f"{mb(rss):.0f} | {mb(anon):.0f} / {mb(file):.0f} | {mb(hwm):.0f} | "
              f"{'met' if mb(rss) <= 100 else 'not met'} |")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
