#!/usr/bin/env python3
"""Measures the memory a proxy holds for idle HTTP/1.1 keep-alive client connections.

Usage: idle_conns.py --target HOST:PORT --count N --pids PID[,PID...] [--settle SECONDS]
                     [--src-prefix 127.0.6.] [--per-src 1000] [--batch 200]

Reads the proxy's RSS (VmRSS from /proc/PID/status, summed over the given pids), opens N TCP
connections from source addresses spread over SRC_PREFIX1, SRC_PREFIX2, ... (so ephemeral
ports never run short), sends one complete `GET / HTTP/1.1` request on each and reads the whole
response, leaving the connection open: the proxy then holds a real, idle HTTP connection.
Connections are opened in batches so at most BATCH requests are in flight, which keeps the
number of upstream connections either proxy needs small and alike. After SETTLE seconds it
reads RSS again, checks how many connections the proxy still holds open, and prints one JSON
object. The connections close when the script exits.
"""
import argparse
import json
import os
import resource
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def fd_count(pids):
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except PermissionError:
            return None
    return n


def read_response(sock):
    """Reads one HTTP/1.1 response (Content-Length or chunked body); returns the status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip().lower()
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(body) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside the response body")
            body += chunk
    elif headers.get(b"transfer-encoding") == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside a chunked body")
            body += chunk
    if headers.get(b"connection") == b"close":
        raise ConnectionError("the proxy answered with Connection: close")
    return status


def still_open(sock):
    # Non-blocking: with a timeout set, Python would wait for readability before peeking.
    sock.setblocking(False)
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return data != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--pids", required=True)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--src-prefix", default="127.0.6.")
    ap.add_argument("--per-src", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=200)
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    target = (host, int(port))
    pids = [int(p) for p in a.pids.split(",") if p]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.count + 1000), hard))

    time.sleep(1.0)
    before_kib = rss_kib(pids)
    before_fds = fd_count(pids)
    socks = []
    statuses = {}
    started = time.monotonic()
    try:
        for start in range(0, a.count, a.batch):
            batch = []
            for i in range(start, min(start + a.batch, a.count)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(10)
                s.bind((f"{a.src_prefix}{1 + i // a.per_src}", 0))
                s.connect(target)
                batch.append(s)
            for s in batch:
                s.sendall(REQUEST)
            for s in batch:
                st = read_response(s)
                statuses[st] = statuses.get(st, 0) + 1
            socks.extend(batch)
    except Exception as e:  # report how far it got rather than a bare traceback
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "opened": len(socks),
                          "statuses": statuses}))
        sys.exit(1)
    open_secs = time.monotonic() - started
    time.sleep(a.settle)
    after_kib = rss_kib(pids)
    after_fds = fd_count(pids)
    held = sum(1 for s in socks if still_open(s))
    delta = after_kib - before_kib
    print(json.dumps({
        "count": a.count,
        "statuses": {str(k): v for k, v in statuses.items()},
        "open_seconds": round(open_secs, 2),
        "settle_seconds": a.settle,
        "rss_before_kib": before_kib,
        "rss_after_kib": after_kib,
        "rss_delta_kib": delta,
        "kib_per_conn": delta / a.count,
        "fds_before": before_fds,
        "fds_after": after_fds,
        "still_open": held,
    }))
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
