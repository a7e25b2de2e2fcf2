#!/usr/bin/env python3
"""Write load for failover benchmarks, and the check of what survived.

  writer.py run   --hosts H:P[,H:P...] --log FILE [--connections 4] [--interval-ms 20]
                  [--duration S] [--create-table]
  writer.py wait  --log FILE --after EPOCH [--timeout S]
  writer.py check --hosts H:P[,H:P...] --log FILE [--fault-at EPOCH]

`run` opens N connections, each inserting one row with a unique key into `payments` at a
fixed rate, and appends one JSON line per event to the log:

  {"ev": "ack",  "conn": 0, "key": "...", "id": 42, "node": "...", "server": "127.0.11.1:5432",
   "sent": 1764230000.123, "t": 1764230000.125}
  {"ev": "fail", "conn": 0, "phase": "connect" | "insert", "key": "..." (insert only),
   "t": ..., "error": "..."}

An "ack" is an INSERT whose commit returned success to the client (autocommit). A failed
insert is "in doubt": it may or may not have committed. A connection that fails is closed and
reopened after --retry-ms. The writer finds the primary the way a client without a proxy
does: one libpq connection string listing every host, `target_session_attrs=read-write`
(libpq tries the hosts in order and keeps the first that accepts writes), connect timeout
1 s per host, statement timeout 2 s. It stops on SIGTERM or SIGINT, or after --duration.

`wait` returns (exit 0) as soon as the log holds an ack of an insert sent after EPOCH, or
exits 1 after --timeout seconds.

`check` reads the log, connects to the current primary with the same connection string
and prints one JSON object: how many writes were acknowledged, which acknowledged keys the
primary no longer has (lost, lost_ids), the write unavailability after --fault-at (from the
fault to the first ack of an insert sent after it), and the longest gap between consecutive
acks.

Times are seconds since the epoch (time.time()), so another process on the same machine
can record the fault time on the same clock.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time

TABLE_DDL = """
CREATE TABLE IF NOT EXISTS payments (
    id bigserial PRIMARY KEY,
    key text UNIQUE NOT NULL,
    amount bigint NOT NULL,
    node text NOT NULL DEFAULT current_setting('cluster_name'),
    written_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

INSERT = (
    "INSERT INTO payments (key, amount) VALUES (%s, %s) "
    "RETURNING id, node, host(inet_server_addr()) || ':' || inet_server_port()"
)


def import_driver():
    try:
        import psycopg2  # noqa: F401
        import psycopg2.extensions  # noqa: F401
    except ImportError:
        sys.exit("writer.py needs psycopg2 (Debian: python3-psycopg2, run with /usr/bin/python3)")
    return sys.modules["psycopg2"]


def conninfo(args, statement_timeout_ms=None):
    hosts, ports = [], []
    for hp in args.hosts.split(","):
        host, _, port = hp.strip().rpartition(":")
        if not host:
            sys.exit(f"--hosts wants host:port, found {hp!r}")
        hosts.append(host)
        ports.append(port)
    parts = [
        f"host={','.join(hosts)}",
        f"port={','.join(ports)}",
        f"dbname={args.dbname}",
        f"user={args.user}",
        "target_session_attrs=read-write",
        f"connect_timeout={args.connect_timeout}",
        # Give up on a peer that stops answering instead of hanging on it.
        "keepalives=1",
        "keepalives_idle=1",
        "keepalives_interval=1",
        "keepalives_count=2",
        "tcp_user_timeout=3000",
        f"application_name={args.application_name}",
    ]
    if statement_timeout_ms is not None:
        parts.append(f"options='-c statement_timeout={statement_timeout_ms}'")
    return " ".join(parts)


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()

    def write(self, record):
        line = json.dumps(record, separators=(",", ":"))
        with self.lock:
            self.f.write(line + "\n")

    def close(self):
        with self.lock:
            self.f.close()


def short(err):
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def create_table(pg, args, stop):
    deadline = time.time() + args.setup_timeout
    while not stop.is_set():
        try:
            conn = pg.connect(conninfo(args, args.statement_timeout_ms))
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(TABLE_DDL)
            conn.close()
            return
        except pg.Error as e:
            if time.time() > deadline:
                sys.exit(f"could not create the table: {short(e)}")
            time.sleep(0.2)


def worker(pg, args, index, prefix, log, stop):
    interval = args.interval_ms / 1000.0
    retry = args.retry_ms / 1000.0
    dsn = conninfo(args, args.statement_timeout_ms)
    conn = None
    seq = 0
    # Spread the connections over one interval so their inserts do not line up.
    next_at = time.time() + interval * index / max(args.connections, 1)
    while not stop.is_set():
        if conn is None:
            try:
                conn = pg.connect(dsn)
                conn.autocommit = True
            except pg.Error as e:
                log.write({"ev": "fail", "conn": index, "phase": "connect",
                           "t": time.time(), "error": short(e)})
                conn = None
                stop.wait(retry)
                next_at = time.time()
                continue
        now = time.time()
        if next_at > now:
            if stop.wait(next_at - now):
                break
        # Fixed rate: a late insert does not cause a burst of catch-up inserts.
        next_at = max(next_at + interval, time.time())
        seq += 1
        key = f"{prefix}-{index}-{seq}"
        sent = time.time()
        try:
            del conn.notices[:]
            with conn.cursor() as cur:
                cur.execute(INSERT, (key, seq))
                row_id, node, server = cur.fetchone()
            t = time.time()
            rec = {"ev": "ack", "conn": index, "key": key, "id": row_id, "node": node,
                   "server": server, "sent": sent, "t": t}
            # A cancelled wait for a synchronous standby still reports success; keep the
            # warning so the check can tell such acks apart.
            if any("synchronous replication" in n for n in conn.notices):
                rec["unreplicated"] = True
            log.write(rec)
        except pg.Error as e:
            log.write({"ev": "fail", "conn": index, "phase": "insert", "key": key,
                       "t": time.time(), "error": short(e)})
            try:
                conn.close()
            except pg.Error:
                pass
            conn = None
            stop.wait(retry)
    if conn is not None:
        try:
            conn.close()
        except pg.Error:
            pass


def cmd_run(args):
    pg = import_driver()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.create_table:
        create_table(pg, args, stop)
    prefix = args.key_prefix or f"w{os.getpid()}x{int(time.time() * 1000) % 10**9}"
    log = Log(args.log)
    log.write({"ev": "start", "t": time.time(), "connections": args.connections,
               "interval_ms": args.interval_ms, "prefix": prefix,
               "conninfo": conninfo(args, args.statement_timeout_ms)})
    threads = [threading.Thread(target=worker, args=(pg, args, i, prefix, log, stop), daemon=True)
               for i in range(args.connections)]
    for th in threads:
        th.start()
    deadline = time.time() + args.duration if args.duration else None
    while not stop.is_set():
        if deadline is not None and time.time() >= deadline:
            stop.set()
            break
        stop.wait(0.2)
    for th in threads:
        # A worker can be inside a connect or a statement: both are bounded by the timeouts.
        th.join(args.connect_timeout * 4 + args.statement_timeout_ms / 1000 + 2)
    log.write({"ev": "stop", "t": time.time()})
    log.close()


def read_log(path):
    events = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                # The last line can be cut if the writer was killed while writing it.
                continue
    return events


def cmd_wait(args):
    deadline = time.time() + args.timeout
    pos = 0
    buf = ""
    while time.time() < deadline:
        try:
            with open(args.log) as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
        except FileNotFoundError:
            chunk = ""
        buf += chunk
        lines = buf.split("\n")
        buf = lines.pop()
        for line in lines:
            if '"ev":"ack"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec["sent"] > args.after:
                print(f"{(rec['t'] - args.after) * 1000:.0f}")
                return 0
        time.sleep(0.05)
    return 1


def cmd_check(args):
    pg = import_driver()
    events = read_log(args.log)
    acks = [e for e in events if e.get("ev") == "ack"]
    fails = [e for e in events if e.get("ev") == "fail"]
    in_doubt = {e["key"] for e in fails if e.get("phase") == "insert"}

    present = {}
    primary = None
    deadline = time.time() + args.connect_deadline
    while True:
        try:
            conn = pg.connect(conninfo(args, 60000))
            with conn.cursor() as cur:
                cur.execute("SELECT host(inet_server_addr()) || ':' || inet_server_port()")
                primary = cur.fetchone()[0]
                cur.execute("SELECT key, id FROM payments")
                present = dict(cur.fetchall())
            conn.close()
            break
        except pg.Error as e:
            if time.time() > deadline:
                sys.exit(f"check: no primary to read from: {short(e)}")
            time.sleep(0.5)

    lost = [a for a in acks if a["key"] not in present]
    lost.sort(key=lambda a: a["id"])
    ack_times = sorted(a["t"] for a in acks)
    gap_ms, gap_from = 0.0, None
    for a, b in zip(ack_times, ack_times[1:]):
        if (b - a) * 1000 > gap_ms:
            gap_ms, gap_from = (b - a) * 1000, a
    by_server = {}
    for a in acks:
        by_server[a["server"]] = by_server.get(a["server"], 0) + 1

    out = {
        "primary": primary,
        "acked": len(acks),
        "lost": len(lost),
        "lost_ids": [a["id"] for a in lost],
        "lost_keys": [a["key"] for a in lost][:100],
        "rows_on_primary": len(present),
        "failures": len(fails),
        "in_doubt": len(in_doubt),
        "in_doubt_committed": sum(1 for k in in_doubt if k in present),
        "unreplicated_acks": sum(1 for a in acks if a.get("unreplicated")),
        "acked_by_server": by_server,
        "longest_gap_ms": round(gap_ms, 1),
        "longest_gap_from": gap_from,
    }
    if args.fault_at is not None:
        f = args.fault_at
        before = [a for a in acks if a["t"] <= f]
        # Inserts sent after the fault: one sent just before it can still be answered a moment
        # after the kill signal (the kill and the answer race), which says nothing about
        # whether writes are available.
        after = sorted((a for a in acks if a["sent"] > f and a["server"] != args.dead_server),
                       key=lambda a: a["t"])
        if args.dead_server:
            # Should be 0: the dead server answering an insert sent after the fault means the
            # fault did not take effect at the recorded time.
            out["acked_by_dead_server_after_fault"] = sum(
                1 for a in acks if a["sent"] > f and a["server"] == args.dead_server)
        out["fault_at"] = f
        out["acked_before_fault"] = len(before)
        out["acked_after_fault"] = sum(1 for a in acks if a["t"] > f)
        out["last_ack_before_fault_ms"] = round((f - max(a["t"] for a in before)) * 1000, 1) if before else None
        out["lost_acked_before_fault"] = sum(1 for a in lost if a["t"] <= f)
        if after:
            out["write_unavailable_ms"] = round((after[0]["t"] - f) * 1000, 1)
            out["first_ack_after_fault_server"] = after[0]["server"]
        else:
            out["write_unavailable_ms"] = None
            out["first_ack_after_fault_server"] = None
    json.dump(out, sys.stdout, indent=None if args.compact else 2)
    sys.stdout.write("\n")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def conn_opts(sp):
        sp.add_argument("--hosts", required=True,
                        help="host:port list, comma separated; libpq tries them in order")
        sp.add_argument("--dbname", default="postgres")
        sp.add_argument("--user", default="postgres")
        sp.add_argument("--connect-timeout", type=int, default=1, help="seconds, per host")
        sp.add_argument("--application-name", default="tern-bench-writer")
        sp.add_argument("--log", required=True, help="JSON lines file")

    r = sub.add_parser("run", help="write until stopped")
    conn_opts(r)
    r.add_argument("--connections", type=int, default=4)
    r.add_argument("--interval-ms", type=float, default=20, help="between inserts of one connection")
    r.add_argument("--retry-ms", type=float, default=100, help="pause after a failure")
    r.add_argument("--statement-timeout-ms", type=int, default=2000)
    r.add_argument("--duration", type=float, default=0, help="seconds; 0 = until a signal")
    r.add_argument("--create-table", action="store_true", help="CREATE TABLE IF NOT EXISTS first")
    r.add_argument("--setup-timeout", type=float, default=30)
    r.add_argument("--key-prefix", default="")

    w = sub.add_parser("wait", help="wait for an ack after a moment")
    w.add_argument("--log", required=True)
    w.add_argument("--after", type=float, required=True, help="epoch seconds")
    w.add_argument("--timeout", type=float, default=120)

    c = sub.add_parser("check", help="compare the acks with the primary's table")
    conn_opts(c)
    c.add_argument("--fault-at", type=float, default=None, help="epoch seconds")
    c.add_argument("--dead-server", default=None,
                   help="host:port of the server the fault killed (as inet_server_addr() sees it); "
                        "its acks do not count as writes being available again")
    c.add_argument("--connect-deadline", type=float, default=30)
    c.add_argument("--compact", action="store_true")

    args = p.parse_args()
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "wait":
        return cmd_wait(args)
    return cmd_check(args)


if __name__ == "__main__":
    sys.exit(main() or 0)
