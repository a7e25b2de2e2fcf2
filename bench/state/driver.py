#!/usr/bin/env python3
"""Drives one lease store: renews a lease and appends one history entry per step, and
times every renewal. The same pattern for both systems:

  tern: RenewLease of cluster `orders` (POST /v1/write), then SetWeights of service `api`
        (forced, with alternating weights: one audited routing change per step);
  etcd: a lease keep-alive (POST /v3/lease/keepalive), then a put of a new key (the
        MVCC history grows by one revision per step, as tern's audit log grows by entries).

Usage: driver.py tern|etcd HOST:PORT STEPS BUCKET OUT.jsonl DATA_DIR
Writes one JSON line per bucket of BUCKET steps: the step reached, the renewals' median and
p99 in ms, the history entries so far (tern: the newest audit index; etcd: revision) and
the bytes under DATA_DIR (the first member's data directory).
Exits 1 with a message when the store refuses a call.
"""
import base64
import http.client
import json
import os
import statistics
import sys
import time


class Client:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)

    def post(self, path, body, setup=False):
        """One call; a refusal ends the run, except while setting up (`setup`), when a
        group that has just elected its leader gets up to 10 s to take writes."""
        deadline = time.monotonic() + 10
        while True:
            data = json.dumps(body).encode()
            self.conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            text = resp.read()
            if resp.status == 200:
                return json.loads(text) if text else {}
            if not setup or time.monotonic() > deadline:
                sys.exit(f"{path}: HTTP {resp.status}: {text[:300]!r}")
            time.sleep(0.2)

    def get(self, path):
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        text = resp.read()
        if resp.status != 200:
            sys.exit(f"{path}: HTTP {resp.status}: {text[:300]!r}")
        return json.loads(text)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def tern_store(addr):
    c = Client(addr)
    ans = c.post("/v1/write", {"AcquireLease": {"cluster": "orders", "holder": "east"}}, setup=True)
    epoch = ans["applied"]["Lease"]["epoch"]

    def renew():
        c.post("/v1/write", {"RenewLease": {"cluster": "orders", "holder": "east", "epoch": epoch}})

    def append(i):
        w = [["east", 1 + i % 2], ["west", 1]]
        c.post("/v1/write", {"SetWeights": {"service": "api", "weights": w, "force": True,
                                            "actor": "bench"}})

    def history():
        ev = c.get("/v1/events?limit=1")
        entries = ev.get("entries") or ev.get("events") or []
        return entries[0]["index"] if entries else 0

    return renew, append, history


def etcd_store(addr):
    c = Client(addr)
    lease = c.post("/v3/lease/grant", {"TTL": 30}, setup=True)["ID"]

    def renew():
        c.post("/v3/lease/keepalive", {"ID": lease})

    def append(i):
        c.post("/v3/kv/put", {"key": b64(f"/history/{i:09d}"), "value": b64("x" * 200)})

    def history():
        r = c.post("/v3/kv/range", {"key": b64("/"), "limit": 1})
        return int(r["header"]["revision"])

    return renew, append, history


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def main():
    system, addr, steps, bucket, out, data = sys.argv[1:7]
    steps, bucket = int(steps), int(bucket)
    renew, append, history = (tern_store if system == "tern" else etcd_store)(addr)
    times = []
    with open(out, "w") as f:
        for i in range(1, steps + 1):
            t0 = time.perf_counter()
            renew()
            times.append((time.perf_counter() - t0) * 1000)
            append(i)
            if i % bucket == 0:
                times.sort()
                row = {"step": i, "median_ms": statistics.median(times),
                       "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
                       "history": history(), "data_bytes": dir_bytes(data)}
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(f"{system}: {i}/{steps} steps, renewal median {row['median_ms']:.2f} ms, "
                      f"history {row['history']}", file=sys.stderr)
                times = []


if __name__ == "__main__":
    main()
