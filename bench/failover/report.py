#!/usr/bin/env python3
"""Writes the failover-vs-patroni results file from a run directory.

Usage: report.py RUN_DIR OUTPUT.md

RUN_DIR holds meta.env (KEY=VALUE lines), patroni.jsonl (one line per Patroni run: the
writer's check plus the run's settings) and, when the tern half ran, tern.jsonl.
"""
import json
import os
import statistics
import sys


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    return meta


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ms(v):
    return "n/a" if v is None else f"{v:,.0f}"


def s(v):
    return "n/a" if v is None else f"{v / 1000:.1f} s"


def spread(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med / 1000:.1f} s"
    return f"{med / 1000:.1f} s ({min(vals) / 1000:.1f} to {max(vals) / 1000:.1f})"


def median_s(values):
    vals = [v for v in values if v is not None]
    return f"{statistics.median(vals) / 1000:.1f} s" if vals else "n/a"



TARGET_UNAVAILABLE_MS = 10_000


def target_verdict(tern):
    """The target of DESIGN.md section 6, judged from the tern rows: every run's write
    unavailability under 10 s, and no acknowledged write lost in sync mode."""
    if not tern:
        return []
    worst = max(r["write_unavailable_ms"] for r in tern)
    sync = [r for r in tern if r["mode"] == "sync"]
    sync_lost = sum(r["lost"] for r in sync)
    met = worst < TARGET_UNAVAILABLE_MS and sync and sync_lost == 0
    best = min(r["write_unavailable_ms"] for r in tern)
    why = (f"tern {best / 1000:.1f} to {worst / 1000:.1f} s over {len(tern)} runs; "
           f"{sync_lost} lost in {len(sync)} sync run(s)")
    if not sync:
        why += " (no sync run, so the zero-loss half cannot be judged)"
    for mode in sorted({r["mode"] for r in tern} - {"sync"}):
        lost = [r["lost"] for r in tern if r["mode"] == mode]
        why += f"; {mode}: {sum(lost)} lost over {len(lost)} run(s), which the target does not bound"
    return ["Target: write unavailability under 10 s with default settings and a witness, "
            f"and zero lost writes in sync mode: **{'met' if met else 'missed'}** ({why})."]


def reading(ok, configs, meta):
    """Plain statements drawn from the Patroni runs."""
    if not ok:
        return []
    out = ["## Reading the numbers", ""]
    parts = []
    for name, ttl, loop, retry in configs:
        rows = [r for r in ok if r["config"] == name]
        parts.append(f"{median_s([r.get('leader_lock_ms') for r in rows])} with {name} (ttl {ttl})")
    after = [r["write_unavailable_ms"] - r["leader_lock_ms"] for r in ok
             if r.get("leader_lock_ms") is not None and r.get("write_unavailable_ms") is not None]
    text = ("- **Patroni's write unavailability is its ttl.** The survivor took the leader key after a median of "
            + ", ".join(parts) + " (all modes)")
    if after:
        text += (f"; the writer's next connection found the promoted server a median "
                 f"{statistics.median(after):.0f} ms after that")
    out.append(text + ". The survivor acts only once the dead primary's leader key has expired.")
    deltas = []
    for name, *_ in configs:
        for mode in ("async", "sync"):
            rows = [r for r in ok if r["config"] == name and r["mode"] == mode
                    and r.get("write_unavailable_ms") is not None]
            dead = [r["write_unavailable_ms"] for r in rows if r.get("etcd_leader") == "dead host"]
            other = [r["write_unavailable_ms"] for r in rows if r.get("etcd_leader") not in (None, "dead host")]
            if dead and other:
                deltas.append(statistics.median(dead) - statistics.median(other))
    if deltas:
        out.append(f"- **etcd's leader on the dead host costs more.** Those runs took a median "
                   f"{statistics.median(deltas) / 1000:.1f} s longer than the other runs of the same "
                   "configuration and mode: etcd first elects a new leader, which then renews the dead "
                   "primary's lease by a full ttl. With `defaults` the other runs also vary by up to "
                   "loop_wait (10 s), depending on when the dead primary last renewed its key.")
    a = [r for r in ok if r["mode"] == "async"]
    sy = [r for r in ok if r["mode"] == "sync"]
    if a:
        try:
            inflight = (int(meta["connections"]) * 1000 / float(meta["interval_ms"])
                        * float(meta.get("wan_delay_ms", 0)) / 1000)
        except (KeyError, ValueError):
            inflight = None
        text = (f"- **async loses acknowledged writes:** {sum(1 for r in a if r['lost'])} of {len(a)} runs "
                f"lost some, a median of {statistics.median(r['lost'] for r in a):.0f} per run")
        if inflight:
            text += (f", about what the writer commits during one WAN one-way delay "
                     f"({meta['connections']} connections x {1000 / float(meta['interval_ms']):.0f}/s x "
                     f"{meta['wan_delay_ms']} ms = {inflight:.0f}): the rows committed and acknowledged "
                     "on the primary that were still on their way to the standby")
        out.append(text + ".")
    if sy:
        text = (f"- **sync loses none** ({sum(r['lost'] for r in sy)} in {len(sy)} runs), and pays for it "
                "on every commit, which waits for the standby's flush across the WAN")
        if a:
            text += (f": a median {statistics.median(r['acked'] for r in sy):.0f} acknowledged inserts per "
                     f"run against {statistics.median(r['acked'] for r in a):.0f} with async, at the same "
                     "offered rate")
        out.append(text + ". Its unavailability is the same as async's: the failover path does not change.")
    out.append("")
    return out


def main():
    work, out = sys.argv[1], sys.argv[2]
    meta = read_meta(os.path.join(work, "meta.env"))
    patroni = read_jsonl(os.path.join(work, "patroni.jsonl"))
    tern = read_jsonl(os.path.join(work, "tern.jsonl"))
    ok = [r for r in patroni if not r.get("failed")]
    failed = [r for r in patroni if r.get("failed")]

    configs = []
    for r in ok:
        key = (r["config"], r["ttl"], r["loop_wait"], r["retry_timeout"])
        if key not in configs:
            configs.append(key)
    modes = [m for m in meta.get("modes", "async sync").split() if any(r["mode"] == m for r in ok + tern)]

    L = []
    L += [
        "# Primary host loss: tern vs Patroni",
        "",
        f"Measured by `bench/failover-vs-patroni` on {meta.get('date')} "
        f"({meta.get('cpu_model')}, {meta.get('nproc')} CPUs, {meta.get('memory')}, {meta.get('kernel')}); "
        f"tern at commit `{meta.get('commit')}`. {meta.get('postgres')}; {meta.get('patroni')}; "
        f"{meta.get('etcd')}; psycopg2 {meta.get('psycopg2')}. Load average at start "
        f"{meta.get('loadavg_start')}, at end {meta.get('loadavg_end')} (everything, including other "
        "work on the machine, shares its CPUs).",
        "",
        "The fault: the host of the primary database dies. Its PostgreSQL server (postmaster and "
        "every backend), its failover manager and its region's consensus member are SIGKILLed at one "
        "instant, while "
        f"{meta.get('connections')} client connections each insert one row every "
        f"{meta.get('interval_ms')} ms. **write unavailable** runs from the kill to the first insert "
        "acknowledged after it; **lost** counts inserts whose commit was acknowledged to the client "
        "but which the new primary does not have.",
        "",
        "## Summary",
        "",
        "| system | configuration | mode | runs | write unavailable, median (min to max) "
        "| of which until the survivor held the leader key (median) | acked | lost |",
        "|---|---|---|---:|---|---|---:|---:|",
    ]
    for mode in modes:
        rows = [r for r in tern if r["mode"] == mode]
        if rows:
            L.append(f"| **tern** | product defaults | {mode} | {len(rows)} | "
                     f"**{spread([r['write_unavailable_ms'] for r in rows])}** | | "
                     f"{sum(r['acked'] or 0 for r in rows) if all(r.get('acked') is not None for r in rows) else 'n/a'} | "
                     f"**{sum(r['lost'] for r in rows)}** |")
    for cfg in configs:
        name, ttl, loop, retry = cfg
        for mode in modes:
            rows = [r for r in ok if r["config"] == name and r["mode"] == mode]
            if not rows:
                continue
            L.append(f"| Patroni | {name} (ttl {ttl}, loop_wait {loop}, retry_timeout {retry}) | {mode} | "
                     f"{len(rows)} | {spread([r['write_unavailable_ms'] for r in rows])} | "
                     f"{median_s([r.get('leader_lock_ms') for r in rows])} | "
                     f"{sum(r['acked'] for r in rows):,} | {sum(r['lost'] for r in rows)} |")
    L.append("")
    if tern:
        L.append("tern rows: `tern lab --scenario region-outage --fault reset --product-defaults --db MODE --seed RUN`, "
                 "the lab's own deployment of the same shape (two serving regions 35 ms apart with a "
                 "PostgreSQL server each, a witness region), the product's default settings (lease 5 s, verdict "
                 "after 3 failed probes at 1 s from a majority of vantage points; edge probes every 1 s, "
                 "500 ms timeout, try timeout 2 s) and its own write "
                 "load (payments through the edges and the writer proxies, about 45 writes/s from "
                 "clients in both regions); the fault cuts every path of the primary's region at one "
                 "instant and kills its processes 4 s later. The Patroni rows are this script's.")
        L.append("")
        def med(xs):
            xs = sorted(xs)
            return xs[len(xs) // 2] if xs else None
        L.append("Side by side (medians). The two halves are not one experiment: tern's figures "
                 "come from its lab's own load and fault timing, Patroni's from this script's "
                 "writer and kill, so these are not ratios of one run.")
        L.append("")
        for mode in modes:
            t = med([r["write_unavailable_ms"] for r in tern if r["mode"] == mode])
            for cfg in configs:
                p = med([r["write_unavailable_ms"] for r in ok if r["config"] == cfg[0] and r["mode"] == mode])
                if t and p:
                    L.append(f"- {mode}: tern {t / 1000:.1f} s; Patroni {cfg[0]} {p / 1000:.1f} s.")
        L.append("")
        L += target_verdict(tern)
    elif meta.get("tern_skipped") == "1":
        L.append("tern half: not run in this measurement (`SKIP_TERN=1`).")
    elif meta.get("tern_failed") == "1" or not tern:
        L.append("tern half: not available in this measurement: `tern lab --scenario region-outage "
                 "--db sync|async` gave no report with `write_unavailable_ms` and `lost_acked_writes`.")
    if failed:
        L.append("")
        L.append(f"{len(failed)} Patroni run(s) failed to set up and are not counted: " +
                 ", ".join(f"{r['config']} {r['mode']} run {r['run']}" for r in failed) + ".")
    L.append("")

    L += [
        "## Every run",
        "",
        "| config | mode | run | write_unavailable_ms | acked | lost | leader lock taken (ms after the fault) "
        "| longest gap between acks (ms) | etcd leader at the fault | in-doubt inserts (committed) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in sorted(tern, key=lambda r: (modes.index(r["mode"]) if r["mode"] in modes else 9, r["run"])):
        L.append(f"| tern | {r['mode']} | {r['run']} | {ms(r['write_unavailable_ms'])} | "
                 f"{r['acked'] if r.get('acked') is not None else 'n/a'} | {r['lost']} | | | | |")
    for r in sorted(ok, key=lambda r: ([c[0] for c in configs].index(r["config"]), modes.index(r["mode"]), r["run"])):
        leader = r.get("etcd_leader") or "?"
        L.append(f"| Patroni {r['config']} | {r['mode']} | {r['run']} | {ms(r['write_unavailable_ms'])} | "
                 f"{r['acked']} | {r['lost']} | {ms(r.get('leader_lock_ms'))} | {ms(r['longest_gap_ms'])} | "
                 f"{leader} | {r['in_doubt']} ({r['in_doubt_committed']}) |")
    late = [r for r in ok if r.get("acked_by_dead_server_after_fault")]
    if late:
        L.append("")
        L.append("The dead primary still acknowledged inserts sent after the recorded fault time in "
                 + ", ".join(f"{r['config']} {r['mode']} run {r['run']} ({r['acked_by_dead_server_after_fault']})"
                             for r in late)
                 + ": the kill took effect late there (the machine was busy). Those acks are not "
                 "counted as writes being available again, and they are counted as lost when the "
                 "new primary lacks them.")
    lost_runs = [r for r in ok if r["lost"]]
    lost_runs.sort(key=lambda r: ([c[0] for c in configs].index(r["config"]), modes.index(r["mode"]), r["run"]))
    if lost_runs:
        L.append("")
        L.append("Lost acknowledged rows (ids on the dead primary): " + "; ".join(
            f"{r['config']} {r['mode']} run {r['run']}: {', '.join(str(i) for i in r['lost_ids'][:20])}"
            + (" ..." if len(r["lost_ids"]) > 20 else "") for r in lost_runs) + ".")
    L.append("")

    L += reading(ok, configs, meta)
    L += [
        "## Setup",
        "",
        "Each Patroni run bootstraps a fresh cluster on loopback, so every run starts from the same state:",
        "",
        "- three regions: region 1 on 127.0.11.1 and region 2 on 127.0.12.1 each hold one PostgreSQL 15 "
        "server managed by one Patroni and one etcd member; region 3 on 127.0.13.1 holds only an etcd "
        "member (the witness). Ports are picked free at each start.",
        (f"- the regions are {meta.get('wan_delay_ms')} ms apart one way, as in tern's lab: each region's "
         "processes listen on its 127.0.1X.1, and the other regions reach them through the region's "
         "proxy on 127.0.1X.2 (`bench/failover/wan_proxy.py`), which holds the data "
         f"{meta.get('wan_delay_ms')} ms in each direction. That carries etcd's peer traffic, Patroni's "
         "requests to the other regions' etcd members (`use_proxies: true`, so Patroni keeps to the "
         "listed addresses: its own region's member directly, the others across the WAN), the "
         "replication stream and base backup, and the REST calls between the Patroni nodes. The "
         "proxy is part of its region's host: the fault kills it too, so the dead host's addresses "
         "refuse connections at once. etcd keeps its default heartbeat (100 ms) and election "
         "timeout (1 s)."
         if meta.get("wan_delay_ms", "0") != "0" else
         "- no delay is added between regions (`WAN_DELAY_MS=0`): loopback round trips are well "
         "under a millisecond."),
        "- Patroni uses the etcd v3 API (`etcd3:` with all three members listed), bootstraps node n1 "
        "(initdb), then starts n2, which clones n1 with pg_basebackup and streams from it through a "
        "replication slot. `maximum_lag_on_failover` 1 MiB, `use_pg_rewind` off, watchdog off. "
        "`async`: `synchronous_mode: false` (PostgreSQL's asynchronous streaming replication). "
        "`sync`: `synchronous_mode: true` (Patroni names the replica in `synchronous_standby_names`; "
        "the run starts only once it is the synchronous standby). Not `synchronous_mode_strict`, "
        "so the survivor accepts writes alone after the failover.",
        "- configurations (Patroni's dynamic settings, seconds): `defaults` is ttl 30, loop_wait 10, "
        "retry_timeout 10, Patroni's defaults. `tuned` is ttl 20, loop_wait 1, retry_timeout 3, the "
        "lowest values Patroni's documentation allows (ttl at least 20, loop_wait at least 1, "
        "retry_timeout at least 3, with loop_wait + 2 x retry_timeout <= ttl). `floor10` (not in "
        "the default set; `CONFIGS=floor10`) is ttl 10, loop_wait 1, retry_timeout 4: Debian's "
        "Patroni 3.0.2 runs with it, current releases raise ttl back to 20.",
        f"- the writer (`bench/failover/writer.py run`) runs in region {meta.get('writer_region')}"
        + (" (beside the first primary, where an application that writes to it usually runs; "
           "after the failover it writes across the WAN)" if meta.get("writer_region") == "1" else "")
        + f": {meta.get('connections')} connections, each inserting one row "
        f"every {meta.get('interval_ms')} ms into `payments` with a unique key (autocommit, so the "
        "acknowledgement is the commit). It finds the primary without a proxy, the way Patroni users "
        "commonly do when they do not run HAProxy or a VIP: one libpq connection string listing both "
        "servers as the writer's region reaches them, `host=H1,H2 port=P1,P2 "
        "target_session_attrs=read-write` (libpq tries them in order and keeps the first that "
        "accepts writes), `connect_timeout=1` per host, `statement_timeout` 2 s. A connection that fails is reopened "
        f"after {meta.get('retry_ms')} ms, which bounds the resolution of the unavailability figure. "
        "libpq moves on to the next host only when a connection attempt fails outright (refused or "
        "timed out): a server that accepts and then closes fails the whole attempt, which is why "
        "the dead host's proxy dies with it.",
        "- etcd's leader: where it is when the host dies changes Patroni's time, because a new etcd "
        "leader renews every lease it inherits by a full ttl. "
        + ("With `ETCD_LEADER=rotate` each run places it before Patroni starts (`etcdctl "
           "move-leader`): run 1 on the host that dies, run 2 on the witness, run 3 in the surviving "
           "region, and so on, as if it landed at random over many runs."
           if meta.get("etcd_leader") == "rotate" else
           f"`ETCD_LEADER={meta.get('etcd_leader')}`."),
        f"- the fault comes after {meta.get('warmup')} s of writes; the writer keeps going until "
        f"{meta.get('tail')} s after the first insert acknowledged after the fault, then "
        "`writer.py check` reads the new primary's table through the same connection string and "
        "compares it with every acknowledged key.",
        "",
        "Columns: `leader lock taken` is when the surviving Patroni logged that it took the leader "
        "key (it then promotes its PostgreSQL, and the writer's next connection attempt finds it "
        "writable). The leader key of the dead primary expires `ttl` seconds after its last "
        "renewal, and renewals come every `loop_wait` seconds, so Patroni's part is between "
        "ttl - loop_wait and ttl, plus the time for etcd to elect a new leader when its leader "
        "died with the host (a new etcd leader renews every lease it inherits by a full ttl). "
        "`in-doubt inserts` failed at the client (connection lost before the commit answer); "
        "the number in parentheses is how many of them the new primary has anyway, which is "
        "not a loss. `longest gap` is the longest time between two consecutive acknowledgements "
        "from any connection.",
        "",
        "## How to reproduce",
        "",
        "    bench/failover-vs-patroni",
        "",
        "as root on Debian 12 (PostgreSQL and Patroni run as the `postgres` user). It installs "
        "`patroni`, `etcd-server`, `etcd-client`, `python3-psycopg2`, `python3-etcd`, `curl` and "
        "PostgreSQL 15 with apt-get when missing. Knobs: `RUNS` (3 per configuration and mode), "
        "`CONFIGS` (`defaults tuned`; also `floor10` or `NAME:TTL:LOOP_WAIT:RETRY_TIMEOUT`), "
        "`MODES` (`async sync`), `CONNECTIONS`, `INTERVAL_MS`, `RETRY_MS`, `WARMUP`, `TAIL`, "
        "`WAN_DELAY_MS` (35), `WRITER_REGION` (1), `ETCD_LEADER` (`rotate`; `dead`, `witness`, "
        "`survivor`, `any`), `SKIP_TERN=1`, `SKIP_PATRONI=1`, `RESULTS`, `KEEP_DIR=1`. About 12 "
        "minutes with the defaults on 2 CPUs, plus the tern half.",
        "",
        f"This measurement: `RUNS={meta.get('runs')} CONFIGS=\"{meta.get('configs')}\" "
        f"MODES=\"{meta.get('modes')}\" WAN_DELAY_MS={meta.get('wan_delay_ms')} "
        f"WRITER_REGION={meta.get('writer_region')} ETCD_LEADER={meta.get('etcd_leader')}`"
        + (" `SKIP_TERN=1`" if meta.get("tern_skipped") == "1" else "") + ".",
        "",
    ]
    with open(out, "w") as f:
        f.write("\n".join(L))


if __name__ == "__main__":
    main()
