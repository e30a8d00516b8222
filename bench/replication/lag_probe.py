#!/usr/bin/env python3
"""Replication lag probe: writes a probe key on the leader, then reads it on a follower with min_lsn set to
the write's LSN; the follower answers as soon as it has applied that LSN, so (follower answer time - leader
ack time) is the replication lag of that write, plus one loopback round trip (~0.1 ms).

usage: lag_probe.py LEADER_URL FOLLOWER_URL SECONDS [PROBES_PER_SECOND]
prints one JSON object: {"probes", "p50_ms", "p90_ms", "p99_ms", "max_ms"}
"""
import http.client
import json
import sys
import time
from urllib.parse import urlparse


def conn(url):
    u = urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def main():
    leader_url, follower_url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    per_second = float(sys.argv[4]) if len(sys.argv) > 4 else 50.0
    leader, follower = conn(leader_url), conn(follower_url)
    lags = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        started = time.monotonic()
        leader.request("PUT", f"/v1/kv/lag-probe-{i % 100}", body=str(i).encode())
        resp = leader.getresponse()
        body = resp.read()
        acked = time.monotonic()
        if resp.status != 200:
            sys.exit(f"probe write answered {resp.status}: {body!r}")
        lsn = json.loads(body)["lsn"]
        follower.request("GET", f"/v1/kv/lag-probe-{i % 100}?min_lsn={lsn}&max_wait_ms=10000")
        r = follower.getresponse()
        r.read()
        seen = time.monotonic()
        if r.status != 200:
            sys.exit(f"probe read answered {r.status}")
        lags.append((seen - acked) * 1000.0)
        i += 1
        time.sleep(max(0.0, 1.0 / per_second - (time.monotonic() - started)))
    lags.sort()
    pick = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]
    print(json.dumps({"probes": len(lags), "p50_ms": round(pick(0.50), 3), "p90_ms": round(pick(0.90), 3),
                      "p99_ms": round(pick(0.99), 3), "max_ms": round(lags[-1], 3)}))


if __name__ == "__main__":
    main()
