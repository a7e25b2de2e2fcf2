#!/usr/bin/env python3
"""Writes the dns-vs-gdnsd results file from a run directory.

Usage: dns_report.py RUN_DIR OUTPUT.md

RUN_DIR holds meta.env (KEY=VALUE lines), round-N-TOOL.dnsperf (dnsperf output),
round-N-TOOL.cpu (CPU seconds the server used during that round), failover.json and
failback.json (from dns_failover.py), and the configurations. Numbers are medians over
rounds; ratios are tern / gdnsd.
"""
import glob
import json
import os
import re
import statistics
import sys

TOOLS = ("tern", "gdnsd")
TIE = 0.05


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    return meta


def parse_dnsperf(text):
    def num(pattern):
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None
    return {
        "sent": num(r"Queries sent:\s+(\d+)"),
        "completed": num(r"Queries completed:\s+(\d+)"),
        "lost": num(r"Queries lost:\s+(\d+)"),
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        "avg_ms": (num(r"Average Latency \(s\):\s+([\d.]+)") or 0) * 1000,
        "max_ms": (num(r"Average Latency \(s\):\s+[\d.]+ \(min [\d.]+, max ([\d.]+)\)") or 0) * 1000,
        "stddev_ms": (num(r"Latency StdDev \(s\):\s+([\d.]+)") or 0) * 1000,
        "noerror": num(r"NOERROR (\d+)"),
        "nxdomain": num(r"NXDOMAIN (\d+)"),
    }


def main():
    run, out = sys.argv[1], sys.argv[2]
    meta = read_meta(os.path.join(run, "meta.env"))
    rounds = {t: [] for t in TOOLS}
    for path in sorted(glob.glob(os.path.join(run, "round-*-*.dnsperf"))):
        n, tool = re.search(r"round-(\d+)-(\w+)\.dnsperf$", path).groups()
        with open(path) as f:
            r = parse_dnsperf(f.read())
        r["round"] = int(n)
        cpu = path[:-len(".dnsperf")] + ".cpu"
        if os.path.exists(cpu) and r["completed"]:
            with open(cpu) as f:
                r["cpu_us_per_query"] = float(f.read()) * 1e6 / r["completed"]
        rounds[tool].append(r)

    def med(tool, key):
        vals = [r[key] for r in rounds[tool] if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    qps = {t: med(t, "qps") for t in TOOLS}
    ratio = qps["tern"] / qps["gdnsd"] if qps["tern"] and qps["gdnsd"] else None
    if ratio is None:
        verdict = "incomplete run"
    elif ratio >= 1 - TIE:
        verdict = "target met: tern answers at least as many queries per second as gdnsd" if ratio >= 1 else \
            f"tie: tern within {TIE:.0%} of gdnsd's queries per second"
    else:
        verdict = "target missed: tern answers fewer queries per second than gdnsd"

    def load(name):
        p = os.path.join(run, name)
        return json.load(open(p)) if os.path.exists(p) else {}
    failover, failback = load("failover.json"), load("failback.json")

    lines = []
    w = lines.append
    w("# DNS: tern edge vs gdnsd")
    w("")
    w(f"Run {meta.get('DATE', '?')} on {meta.get('CPU', '?')} ({meta.get('NPROC', '?')} CPUs), "
      f"{meta.get('KERNEL', '?')}; tern {meta.get('TERN_COMMIT', '?')}, {meta.get('GDNSD_VERSION', '?')}, "
      f"{meta.get('DNSPERF_VERSION', '?')}. Load average at start: {meta.get('LOADAVG_START', '?')}.")
    w("")
    w(f"**Verdict: {verdict}** (tern/gdnsd queries per second: "
      f"{ratio:.2f})." if ratio else f"**Verdict: {verdict}.**")
    w("")
    w("## Throughput and latency")
    w("")
    w(f"Same zone (static SOA, NS, A, CNAME, MX, TXT and one health-checked failover record), "
      f"same query file ({meta.get('QUERIES', '?')}), dnsperf `{meta.get('DNSPERF_ARGS', '?')}` "
      f"for {meta.get('DURATION', '?')} s per round, {meta.get('ROUNDS', '?')} rounds alternating "
      f"tern and gdnsd after a warm-up of each. Both servers use {meta.get('THREADS', '?')} UDP threads. "
      "Medians over rounds. tern follows the in-zone CNAME (`www` -> `mail`) and adds the "
      "target's A record; gdnsd answers the CNAME alone, so tern's answers to those queries are "
      "larger.")
    w("")
    w("| | queries/s | avg latency | latency stddev | lost | server CPU per query |")
    w("|---|---:|---:|---:|---:|---:|")
    for t in TOOLS:
        cpu = med(t, "cpu_us_per_query")
        w(f"| {t} | {med(t, 'qps') or 0:,.0f} | {med(t, 'avg_ms') or 0:.3f} ms | "
          f"{med(t, 'stddev_ms') or 0:.3f} ms | {med(t, 'lost') or 0:.0f} | "
          f"{cpu:.2f} µs |" if cpu is not None else "n/a |")
    if ratio:
        lat = (med("tern", "avg_ms") or 0) / (med("gdnsd", "avg_ms") or 1)
        cpu_t, cpu_g = med("tern", "cpu_us_per_query"), med("gdnsd", "cpu_us_per_query")
        w(f"| **tern / gdnsd** | **{ratio:.2f}** | {lat:.2f} | | | "
          f"{(cpu_t / cpu_g) if cpu_t and cpu_g else float('nan'):.2f} |")
    w("")
    w("Every round:")
    w("")
    w("| round | server | queries/s | avg latency | lost |")
    w("|---:|---|---:|---:|---:|")
    for t in TOOLS:
        for r in rounds[t]:
            w(f"| {r['round']} | {t} | {r['qps'] or 0:,.0f} | {r['avg_ms']:.3f} ms | {r['lost'] or 0:.0f} |")
    w("")
    w("## Failover after a backend death")
    w("")
    w(f"Both servers check the same two backends with the same HTTP check "
      f"(`GET /health` every {meta.get('INTERVAL', '?')} s, timeout {meta.get('TIMEOUT', '?')} s, "
      f"down after {meta.get('FALL', '?')} failures, up after {meta.get('RISE', '?')} successes; "
      "gdnsd: http_status with interval, timeout, down_thresh = ok_thresh, up_thresh). The primary "
      "backend is killed once; a poller queries both servers every 10 ms from that moment until "
      "each answers the secondary. Then the backend is restarted and the poller waits for the "
      "primary to come back.")
    w("")
    w(f"Expected bound: down threshold x interval + one interval = "
      f"{int(meta.get('FALL', 0)) * float(meta.get('INTERVAL', 0)) + float(meta.get('INTERVAL', 0)):.0f} s.")
    w("")
    w("| | failover (primary killed -> secondary answered) | failback (primary restarted -> primary answered) |")
    w("|---|---:|---:|")
    for t in TOOLS:
        fo, fb = failover.get(t), failback.get(t)
        w(f"| {t} | {f'{fo:.2f} s' if fo is not None else 'never'} | {f'{fb:.2f} s' if fb is not None else 'never'} |")
    w("")
    w("## Analysis")
    w("")
    w("(to be filled in)")
    w("")
    with open(out, "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
