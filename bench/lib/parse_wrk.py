#!/usr/bin/env python3
"""Parses the text wrk prints with --latency into one JSON object on stdout.

Usage: parse_wrk.py WRK_OUTPUT_FILE

Fields: rps, p50_ms, p75_ms, p90_ms, p99_ms, requests, non_2xx_3xx, socket_errors
({connect, read, write, timeout}). A missing latency line or Requests/sec line is an
error, so a wrk run that failed outright cannot pass as a result.
"""
import json
import re
import sys

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def to_ms(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unrecognised latency {text!r}")
    return float(m.group(1)) * UNITS_MS[m.group(2)]


def parse(text):
    out = {"non_2xx_3xx": 0, "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if not m:
        raise ValueError("no 'Requests/sec:' line")
    out["rps"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in ", text, re.M)
    if not m:
        raise ValueError("no 'N requests in' line")
    out["requests"] = int(m.group(1))
    dist = text.split("Latency Distribution", 1)
    if len(dist) != 2:
        raise ValueError("no 'Latency Distribution' section (was --latency passed?)")
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+(\S+)", dist[1], re.M)
        if not m:
            raise ValueError(f"no {pct}% latency line")
        out[f"p{pct}_ms"] = to_ms(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non_2xx_3xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(parse(f.read())))
