#!/usr/bin/env python3
"""Watches DNS servers answer one A query until each switches to an expected address.

Usage: dns_failover.py QNAME EXPECT TIMEOUT_S NAME=IP:PORT [NAME=IP:PORT ...]

Queries every server every 10 ms over UDP with a hand-built packet (no library needed) and
prints one JSON object: for each server, the seconds from start until its answer first held
EXPECT (the first A record), or null if it never did within TIMEOUT_S. The caller starts this
right after the fault (or the repair), so the figure is the time the server took to follow it.
"""
import json
import os
import socket
import struct
import sys
import time


def build_query(qname, qid):
    header = struct.pack(">HHHHHH", qid, 0, 1, 0, 0, 0)
    q = b"".join(bytes([len(l)]) + l.encode() for l in qname.rstrip(".").split(".")) + b"\0"
    return header + q + struct.pack(">HH", 1, 1)


def skip_name(msg, i):
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1


def first_a(msg):
    """The first A record's address in a response, or None."""
    if len(msg) < 12:
        return None
    qd, an = struct.unpack(">HH", msg[4:8])
    i = 12
    for _ in range(qd):
        i = skip_name(msg, i) + 4
    for _ in range(an):
        i = skip_name(msg, i)
        rtype, _, _, rdlen = struct.unpack(">HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1 and rdlen == 4:
            return socket.inet_ntoa(msg[i:i + 4])
        i += rdlen
    return None


def main():
    qname, expect, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    servers = {}
    for spec in sys.argv[4:]:
        name, addr = spec.split("=", 1)
        ip, port = addr.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.2)
        servers[name] = (s, (ip, int(port)))
    start = time.monotonic()
    switched = {name: None for name in servers}
    qid = os.getpid() & 0xFFFF
    while time.monotonic() - start < timeout and None in switched.values():
        for name, (s, addr) in servers.items():
            if switched[name] is not None:
                continue
            qid = (qid + 1) & 0xFFFF
            s.sendto(build_query(qname, qid), addr)
            try:
                while True:
                    msg, _ = s.recvfrom(4096)
                    if struct.unpack(">H", msg[:2])[0] == qid:
                        break
            except socket.timeout:
                continue
            if first_a(msg) == expect:
                switched[name] = round(time.monotonic() - start, 3)
        time.sleep(0.01)
    print(json.dumps(switched))


if __name__ == "__main__":
    main()
