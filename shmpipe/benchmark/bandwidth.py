"""The memory bandwidth this machine gives a worker, measured in the run that uses it.

A stage's CPU time per frame means little alone: its ratio to the *bandwidth bound* (the bytes
it must read and write per frame over what one core reads per second) says how far it is from
what the memory allows, and that ratio holds across machines where milliseconds do not.
"""

from __future__ import annotations

import time

import numpy as np

from native_kernels.cpu import cpu_model
from shmpipe.benchmark.anchors import side_by_side

READ_BYTES = 64 * 2**20  # beyond any L3 cache of a worker's share


def read_bandwidth_gbs(nbytes: int = READ_BYTES, repeats: int = 15) -> float:
    """One core's read bandwidth, GB/s: numpy's sum over a float64 array of ``nbytes``,
    best of ``repeats`` (after one untimed pass that maps the pages)."""
    a = np.ones(max(nbytes // 8, 1), np.float64)
    a.sum()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def _read_child(nbytes: int, repeats: int, q) -> None:
    q.put(read_bandwidth_gbs(nbytes, repeats))


def node_read_bandwidth_gbs(processes: int, nbytes: int = READ_BYTES, repeats: int = 7) -> float:
    """The read bandwidth of ``processes`` cores reading side by side, GB/s in all (the
    node model's memory bound on this machine)."""
    return sum(side_by_side(_read_child, (nbytes, repeats), processes))


def bandwidth_bounds(
    cpu_ms: dict[str, float], nbytes: dict[str, float], read_gbs: float
) -> dict[str, dict[str, float]]:
    """Per stage: the bandwidth bound (ms a frame at ``read_gbs``) and the CPU time over it."""
    out = {}
    for stage, ms in cpu_ms.items():
        bound = nbytes.get(stage, float("nan")) / (read_gbs * 1e9) * 1e3
        out[stage] = {"cpu_ms": ms, "bound_ms": bound, "over_bound": ms / bound}
    return out


def machine(processes: int) -> dict[str, float | str]:
    """The CPU model and the bandwidths a report names: one core's, and ``processes``'."""
    return {
        "cpu_model": cpu_model(),
        "read_gbs_one_core": read_bandwidth_gbs(),
        "read_gbs_node": node_read_bandwidth_gbs(processes),
        "node_processes": processes,
    }
