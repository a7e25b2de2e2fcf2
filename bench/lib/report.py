#!/usr/bin/env python3
"""Writes the edge-vs-haproxy results file from a run directory.

Usage: report.py RUN_DIR OUTPUT.md

RUN_DIR holds meta.env (KEY=VALUE lines), round-N-TOOL.wrk (wrk output), round-N-TOOL.cpu
(CPU seconds the proxy used during that round), the same as tls-round-N-TOOL.* for the HTTPS
rounds, mem-TOOL.json (from idle_conns.py), edge.log (tern's stderr), edge.toml, haproxy.cfg
and, when a results file was replaced, previous.md. Numbers are medians over rounds; ratios
are tern / HAProxy.
"""
import glob
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from parse_wrk import parse  # noqa: E402

TOOLS = ("tern", "haproxy")
NAMES = {"tern": "tern edge", "haproxy": "HAProxy"}
# Within this band a ratio counts as a tie.
TIE = 0.05


def read_meta(path):
    meta = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    return meta


def load_rounds(run, prefix="round"):
    rounds = {t: [] for t in TOOLS}
    for path in sorted(glob.glob(os.path.join(run, f"{prefix}-*-*.wrk")),
                       key=lambda p: int(re.search(r"round-(\d+)-", p).group(1))):
        n, tool = re.search(r"round-(\d+)-(\w+)\.wrk$", path).groups()
        with open(path) as f:
            r = parse(f.read())
        r["round"] = int(n)
        cpu_path = path[:-4] + ".cpu"
        if os.path.exists(cpu_path):
            with open(cpu_path) as f:
                cpu_s = float(f.read().strip())
            r["cpu_us_per_req"] = cpu_s * 1e6 / r["requests"] if r["requests"] else None
        rounds[tool].append(r)
    return rounds


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def errors_of(r):
    se = r["socket_errors"]
    return r["non_2xx_3xx"] + sum(se.values())


def main():
    run, out = sys.argv[1], sys.argv[2]
    meta = read_meta(os.path.join(run, "meta.env"))
    rounds = load_rounds(run)
    mem = {}
    for t in TOOLS:
        p = os.path.join(run, f"mem-{t}.json")
        if os.path.exists(p):
            with open(p) as f:
                mem[t] = json.load(f)

    s = {t: {k: med(rounds[t], k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
         for t in TOOLS}
    tls_rounds = load_rounds(run, "tls-round")
    tls = {t: {k: med(tls_rounds[t], k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
           for t in TOOLS}
    t_rps = ratio(tls["tern"]["rps"], tls["haproxy"]["rps"])
    t_p50 = ratio(tls["tern"]["p50_ms"], tls["haproxy"]["p50_ms"])
    t_p99 = ratio(tls["tern"]["p99_ms"], tls["haproxy"]["p99_ms"])
    t_cpu = ratio(tls["tern"]["cpu_us_per_req"], tls["haproxy"]["cpu_us_per_req"])
    same_suite = bool(meta.get("tls_tern")) and meta.get("tls_tern") == meta.get("tls_haproxy")
    # The plain-HTTP throughput ratio of the file this run replaces.
    previous = None
    prev_path = os.path.join(run, "previous.md")
    if os.path.exists(prev_path):
        with open(prev_path) as f:
            text = f.read()
        m = re.search(r"\| \*\*tern / HAProxy\*\* \| \*\*([0-9.]+)x\*\*", text)
        c = re.search(r"tern at commit `([^`]+)`", text)
        if m:
            previous = (float(m.group(1)), c.group(1) if c else "?")
    r_rps = ratio(s["tern"]["rps"], s["haproxy"]["rps"])
    r_p50 = ratio(s["tern"]["p50_ms"], s["haproxy"]["p50_ms"])
    r_p99 = ratio(s["tern"]["p99_ms"], s["haproxy"]["p99_ms"])
    r_cpu = ratio(s["tern"]["cpu_us_per_req"], s["haproxy"]["cpu_us_per_req"])
    kib = {t: mem[t].get("kib_per_conn") for t in mem}
    r_mem = ratio(kib.get("tern"), kib.get("haproxy"))
    errs = {t: sum(errors_of(r) for r in rounds[t]) + sum(errors_of(r) for r in tls_rounds[t])
            for t in TOOLS}

    # The verdict: anything where tern is more than TIE worse than HAProxy is a shortfall.
    short, ahead = [], []
    if r_rps is not None:
        (short if r_rps < 1 - TIE else ahead if r_rps > 1 + TIE else []).append(
            f"throughput {r_rps:.2f}x")
    if r_p99 is not None:
        (short if r_p99 > 1 + TIE else ahead if r_p99 < 1 - TIE else []).append(
            f"p99 latency {r_p99:.2f}x")
    if t_rps is not None:
        (short if t_rps < 1 - TIE else ahead if t_rps > 1 + TIE else []).append(
            f"HTTPS throughput {t_rps:.2f}x")
    if tls_rounds["tern"] and not same_suite:
        short.append("the two proxies negotiated different TLS parameters (see HTTPS)")
    if previous is not None and r_rps is not None and r_rps < previous[0] * (1 - TIE):
        short.append(f"plain-HTTP throughput ratio down from {previous[0]:.2f}x "
                     f"(commit {previous[1]}) to {r_rps:.2f}x")
    if r_mem is not None:
        (short if r_mem > 1 + TIE else ahead if r_mem < 1 - TIE else []).append(
            f"memory per idle connection {r_mem:.2f}x")
    if "tern" not in mem or "error" in mem.get("tern", {}):
        short.append("could not hold the idle connections (see Memory)")
    if errs["tern"]:
        short.append(f"{errs['tern']} failed requests or socket errors under load")
    if short:
        verdict = ("**tern falls short of HAProxy** on this machine: " + "; ".join(short)
                   + " (ratios are tern / HAProxy)"
                   + (f"; better on {', '.join(ahead)}." if ahead else "."))
    elif ahead:
        verdict = ("tern matches or beats HAProxy on every measure here; better on "
                   + ", ".join(ahead) + " (ratios are tern / HAProxy).")
    else:
        verdict = f"tern is on par with HAProxy (every ratio within {TIE:.0%})."

    L = []
    L.append("# tern edge vs HAProxy: HTTP/1.1 proxying on loopback, plain and over HTTPS\n")
    L.append(f"Generated by `bench/edge-vs-haproxy` on {meta['date']}. "
             f"tern at commit `{meta['git_rev']}`.\n")
    L.append("## Machine\n")
    for k, label in (("nproc", "CPUs (nproc)"), ("cpu", "CPU model"), ("mem", "Memory"),
                     ("kernel", "Kernel"), ("haproxy", "HAProxy"), ("wrk", "wrk"),
                     ("rustc", "rustc"), ("nofile", "Open-file limit (ulimit -n)"),
                     ("loadavg", "Load average (1/5/15 min)"),
                     ("other_cpu", "CPU used by processes other than the benchmark's during "
                                   "the load rounds (other work skews results)")):
        note = f" ({meta[k + '_note']})" if meta.get(k + "_note") else ""
        L.append(f"- {label}: {meta.get(k, '?')}{note}")
    L.append("")
    L.append("## Setup\n")
    L.append(f"- One backend shared by both proxies: `tern sample-service` on "
             f"{meta['backend']}, `GET /` returns a small JSON body.")
    L.append(f"- tern edge on {meta['tern_addr']} (`TERN_LOG=warn`, one worker thread "
             f"per CPU, each with its own current-thread runtime, listener and upstream pool), policy `failover`, one backend, HTTP health "
             f"check `/health` every 1s, timeout 500ms, fall 3, rise 3. Configuration below.")
    L.append(f"- HAProxy on {meta['haproxy_addr']}: `mode http`, `option http-keep-alive`, "
             f"`nbthread {meta['nbthread']}`, `option httpchk GET /health`, "
             f"`check inter 1s fall 3 rise 3`, timeouts connect 2s / server 10s / client 30s "
             f"/ check 500ms, `option forwardfor` and `X-Forwarded-Proto` (tern adds both), "
             f"no logging. Configuration below.")
    with open(os.path.join(run, "haproxy.cfg")) as f:
        if "no strict-limits" in f.read():
            L.append(f"- HAProxy runs with `no strict-limits`: the open-file limit "
                     f"({meta['nofile']}) is below the two descriptors per `maxconn` it asks "
                     f"for, though above what the idle-connection test needs.")
    L.append("- Load, the proxies and the backend all share this machine's CPUs; nothing is "
             "pinned. Both proxies are loaded by the same wrk with the same settings, "
             "alternating within one run.")
    L.append(f"- Load command (ADDR is each proxy's address): `{meta['wrk_cmd']}`")
    L.append(f"- Warm-up: `{meta['warmup_cmd']}` against each proxy, discarded. Then "
             f"{meta['rounds']} rounds, each tern then HAProxy, {meta['pause']}s pause "
             f"between runs.\n")

    L.append("## Results (median over rounds)\n")
    L.append("| | requests/s | p50 | p99 | proxy CPU per request |")
    L.append("|---|---:|---:|---:|---:|")
    for t in TOOLS:
        L.append(f"| {NAMES[t]} | {fmt(s[t]['rps'], '.0f')} | {fmt(s[t]['p50_ms'])} ms | "
                 f"{fmt(s[t]['p99_ms'])} ms | {fmt(s[t]['cpu_us_per_req'], '.1f')} µs |")
    L.append(f"| **tern / HAProxy** | **{fmt(r_rps)}x** | **{fmt(r_p50)}x** | "
             f"**{fmt(r_p99)}x** | **{fmt(r_cpu)}x** |")
    L.append("")
    L.append("Throughput ratio above 1 favours tern; latency and CPU ratios below 1 favour "
             "tern. Proxy CPU per request is the user+system CPU time of the proxy's own "
             "process(es) during the round divided by the requests wrk completed.\n")

    if previous is not None:
        change = (f"not worse: within the {TIE:.0%} tie band or better"
                  if r_rps is None or r_rps >= previous[0] * (1 - TIE)
                  else f"worse by more than the {TIE:.0%} tie band")
        L.append(f"Plain-HTTP throughput ratio in the results file this run replaced (tern at "
                 f"commit `{previous[1]}`): {previous[0]:.2f}x; this run: {fmt(r_rps)}x "
                 f"({change}). The two runs are different days on a shared machine.\n")

    if tls_rounds["tern"] or tls_rounds["haproxy"]:
        L.append("## HTTPS (median over rounds)\n")
        L.append(f"TLS terminated by each proxy with the same certificate (ECDSA P-256, made "
                 f"by `openssl req` for the run), HTTP/1.1 with keep-alive to the proxy and "
                 f"plain HTTP to the same backend. Load command: `{meta.get('wrk_tls_cmd')}` "
                 f"(wrk's OpenSSL client; each connection does one handshake, then keeps "
                 f"sending). tern (rustls, ring provider) chose the suite; HAProxy "
                 f"(OpenSSL) was configured with `ssl-min-ver TLSv1.3` and that suite alone.\n")
        L.append(f"- Negotiated with tern: {meta.get('tls_tern', '?')}")
        L.append(f"- Negotiated with HAProxy: {meta.get('tls_haproxy', '?')}")
        L.append(f"- Same TLS version and cipher suite: {'yes' if same_suite else 'NO'}\n")
        L.append("| | requests/s | p50 | p99 | proxy CPU per request |")
        L.append("|---|---:|---:|---:|---:|")
        for t in TOOLS:
            L.append(f"| {NAMES[t]} | {fmt(tls[t]['rps'], '.0f')} | {fmt(tls[t]['p50_ms'])} ms | "
                     f"{fmt(tls[t]['p99_ms'])} ms | {fmt(tls[t]['cpu_us_per_req'], '.1f')} µs |")
        L.append(f"| **tern / HAProxy over HTTPS** | **{fmt(t_rps)}x** | **{fmt(t_p50)}x** | "
                 f"**{fmt(t_p99)}x** | **{fmt(t_cpu)}x** |")
        L.append("")

    L.append("### Every round\n")
    L.append("| round | proxy | requests/s | p50 | p75 | p90 | p99 | requests | "
             "non-2xx/3xx | socket errors (connect/read/write/timeout) | CPU per request |")
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    allrows = sorted([(r["round"], TOOLS.index(t), 0, t, r) for t in TOOLS for r in rounds[t]]
                     + [(r["round"], TOOLS.index(t), 1, t, r) for t in TOOLS
                        for r in tls_rounds[t]])
    for n, _, is_tls, t, r in allrows:
        se = r["socket_errors"]
        name = NAMES[t] + (" (HTTPS)" if is_tls else "")
        L.append(f"| {n} | {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} ms | "
                 f"{r['p75_ms']:.2f} ms | {r['p90_ms']:.2f} ms | {r['p99_ms']:.2f} ms | "
                 f"{r['requests']} | {r['non_2xx_3xx']} | "
                 f"{se['connect']}/{se['read']}/{se['write']}/{se['timeout']} | "
                 f"{fmt(r.get('cpu_us_per_req'), '.1f')} µs |")
    L.append("")

    L.append("## Memory per idle connection\n")
    L.append(f"Each proxy in turn (after the load rounds): its RSS (`VmRSS`, summed over all "
             f"its processes) is read, then {meta['idle_count']} TCP connections are opened "
             f"from 127.0.6.x, each sends one complete `GET / HTTP/1.1` request, reads the "
             f"whole response and stays open (idle keep-alive), at most {meta['idle_batch']} "
             f"requests in flight at once. After {meta['idle_settle']}s RSS is read again. "
             f"KiB per connection = RSS delta / connections.\n")
    L.append("| | RSS before | RSS after | delta | KiB per idle connection | "
             "responses | still open at the end | proxy fds before / after |")
    L.append("|---|---:|---:|---:|---:|---|---:|---|")
    for t in TOOLS:
        m = mem.get(t)
        if m is None:
            L.append(f"| {NAMES[t]} | not measured | | | | | | |")
        elif "error" in m:
            L.append(f"| {NAMES[t]} | failed after {m['opened']} connections: "
                     f"{m['error']} | | | | {m.get('statuses')} | | |")
        else:
            st = ", ".join(f"{k}: {v}" for k, v in sorted(m["statuses"].items()))
            L.append(f"| {NAMES[t]} | {m['rss_before_kib']} KiB | {m['rss_after_kib']} KiB | "
                     f"{m['rss_delta_kib']} KiB | {m['kib_per_conn']:.2f} | {st} | "
                     f"{m['still_open']} / {m['count']} | {m['fds_before']} / "
                     f"{m['fds_after']} |")
    L.append(f"| **tern / HAProxy** | | | | **{fmt(r_mem)}x** | | | |")
    L.append("")
    L.append("A ratio below 1 favours tern. The RSS delta includes any upstream connections "
             "the proxy opened to serve the requests (the file-descriptor columns show how many "
             "beyond the idle client connections). Both close idle client connections after 30s "
             "(tern's `client_timeout` default, HAProxy's `timeout client`), which is longer than "
             "this measurement takes.\n")

    L.append("## Errors\n")
    any_err = False
    for t in TOOLS:
        if errs[t]:
            any_err = True
            L.append(f"- {NAMES[t]}: {errs[t]} non-2xx/3xx responses or socket errors over "
                     f"all rounds (see the per-round table).")
    log = os.path.join(run, "edge.log")
    if os.path.exists(log):
        with open(log, errors="replace") as f:
            lines = f.read().splitlines()
        flagged = [l for l in lines if re.search(r"\b(WARN|ERROR)\b|panic", l)]
        if flagged:
            any_err = True
            L.append(f"- tern edge log: {len(flagged)} WARN/ERROR/panic lines; the first ones:")
            L.append("")
            L.append("```")
            L.extend(l[:300] for l in flagged[:20])
            L.append("```")
    if meta.get("tern_exit"):
        any_err = True
        L.append(f"- tern edge exited during the run: {meta['tern_exit']}")
    if not any_err:
        L.append("None: every wrk request got a 2xx/3xx, no socket errors, and the tern edge "
                 "logged no warnings or errors.")
    L.append("")

    L.append("## Analysis\n")
    L.append(f"Automatic verdict: {verdict}\n")
    # The explanation is kept beside the script so that a new run keeps it.
    analysis = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "analysis", "edge-vs-haproxy.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            L.append(f.read().rstrip() + "\n")
    else:
        L.append("_No analysis written yet (bench/analysis/edge-vs-haproxy.md)._\n")

    L.append("## Configurations\n")
    for name, title in (("edge.toml", "tern edge"), ("haproxy.cfg", "HAProxy")):
        with open(os.path.join(run, name)) as f:
            L.append(f"{title} (`{name}`):\n")
            L.append("```")
            L.append(f.read().rstrip())
            L.append("```\n")

    with open(out, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")
    print(verdict)


if __name__ == "__main__":
    main()
