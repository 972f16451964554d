"""One measured pipeline run: rates, latencies and kernel times from its summary."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe.benchmark.inputs import pipeline_config
from shmpipe.engine.supervisor import Pipeline, RunSummary
from shmpipe.shm.layout import (
    P_BUSY_NS,
    P_FRAMES,
    P_HANDOVERS,
    P_PID,
    P_READY_NS,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
)


# -- results ---------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One pipeline run, measured."""

    workers: int
    frames: int
    wall_s: float
    fps_wall: float
    fps_steady: float
    bytes_per_frame: float
    first_result_s: float
    latency_s: np.ndarray = field(repr=False)
    """Dispatch -> publish latency of the frames handed over after every process was ready."""
    latency_all_s: np.ndarray = field(repr=False)
    """... of every frame, start-up included."""
    kernel_ms: dict[str, float]
    engine_latency_mean_s: float
    worker_startup_s: list[float]
    worker_busy_ms: float = math.nan
    """Mean time a worker held a frame (claim to done), kernels included."""
    frames_per_handover: float = math.nan
    """Frames the dispatcher handed to the workers per batch (1: one by one)."""
    slots: int = 0
    """Slots in the ring."""
    error: str = ""
    worker_pids: list[int] = field(default_factory=list, repr=False)
    dispatcher_pid: int = 0

    @property
    def gbps_steady(self) -> float:
        return self.fps_steady * self.bytes_per_frame / 1e9

    def brief(self) -> dict[str, Any]:
        d = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k
            not in (
                "latency_s",
                "latency_all_s",
                "worker_startup_s",
                "worker_pids",
                "dispatcher_pid",
            )
        }
        d["gbps_steady"] = self.gbps_steady
        d["latency_p50_s"], d["latency_p99_s"] = percentiles(self.latency_s)
        d["latency_all_p99_s"] = percentiles(self.latency_all_s, (99,))[0]
        d["latency_frames"] = len(self.latency_s)
        d["worker_startup_s"] = [round(x, 4) for x in self.worker_startup_s]
        return d


def percentiles(x: np.ndarray, q: tuple[float, ...] = (50, 99)) -> list[float]:
    if len(x) == 0:
        return [math.nan for _ in q]
    return [float(v) for v in np.percentile(x, q)]


def steady_rate(t: np.ndarray, skip: float = 0.1) -> float:
    """Frames per second between the ``skip`` quantile frame and the last one published."""
    n = len(t)
    if n < 3:
        return math.nan
    k = min(max(1, int(n * skip)), n - 2)
    span = t[-1] - t[k]
    return (n - 1 - k) / span if span > 0 else math.nan


def kernel_means_ms(summary: RunSummary, names: list[str]) -> dict[str, float]:
    """Mean run time per frame of each kernel (all workers together), from the ring's
    timing histograms copied into the summary."""
    t = summary.timings
    if not t:
        return {}
    counts = t["kernel_hist"].sum(axis=(0, 2))
    sums = t["kernel_ns"].sum(axis=0)
    return {n: float(sums[i] / counts[i] / 1e6) for i, n in enumerate(names) if counts[i] > 0}


def worker_busy_ms(summary: RunSummary) -> float:
    """Mean time per frame a worker spent between claiming a slot and marking it done."""
    procs = summary.timings.get("procs")
    if procs is None:
        return math.nan
    rows = procs[PROC_FIRST_WORKER:]
    frames = int(rows[:, P_FRAMES].sum())
    return float(rows[:, P_BUSY_NS].sum()) / frames / 1e6 if frames else math.nan


def frames_per_handover(summary: RunSummary) -> float:
    """Messages the dispatcher handed to the workers per batch, on average."""
    procs = summary.timings.get("procs")
    if procs is None or not procs[PROC_DISPATCHER, P_HANDOVERS]:
        return math.nan
    return float(procs[PROC_DISPATCHER, P_FRAMES] / procs[PROC_DISPATCHER, P_HANDOVERS])


def engine_latency_mean(summary: RunSummary) -> float:
    t = summary.timings
    if not t:
        return math.nan
    n = int(t["latency_hist"].sum())
    return float(t["latency_ns"][0]) / n / 1e9 if n else math.nan


def run_pipeline(
    source: dict,
    kernels: dict,
    workers: int,
    workdir: Path,
    bytes_per_frame: float | None = None,
    settle_s: float = 0.0,
    view: dict | None = None,
    **run: Any,
) -> RunResult:
    """Run one pipeline to its end with the timing sink and measure it.

    Parameters
    ----------
    source, kernels : dict
        ``[source]`` and ``[kernels]`` tables.
    workers : int
        Worker processes.
    workdir : Path
        Scratch directory for the timing file.
    bytes_per_frame : float, optional
        Payload bytes of one frame, for GB/s; default: the source's declared payload.
    settle_s : float
        Latency counts frames handed over this long after every process was ready: a paced
        source keeps its schedule while the workers start, and the backlog takes a moment
        to drain (that is start-up, measured on its own).
    view : dict, optional
        A ``[view]`` table (the preview tap and the live view).
    **run
        Further ``[run]`` keys (``cache_dir``, ``ordered`` ...).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    timing = workdir / f"timing-{os.getpid()}-{time.monotonic_ns()}.npy"
    cfg = pipeline_config(source, kernels, workers, timing, view, **run)
    if bytes_per_frame is None:
        bytes_per_frame = float(cfg.source_instance().layout().max_payload_bytes)
    t0 = time.time()
    wall_minus_mono = time.time() - time.monotonic()
    summary = Pipeline(cfg).run()
    try:
        t, lat = np.load(timing)
        timing.unlink()
    except (OSError, ValueError):
        t, lat = np.empty(0), np.empty(0)
    # Latency in steady state: frames handed over after every worker was ready. The paced
    # source starts before the workers finish their set-up; those first frames measure
    # start-up, which has its own benchmark.
    ready = all_ready_wall(summary, wall_minus_mono)
    steady_lat = lat[(t - lat) >= ready + settle_s] if math.isfinite(ready) else lat
    return RunResult(
        workers=workers,
        frames=summary.frames_out,
        wall_s=summary.wall_s,
        fps_wall=summary.frames_per_s,
        fps_steady=steady_rate(t),
        bytes_per_frame=bytes_per_frame,
        first_result_s=float(t[0] - t0) if len(t) else math.nan,
        latency_s=steady_lat,
        latency_all_s=lat,
        kernel_ms=kernel_means_ms(summary, [k.name for k in cfg.kernels]),
        worker_busy_ms=worker_busy_ms(summary),
        engine_latency_mean_s=engine_latency_mean(summary),
        worker_startup_s=list(summary.worker_startup_s),
        frames_per_handover=frames_per_handover(summary),
        slots=summary.slots,
        error=summary.error,
        worker_pids=_pids(summary)[1:],
        dispatcher_pid=_pids(summary)[0],
    )


def _pids(summary: RunSummary) -> list[int]:
    """The dispatcher's pid (0 if unknown), then the workers' (those that started)."""
    procs = summary.timings.get("procs")
    if procs is None:
        return [0]
    workers = [int(p) for p in procs[PROC_FIRST_WORKER:, P_PID] if p > 0]
    return [int(procs[PROC_DISPATCHER, P_PID]), *workers]


def all_ready_wall(summary: RunSummary, wall_minus_mono: float) -> float:
    """Wall-clock time when the last of the run's processes was ready (NaN if unknown)."""
    procs = summary.timings.get("procs")
    if procs is None:
        return math.nan
    ready = procs[:, P_READY_NS]
    ready = ready[ready > 0]
    return float(ready.max()) / 1e9 + wall_minus_mono if len(ready) else math.nan
