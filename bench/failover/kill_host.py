#!/usr/bin/env python3
"""Kills every process of one simulated host at the same instant, as a power loss would.

  kill_host.py --pid PID [--pid PID ...] [--postmaster-pidfile FILE ...]

Each --pid is killed with its descendants; each PostgreSQL data directory's postmaster.pid
names a postmaster that is killed with its whole process group (the postmaster runs in a
session of its own, detached from the process that started it, and its children share its
group). Targets are collected first, then SIGKILLed in one tight loop, the database's
processes first. The loop runs at a real-time scheduling priority when it may (root): on a
busy machine an ordinary process can be preempted between two kills, and the processes not
yet killed would go on serving for a moment after the recorded fault time. Prints the fault
time (seconds since the epoch, taken just before the first signal) and the number of
processes signalled.
"""
import argparse
import os
import signal
import time


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = stat[stat.rindex(")") + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def descendants(pid, kids):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, action="append", default=[])
    p.add_argument("--postmaster-pidfile", action="append", default=[])
    args = p.parse_args()

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
    except (OSError, AttributeError):
        pass
    kids = children_map()
    targets, groups = [], []
    own_group = os.getpgid(0)
    for path in args.postmaster_pidfile:
        try:
            with open(path) as f:
                pm = int(f.readline().strip())
        except (OSError, ValueError):
            continue
        targets.extend(descendants(pm, kids))
        try:
            g = os.getpgid(pm)
            if g > 1 and g != own_group:
                groups.append(g)
        except ProcessLookupError:
            pass
    for pid in args.pid:
        targets.extend(descendants(pid, kids))
    targets = list(dict.fromkeys(t for t in targets if t > 1 and t != os.getpid()))

    fault_at = time.time()
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for t in targets:
        try:
            os.kill(t, signal.SIGKILL)
        except ProcessLookupError:
            pass
    print(f"{fault_at:.6f} {len(targets)}")


if __name__ == "__main__":
    main()
