"""Anchors of the machine: what one process of pure CPU and of memory copying achieves."""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np


def cpu_anchor(processes: int, seconds: float = 1.0) -> dict[str, float]:
    """What this machine gives ``processes`` CPU-bound processes right now, side by side.

    Each process runs a pure-Python loop (no memory traffic) for ``seconds``; ``rate`` is
    the loops per second of all of them together. On a quiet N-core machine the rate of N
    processes is N times that of one; a shared machine shows less, and a pipeline's speedup
    cannot beat it.
    """
    total = sum(side_by_side(_spin, (seconds,), processes))
    return {"processes": processes, "rate": total / seconds}


def side_by_side(target, args: tuple, processes: int) -> list:
    """Run ``target(*args, queue)`` in ``processes`` forked processes at once; return what
    each put on the queue."""
    ctx = mp.get_context("fork")
    q = ctx.SimpleQueue()
    procs = [ctx.Process(target=target, args=(*args, q)) for _ in range(processes)]
    for p in procs:
        p.start()
    got = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return got


def _spin(seconds: float, q) -> None:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(10000))
        n += 1
    q.put(n)


def memory_anchor(processes: int, nbytes: int = 19_000_000, seconds: float = 1.0) -> float:
    """Aggregate copy bandwidth (GB/s) of ``processes`` processes each copying ``nbytes``
    buffers (beyond the caches) for ``seconds``, side by side."""
    return sum(side_by_side(_copy_loop, (nbytes, seconds), processes)) / seconds / 1e9


def _copy_loop(nbytes: int, seconds: float, q) -> None:
    src = np.ones(nbytes, np.uint8)
    dst = [src.copy() for _ in range(3)]  # touched: no first-touch faults in the timing
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        dst[n % 3][...] = src
        n += 1
    q.put(n * nbytes)
