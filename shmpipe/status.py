"""``shmpipe status``: attach to running pipelines and print their process tables."""

from __future__ import annotations

import mmap
import os
import time

import numpy as np

from shmpipe.ring import (
    N_COLUMNS,
    P_BUSY_NS,
    P_BYTES,
    P_COLUMNS,
    P_ERRORS,
    P_FRAMES,
    P_MSG_ID,
    P_PID,
    P_RESTARTS,
    P_STARTED_NS,
    P_STATE,
    PROC_FIRST_WORKER,
    PROC_STATE_NAMES,
    STATE,
    STATE_NAMES,
)
from shmpipe.runs import live_runs


def attach_tables(info: dict) -> tuple[np.ndarray, np.ndarray, mmap.mmap]:
    """Map a running supervisor's tables read-only through /proc/<pid>/fd (same user only)."""
    fd = os.open(f"/proc/{info['pid']}/fd/{info['tables_fd']}", os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    finally:
        os.close(fd)
    slots, procs = info["slots"], info["processes"]
    table = np.ndarray((slots, N_COLUMNS), "<i8", buffer=m)
    ptable = np.ndarray((procs, P_COLUMNS), "<i8", buffer=m, offset=slots * N_COLUMNS * 8)
    return table, ptable, m


def role_name(i: int) -> str:
    return ("dispatcher", "publisher")[i] if i < PROC_FIRST_WORKER else f"worker {i - 2}"


def process_rows(ptable: np.ndarray) -> list[dict]:
    import psutil

    rows = []
    now = time.monotonic_ns()
    for i, r in enumerate(ptable):
        pid = int(r[P_PID])
        cpu = rss = None
        if pid > 0:
            try:
                ps = psutil.Process(pid)
                cpu = ps.cpu_percent(interval=None)
                rss = ps.memory_info().rss
            except psutil.Error:
                pass
        alive_ns = max(1, now - int(r[P_STARTED_NS])) if r[P_STARTED_NS] else 1
        rows.append(
            {
                "role": role_name(i),
                "pid": pid,
                "state": PROC_STATE_NAMES[int(r[P_STATE])] if 0 <= r[P_STATE] < 5 else "?",
                "frames": int(r[P_FRAMES]),
                "bytes": int(r[P_BYTES]),
                "errors": int(r[P_ERRORS]),
                "busy_pct": 100.0 * int(r[P_BUSY_NS]) / alive_ns,
                "cpu_pct": cpu,
                "rss": rss,
                "message": int(r[P_MSG_ID]),
                "restarts": int(r[P_RESTARTS]),
            }
        )
    return rows


def print_status(name: str | None) -> int:
    runs = [r for r in live_runs() if name is None or r["name"] == name]
    if not runs:
        print(f"no running pipeline{' named ' + repr(name) if name else ''} on this machine")
        return 1
    for info in runs:
        try:
            table, ptable, m = attach_tables(info)
        except OSError as exc:
            print(f"{info['name']} (pid {info['pid']}): cannot attach: {exc}")
            continue
        states = np.bincount(table[:, STATE], minlength=len(STATE_NAMES))
        occupancy = ", ".join(f"{STATE_NAMES[i]} {n}" for i, n in enumerate(states) if n)
        print(
            f"{info['name']}  pid {info['pid']}  chain {' -> '.join(info['chain'])}  "
            f"ring: {occupancy}"
        )
        print(
            f"  {'role':11s} {'pid':>7s} {'state':9s} {'frames':>8s} {'busy%':>6s} "
            f"{'cpu%':>6s} {'rss MiB':>8s} {'message':>8s}"
        )
        for r in process_rows(ptable):
            cpu = f"{r['cpu_pct']:.0f}" if r["cpu_pct"] is not None else "-"
            rss = f"{r['rss'] / 2**20:.0f}" if r["rss"] is not None else "-"
            print(
                f"  {r['role']:11s} {r['pid']:7d} {r['state']:9s} {r['frames']:8d} "
                f"{r['busy_pct']:6.1f} {cpu:>6s} {rss:>8s} {r['message']:8d}"
            )
        del table, ptable
        m.close()
    return 0
