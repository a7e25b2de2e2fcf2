#!/usr/bin/env python3
"""Writes the state-vs-etcd results file from a run directory.

Usage: report.py RUN_DIR OUTPUT.md

RUN_DIR holds meta.env (KEY=VALUE lines), tern.jsonl and etcd.jsonl (one line per bucket
from bench/state/driver.py). The verdict is computed here: a renewal's cost is flat when the
last bucket's median is within 1.5 times the median of the second bucket (the first is
warm-up) and the data directory stopped growing faster than the history.
"""
import json
import os
import sys

FLAT = 1.5


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def meta(path):
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            out[k] = v
    return out


def verdict(rs):
    if len(rs) < 3:
        return None, "too few buckets to judge"
    base, last = rs[1]["median_ms"], rs[-1]["median_ms"]
    ratio = last / base if base else float("inf")
    return ratio <= FLAT, f"last bucket {last:.2f} ms against {base:.2f} ms in the second ({ratio:.2f}x)"


def main():
    work, out = sys.argv[1], sys.argv[2]
    m = meta(os.path.join(work, "meta.env"))
    tern, etcd = rows(os.path.join(work, "tern.jsonl")), rows(os.path.join(work, "etcd.jsonl"))
    L = [
        "# Lease renewal cost as the history grows: tern vs etcd",
        "",
        f"Measured by `bench/state-vs-etcd` on {m['date']} ({m['cpu']}, {m['cpus']} CPUs, Linux "
        f"{m['kernel']}); tern at commit `{m['commit']}`; {m['etcd']}. Load average at the end "
        f"{m['load']}.",
        "",
        f"Three members of each on loopback (no WAN delay), one driver "
        f"(`bench/state/driver.py`), {int(m['steps']):,} steps each: per step one lease renewal "
        "(timed) and one new history entry (tern: a forced `SetWeights`, one audited routing "
        "change; etcd: a put of a new 200-byte key, one MVCC revision). tern compacts its audit "
        "log to the newest 10,000 entries; etcd runs without compaction, as by default.",
        "",
        "| steps | tern renewal median (ms) | tern p99 (ms) | tern audit index | tern data (MiB) "
        "| etcd renewal median (ms) | etcd p99 (ms) | etcd revision | etcd data (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t, e in zip(tern, etcd):
        L.append(f"| {t['step']:,} | {t['median_ms']:.2f} | {t['p99_ms']:.2f} | {t['history']:,} | "
                 f"{t['data_bytes'] / 2**20:.1f} | {e['median_ms']:.2f} | {e['p99_ms']:.2f} | "
                 f"{e['history']:,} | {e['data_bytes'] / 2**20:.1f} |")
    L.append("")
    for name, rs in (("tern", tern), ("etcd", etcd)):
        ok, why = verdict(rs)
        word = "n/a" if ok is None else ("flat" if ok else "grows")
        L.append(f"- {name}: renewal cost **{word}** ({why}; flat means within {FLAT}x).")
    if tern and etcd:
        t, e = tern[-1]["median_ms"], etcd[-1]["median_ms"]
        L.append(f"- Ratio at the end, tern / etcd renewal median: {t / e:.2f} ({t:.2f} ms against {e:.2f} ms).")
    L += ["", "## How to reproduce", "", "    bench/state-vs-etcd", "",
          "as root (installs `etcd-server` with apt-get when missing). Knobs: `STEPS`, `BUCKET`, "
          "`RESULTS`, `KEEP_DIR=1`.", ""]
    with open(out, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
