"""``shmpipe status``: attach to running pipelines and print their process tables.

A running supervisor describes itself in the run registry (``shmpipe.runs``), including the
number of its tables' memfd. Any process of the same user can map that memory read-only through
``/proc/<pid>/fd/<n>`` and read the live figures with no cooperation from the pipeline.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import psutil

from shmpipe.observe.runs import live_runs
from shmpipe.observe.snapshot import (
    read_processes,
    ring_holders,
    ring_occupancy,
    stalled_seconds,
)
from shmpipe.shm.layout import (
    MAX_STREAMS,
    N_COLUMNS,
    P_COLUMNS,
    STREAM_WORDS,
)
from shmpipe.shm.ring import (
    RingGeometry,
)
from shmpipe.shm.streams import StreamCounts, read_streams


def attach_tables(info: dict) -> tuple[np.ndarray, np.ndarray, mmap.mmap]:
    """Map a running supervisor's tables read-only through /proc/<pid>/fd (same user only).

    Returns
    -------
    table, ptable, mapping
        The slot table, the process table, and the mapping (close it when done).
    """
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


def attach_streams(info: dict, m: mmap.mmap) -> list[StreamCounts]:
    """Read the per-stream counters from a mapping made by ``attach_tables``."""
    offset = RingGeometry(info["slots"], 0, 0, 0, info["processes"]).stream_table_offset
    if offset + MAX_STREAMS * STREAM_WORDS * 8 > len(m):
        return []  # a supervisor of a version without the stream table
    words = np.ndarray((MAX_STREAMS, STREAM_WORDS), "<i8", buffer=m, offset=offset)
    return read_streams(words)


class ProcessSampler:
    """CPU % and resident memory of processes, by pid, with psutil.

    ``psutil.Process.cpu_percent`` measures since its previous call on the same object, so the
    objects are kept between samples (the live view and the metrics process sample
    repeatedly; ``shmpipe status`` primes, waits a moment, and samples once).
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def _get(self, pid: int) -> psutil.Process | None:
        p = self._procs.get(pid)
        if p is None:
            try:
                p = self._procs[pid] = psutil.Process(pid)
                p.cpu_percent(interval=None)  # the first call only starts the measurement
            except psutil.Error:
                return None
        return p

    def prime(self, pids: list[int]) -> None:
        """Start a CPU measurement for each pid."""
        for pid in pids:
            if pid > 0:
                self._get(pid)

    def sample(self, pid: int) -> tuple[float | None, int | None, float | None]:
        """``(cpu_percent, rss_bytes, cpu_seconds)`` of ``pid``; Nones if it is gone."""
        if pid <= 0:
            return None, None, None
        p = self._get(pid)
        if p is None:
            return None, None, None
        try:
            with p.oneshot():
                cpu = p.cpu_percent(interval=None)
                rss = p.memory_info().rss
                t = p.cpu_times()
            return cpu, rss, t.user + t.system
        except psutil.Error:
            self._procs.pop(pid, None)
            return None, None, None

    def forget_others(self, pids: set[int]) -> None:
        """Drop processes no longer of interest (replaced workers)."""
        for pid in list(self._procs):
            if pid not in pids:
                del self._procs[pid]


@dataclass
class ProcessRow:
    """One process of a pipeline as ``shmpipe status`` and the live view show it: the fields of
    :class:`~shmpipe.observe.snapshot.ProcessFigures` and psutil's CPU and memory."""

    role: str
    pid: int
    state: str
    frames: int
    bytes: int
    errors: int
    busy_pct: float
    cpu_pct: float | None
    rss: int | None
    cpu_s: float | None
    message: int
    restarts: int


def process_rows(
    ptable: np.ndarray,
    sampler: ProcessSampler | None = None,
    supervisor_pid: int = 0,
    metrics_pid: int = 0,
) -> list[ProcessRow]:
    """The rows of a process table (plus the supervisor and the metrics process), with CPU and
    memory from psutil.

    Busy % is the share of the process's life spent on frames (from ``P_BUSY_NS``).
    """
    sampler = sampler or ProcessSampler()
    rows = []
    if supervisor_pid:
        cpu, rss, cpu_s = sampler.sample(supervisor_pid)
        rows.append(
            ProcessRow("supervisor", supervisor_pid, "running", 0, 0, 0, 0.0, cpu, rss, cpu_s, 0, 0)
        )
    if metrics_pid:
        cpu, rss, cpu_s = sampler.sample(metrics_pid)
        state = "running" if cpu is not None else "dead"
        rows.append(ProcessRow("metrics", metrics_pid, state, 0, 0, 0, 0.0, cpu, rss, cpu_s, 0, 0))
    for f in read_processes(ptable):
        cpu, rss, cpu_s = sampler.sample(f.pid)
        rows.append(ProcessRow(**asdict(f), cpu_pct=cpu, rss=rss, cpu_s=cpu_s))
    return rows


HEADER = (
    f"  {'role':11s} {'pid':>7s} {'state':9s} {'frames':>8s} {'busy%':>6s} "
    f"{'cpu%':>6s} {'rss MiB':>8s} {'message':>8s} {'restarts':>8s}"
)


def format_rows(rows: list[ProcessRow]) -> list[str]:
    """The process table as fixed-width text lines (header first)."""
    lines = [HEADER]
    for r in rows:
        cpu = f"{r.cpu_pct:.0f}" if r.cpu_pct is not None else "-"
        rss = f"{r.rss / 2**20:.0f}" if r.rss is not None else "-"
        lines.append(
            f"  {r.role:11s} {r.pid:7d} {r.state:9s} {r.frames:8d} "
            f"{r.busy_pct:6.1f} {cpu:>6s} {rss:>8s} {r.message:8d} {r.restarts:8d}"
        )
    return lines


def format_status(info: dict, cpu_window_s: float = 0.25) -> str:
    """Attach to one running pipeline and describe it as text.

    Parameters
    ----------
    info : dict
        The run's registry record (``shmpipe.observe.runs.live_runs``).
    cpu_window_s : float
        CPU % is measured over this window (a single reading has nothing to compare with).
    """
    table, ptable, m = attach_tables(info)
    try:
        sampler = ProcessSampler()
        metrics_pid = int(info.get("metrics_pid", 0))
        sampler.prime([int(info["pid"]), metrics_pid, *(f.pid for f in read_processes(ptable))])
        if cpu_window_s > 0:
            time.sleep(cpu_window_s)  # the CPU measurement window, not synchronisation
        occupancy = ", ".join(f"{k} {n}" for k, n in ring_occupancy(table).items())
        holders = ", ".join(f"{k} {n}" for k, n in ring_holders(table).items())
        if holders:
            occupancy += f" (held by {holders})"
        lines = [
            f"{info['name']}  pid {info['pid']}  chain {' -> '.join(info['chain'])}  "
            f"state {info.get('state', '?')}  ring: {occupancy}"
        ]
        if info.get("metrics"):
            lines.append(f"  metrics {info['metrics']}")
        lines += format_rows(process_rows(ptable, sampler, int(info["pid"]), metrics_pid))
        idle_s = stalled_seconds(ptable)
        if idle_s:
            lines.append(
                f"  STALLED: nothing published for {idle_s:.0f} s with frames in flight "
                "(the run's log names who holds which message)"
            )
        streams = attach_streams(info, m)
        if streams:
            lines.append(f"  {'stream':32s} {'in':>8s} {'out':>8s} {'errors':>8s} {'MB in':>9s}")
            for s in streams:
                lines.append(
                    f"  {s.stream[:32]:32s} {s.frames_in:8d} {s.frames_out:8d} {s.errors:8d} "
                    f"{s.bytes_in / 1e6:9.1f}"
                )
        return "\n".join(lines)
    finally:
        del table, ptable
        m.close()


def print_status(name: str | None) -> int:
    """Print every running pipeline (or the one named ``name``); 1 if there is none."""
    runs = [r for r in live_runs() if name is None or r["name"] == name]
    if not runs:
        print(f"no running pipeline{' named ' + repr(name) if name else ''} on this machine")
        return 1
    for info in runs:
        try:
            print(format_status(info))
        except OSError as exc:
            print(f"{info['name']} (pid {info['pid']}): cannot attach: {exc}")
    return 0
