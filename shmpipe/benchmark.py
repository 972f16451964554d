"""The standard benchmark suite: what a node sustains, where the time goes, against the anchors.

``shmpipe bench`` runs every measurement below side by side in one process tree (our machines
are shared and noisy, so a ratio is only honest when both sides ran minutes apart at most) and
writes ``report.json`` plus three PNG plots into an output directory:

=================  ===========================================================================
measurement        what it runs
=================  ===========================================================================
copy               one process copies a frame's parts into a reused buffer (the anchor)
engine_bound       ``null`` kernel, full-size frames, 2 workers: frames/s and GB/s vs the copy
naive_pool         the same chain through ``multiprocessing.Pool`` pickling frames to workers
small_messages     1 KB payloads through the ``null`` chain: messages/s end to end
scaling            the LAMBDA chain (decompress, stitch, integrate, statistics) on 1..N workers
end_to_end         the chain's frames/s against the sum of its stages' kernel times
latency            dispatch -> publish p50/p99 with the source paced at half the sustained rate
startup            time until the first result with a cold and a warm Numba cache
model              per-frame CPU time and bytes moved -> frames/s of a 16-core node, nodes for
                   a 2 kHz LAMBDA 9M
=================  ===========================================================================

Throughput is reported as the *steady* rate: frames published per second from the 10th
percentile frame to the last, timed by a sink in the publisher (``TimingSink``), so process
start-up and Numba loading are not mixed into it (start-up has its own measurement). The
whole-run rate including start-up is reported next to it.

The pytest-benchmark suites in ``bench/`` call the same functions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe.chain import KernelChain
from shmpipe.config import PipelineConfig, load_config
from shmpipe.engine import Pipeline, RunSummary
from shmpipe.message import Message, copy_parts, payload_bytes
from shmpipe.ring import (
    LATENCY_BUCKETS_S,
    P_BUSY_NS,
    P_FRAMES,
    P_HANDOVERS,
    P_PID,
    P_READY_NS,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
)
from shmpipe.sink import Record, RunInfo, Sink

LAMBDA_MODULE_SHAPE = (516, 1556)
QUICK_MODULE_SHAPE = (48, 64)
KERNELS = "native_kernels.shmpipe_kernels"
GOALS = {
    "engine_bound_vs_copy": 0.8,
    "engine_bound_vs_copy_issue2": 0.6,
    "naive_pool_speedup": 5.0,
    "small_messages_per_s": 20000.0,
    "scaling_1_to_2": 1.7,
    "latency_p99_over_chain": 3.0,
}


# -- a sink that times every record in the publisher -----------------------------------------
@dataclass
class TimingSinkParams:
    path: str = ""
    """Where to write the timings (``.npy``: rows publish time, dispatch->publish latency)."""


class TimingSink(Sink):
    """Records, per result, the wall-clock time it was published and its latency since the
    source handed the message over (``Record.timestamp``); written to ``path`` at close."""

    Params = TimingSinkParams

    def open(self, run: RunInfo) -> None:
        self._t: list[float] = []
        self._lat: list[float] = []

    def write(self, record: Record) -> None:
        now = time.time()
        self._t.append(now)
        self._lat.append(now - record.timestamp)

    def close(self) -> None:
        if self.params.path:
            np.save(self.params.path, np.array([self._t, self._lat], dtype=np.float64))


# -- configurations --------------------------------------------------------------------------
def sim_source(
    frames: int,
    module_shape: tuple[int, int] = LAMBDA_MODULE_SHAPE,
    modules: int = 12,
    compression: str = "none",
    rate: float = 0.0,
    payload: int = 0,
) -> dict[str, Any]:
    """A ``[source]`` table for the simulated LAMBDA 9M (or small messages with ``payload``)."""
    table: dict[str, Any] = {
        "kind": "sim",
        "frames": frames,
        "module_shape": list(module_shape),
        "modules": modules,
        "compression": compression,
        "rate": float(rate),
    }
    if payload:
        table["payload_bytes"] = payload
    return table


def null_chain() -> dict[str, Any]:
    """The ``null`` kernel alone: what the engine itself costs."""
    return {"null": {"kind": "null"}}


def geometry_file(directory: Path, module_shape: tuple[int, int], modules: int = 12) -> Path:
    """Write the simulated detector's geometry as JSON (the LAMBDA kernels read it)."""
    from shmpipe.sources.sim import SimParams, sim_geometry

    geo = sim_geometry(SimParams(module_shape=list(module_shape), modules=modules))
    path = Path(directory) / f"geometry-{module_shape[0]}x{module_shape[1]}x{modules}.json"
    geo.to_file(path)
    return path


def lambda_chain(geometry: Path, module_shape: tuple[int, int], npt: int = 1000) -> dict:
    """The LAMBDA chain: bitshuffle-LZ4 decompress, stitch, azimuthal integration, statistics.

    The beam centre matches the simulated powder rings (47 % down, 52 % across the canvas).
    """
    from native_kernels.geometry import load_geometry

    geo = load_geometry(str(geometry))
    h, w = geo.shape
    px = geo.pixel_size
    g = str(geometry)
    return {
        "decompress": {"kind": f"{KERNELS}:LambdaDecompress", "geometry": g},
        "stitch": {"kind": f"{KERNELS}:LambdaStitch", "input": "decompress.modules", "geometry": g},
        "integrate": {
            "kind": f"{KERNELS}:AzimuthalIntegrate",
            "geometry": g,
            "dist": 0.2,
            "poni1": 0.47 * h * px[0],
            "poni2": 0.52 * w * px[1],
            "wavelength": 1e-10,
            "npt": npt,
        },
        "stats": {"kind": f"{KERNELS}:FrameStats", "threshold": 100.0},
    }


def pipeline_config(
    source: dict, kernels: dict, workers: int, timing_path: Path, **run: Any
) -> PipelineConfig:
    """A validated configuration with the timing sink attached."""
    raw = {
        "run": {"workers": workers, "progress": "off", "log_level": "warning", **run},
        "source": source,
        "kernels": kernels,
        "sinks": [{"kind": "shmpipe.benchmark:TimingSink", "path": str(timing_path)}],
    }
    return load_config(raw=raw)


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
    **run
        Further ``[run]`` keys (``cache_dir``, ``ordered`` ...).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    timing = workdir / f"timing-{os.getpid()}-{time.monotonic_ns()}.npy"
    cfg = pipeline_config(source, kernels, workers, timing, **run)
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


def cpu_anchor(processes: int, seconds: float = 1.0) -> dict[str, float]:
    """What this machine gives ``processes`` CPU-bound processes right now, side by side.

    Each process runs a pure-Python loop (no memory traffic) for ``seconds``; ``rate`` is
    the loops per second of all of them together. On a quiet N-core machine the rate of N
    processes is N times that of one; a shared machine shows less, and a pipeline's speedup
    cannot beat it.
    """
    ctx = mp.get_context("fork")
    q = ctx.SimpleQueue()
    procs = [ctx.Process(target=_spin, args=(seconds, q)) for _ in range(processes)]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return {"processes": processes, "rate": total / seconds}


def _spin(seconds: float, q) -> None:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(10000))
        n += 1
    q.put(n)


def memory_anchor(processes: int, nbytes: int = 19_000_000, seconds: float = 1.0) -> float:
    """Aggregate copy bandwidth (GB/s) of ``processes`` processes each copying ``nbytes``
    buffers (beyond the caches) for ``seconds``, side by side."""
    ctx = mp.get_context("fork")
    q = ctx.SimpleQueue()
    procs = [ctx.Process(target=_copy_loop, args=(nbytes, seconds, q)) for _ in range(processes)]
    for p in procs:
        p.start()
    total = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds / 1e9


def _copy_loop(nbytes: int, seconds: float, q) -> None:
    src = np.ones(nbytes, np.uint8)
    dst = [src.copy() for _ in range(3)]  # touched: no first-touch faults in the timing
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        dst[n % 3][...] = src
        n += 1
    q.put(n * nbytes)


# -- the anchor: one process copying a frame -------------------------------------------------
def sim_parts(module_shape: tuple[int, int], modules: int = 12) -> list[np.ndarray]:
    """The first pooled frame of the simulated detector (raw uint16 modules)."""
    from shmpipe.sources.sim import SimParams, SimSource

    src = SimSource(SimParams(module_shape=list(module_shape), modules=modules))
    src.open()
    return src.frame_parts(0)


def copy_rate(parts: list[np.ndarray], repeats: int = 50, streaming: bool = False) -> dict:
    """Median time for one process to copy a frame's parts into a reused buffer.

    Uses ``copy_parts``, numpy's copy (memcpy), into one preallocated buffer: the anchor of
    the engine-bound goal. With ``streaming`` the parts go through the dispatcher's streaming
    copy (``shmpipe.streamcopy``) instead, for reference.
    """
    dest = np.empty(payload_bytes(parts) + 64, dtype=np.uint8)
    off = (-dest.ctypes.data) % 64
    dest = dest[off : off + payload_bytes(parts)]
    msg = Message("copy", 1, "copy", parts)
    copy = copy_parts
    if streaming:
        from shmpipe.streamcopy import stream_copy

        def copy(msg: Message, dest: np.ndarray) -> None:
            o = 0
            for p in msg.parts:
                stream_copy(dest[o : o + p.nbytes], p.reshape(-1).view(np.uint8))
                o += (p.nbytes + 63) // 64 * 64

    copy(msg, dest)  # first touch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        copy(msg, dest)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    nbytes = sum(p.nbytes for p in parts)
    return {"median_s": med, "fps": 1.0 / med, "gbps": nbytes / med / 1e9, "bytes": nbytes}


# -- the naive way: multiprocessing.Pool pickling frames ---------------------------------------
_POOL: dict[str, Any] = {}


def _pool_init(cfg: PipelineConfig, cache_dir: str) -> None:
    # One thread per kernel, as the engine's workers run (OpenMP reads this when it loads).
    os.environ["OMP_NUM_THREADS"] = "1"
    chain = KernelChain(cfg.kernel_instances())
    layout = chain.setup(cfg.source_instance().layout().parts, Path(cache_dir), 1, 0)
    buf = np.empty(max(layout.result_bytes, 64), dtype=np.uint8)
    _POOL["chain"] = chain
    _POOL["views"] = chain.output_views(
        lambda off, dt, shape: np.ndarray(shape, dtype=dt, buffer=buf, offset=off)
    )
    _POOL["small"] = [
        (o.qualified, o.offset, o.spec) for o in layout.outputs if o.spec.nbytes < 2**20
    ]
    _POOL["buf"] = buf


def _pool_task(item: tuple[int, list[np.ndarray]]) -> dict[str, np.ndarray]:
    mid, parts = item
    fields = {"stream": "naive", "message_id": mid, "name": "", "meta": {}, "scan": {}}
    _POOL["chain"].run({**fields, "parts": parts}, _POOL["views"])
    buf = _POOL["buf"]
    return {
        q: np.ndarray(s.shape, dtype=s.dtype, buffer=buf, offset=off).copy()
        for q, off, s in _POOL["small"]
    }


def naive_pool_rate(source: dict, kernels: dict, workers: int, cache_dir: Path) -> dict[str, float]:
    """Frames/s of the same chain through ``multiprocessing.Pool.imap``, frames pickled to the
    workers and the reduced results (outputs under 1 MiB) pickled back: what most beamline
    scripts do. The pool is started and warmed (one frame per worker) before timing."""
    frames = int(source["frames"])
    source = dict(source, frames=frames + workers)  # + the warm-up frames
    cfg = load_config(raw={"source": source, "kernels": kernels, "sinks": [{"kind": "null"}]})
    src = cfg.source_instance()
    src.open()

    def items(n: int, start: int = 0):
        for i in range(n):
            msg = src.next(1.0)
            while not isinstance(msg, Message):  # skip stream markers
                msg = src.next(1.0)
            yield (start + i + 1, msg.parts)

    ctx = mp.get_context("fork")
    t_start = time.perf_counter()
    with ctx.Pool(workers, initializer=_pool_init, initargs=(cfg, str(cache_dir))) as pool:
        list(pool.imap(_pool_task, items(workers), chunksize=1))
        t0 = time.perf_counter()
        n = sum(1 for _ in pool.imap(_pool_task, items(frames, workers), chunksize=1))
        elapsed = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    src.close()
    return {"frames": n, "fps": n / elapsed, "elapsed_s": elapsed, "wall_s": total}


# -- start-up: a fresh process, cold or warm Numba cache ---------------------------------------
def _startup_child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    r = run_pipeline(
        spec["source"],
        spec["kernels"],
        spec["workers"],
        Path(spec["workdir"]),
        cache_dir=spec["cache_dir"],
    )
    print(json.dumps({"first_result_s": r.first_result_s, "error": r.error}))


def startup_time(
    source: dict,
    kernels: dict,
    workers: int,
    numba_cache: Path | None,
    cache_dir: Path,
    workdir: Path,
) -> dict[str, float]:
    """Time until the first result of a run in a fresh Python process.

    ``first_result_s`` counts from ``Pipeline.run()``; ``process_first_result_s`` from the
    process start (interpreter, imports). The Numba cache is ``numba_cache`` and the kernels'
    table cache ``cache_dir``: empty directories make a cold start, a second call a warm one.
    """
    spec = {
        "source": source,
        "kernels": kernels,
        "workers": workers,
        "workdir": str(workdir),
        "cache_dir": str(cache_dir),
    }
    env = dict(os.environ)
    if numba_cache is not None:  # None: the process's usual Numba cache
        env["NUMBA_CACHE_DIR"] = str(numba_cache)
    code = "import sys; from shmpipe.benchmark import _startup_child; _startup_child(sys.argv[1])"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    total = time.perf_counter() - t0
    try:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"first_result_s": math.nan, "process_s": total, "error": out.stderr[-2000:]}
    return {
        "first_result_s": res["first_result_s"],
        "process_s": total,
        "error": res["error"],
    }


# -- the model -------------------------------------------------------------------------------
@dataclass
class ModelAssumptions:
    """What the node model assumes; every field is written into the report."""

    cores: int = 16
    """Cores of the target node."""
    service_cores: float = 2.0
    """Cores taken by the dispatcher, the publisher and the supervisor (not workers)."""
    mem_bandwidth_gbs: float = 80.0
    """Sustained memory bandwidth of the node (GB/s; a 2-socket DDR4 node reaches ~100-200)."""
    detector_rate_hz: float = 2000.0
    """Frames per second of a full LAMBDA 9M (all 12 modules at 2 kHz)."""
    core_speed_ratio: float = 1.0
    """Speed of one node core relative to one core of the machine that measured."""


def chain_bytes_per_frame(
    module_shape: tuple[int, int], modules: int, image_px: int, compressed: float
) -> dict[str, float]:
    """Bytes moved through memory per frame by each stage of the LAMBDA chain (reads + writes).

    dispatcher: read + write the compressed payload; decompress: read it, write the uint16
    modules, plus bitshuffle's own module-sized buffer copied once more (read + write);
    stitch: read the modules, write the float32 canvas; integrate: per module pixel the
    float32 value, a bin index and a split coefficient (~12 B/px, bbox splitting); statistics:
    read the canvas.
    """
    raw = modules * module_shape[0] * module_shape[1] * 2
    px = raw // 2
    img = image_px * 4
    stages = {
        "dispatcher": 2.0 * compressed,
        "decompress": compressed + 3.0 * raw,
        "stitch": raw + img,
        "integrate": 12.0 * px,
        "stats": img,
    }
    stages["total"] = sum(stages.values())
    return stages


def compressed_frame_bytes(module_shape: tuple[int, int], modules: int) -> float:
    """Bytes of one bitshuffle-LZ4 frame of the simulator (its pool must be cached already:
    see ``sim_parts_lz4``; loading it does not touch bitshuffle)."""
    from shmpipe.sources.sim import SimParams, SimSource

    src = SimSource(
        SimParams(module_shape=list(module_shape), modules=modules, compression="bitshuffle-lz4")
    )
    src.open()
    return float(sum(p.nbytes for p in src.frame_parts(0)))


def node_model(
    kernel_ms: dict[str, float],
    engine_overhead_ms: float,
    dispatcher_ms: float,
    bytes_per_frame: float,
    a: ModelAssumptions,
) -> dict[str, Any]:
    """Predict frames/s of one node and the nodes a full-rate LAMBDA 9M needs.

    frames/s = min(compute, dispatcher, memory) where compute = workers / per-frame CPU time
    (the stages' kernel times plus the engine's per-frame overhead in a worker), dispatcher =
    1 / the dispatcher's per-frame time (one process copies every frame), memory =
    bandwidth / bytes moved per frame.
    """
    cpu_s = (sum(kernel_ms.values()) + engine_overhead_ms) / 1e3 / a.core_speed_ratio
    workers = max(1.0, a.cores - a.service_cores)
    compute = workers / cpu_s if cpu_s > 0 else math.inf
    dispatch = 1e3 / dispatcher_ms * a.core_speed_ratio if dispatcher_ms > 0 else math.inf
    memory = a.mem_bandwidth_gbs * 1e9 / bytes_per_frame if bytes_per_frame > 0 else math.inf
    fps = min(compute, dispatch, memory)
    bound = {compute: "compute", dispatch: "dispatcher", memory: "memory bandwidth"}[fps]
    return {
        "assumptions": dataclasses.asdict(a),
        "cpu_ms_per_frame": cpu_s * 1e3,
        "kernel_ms": kernel_ms,
        "engine_overhead_ms": engine_overhead_ms,
        "dispatcher_ms_per_frame": dispatcher_ms,
        "bytes_per_frame": bytes_per_frame,
        "workers": workers,
        "fps_compute": compute,
        "fps_dispatcher": dispatch,
        "fps_memory": memory,
        "predicted_fps": fps,
        "bound_by": bound,
        "nodes_for_detector": math.ceil(a.detector_rate_hz / fps) if fps > 0 else None,
    }


# -- the suite -------------------------------------------------------------------------------
@dataclass
class SuiteOptions:
    """What ``shmpipe bench`` runs."""

    workers: list[int] = field(default_factory=lambda: list(range(1, (os.cpu_count() or 1) + 1)))
    frames: int = 0
    """Frames per throughput run; 0: a default per measurement (smaller with ``quick``)."""
    output: Path = Path("bench-report")
    quick: bool = False
    """Tiny frames and few of them: checks the code paths in seconds, measures nothing."""
    cold_start: bool = True
    """Start with empty Numba and kernel-table caches and measure a cold start-up (compiles
    everything: several seconds); otherwise use the usual caches (warm after a first run)."""


def _frames(opts: SuiteOptions, full: int, quick: int) -> int:
    if opts.frames:
        return opts.frames
    return quick if opts.quick else full


def run_suite(opts: SuiteOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every measurement and write ``report.json`` and the plots into ``opts.output``.

    Returns
    -------
    dict
        The report (also written as ``report.json``).
    """
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    shape = QUICK_MODULE_SHAPE if opts.quick else LAMBDA_MODULE_SHAPE
    modules = 12
    report: dict[str, Any] = {"meta": _meta(opts, shape, modules)}
    with tempfile.TemporaryDirectory(prefix="shmpipe-bench-") as tmp:
        work = Path(tmp)
        if opts.cold_start:  # empty caches, so the first start-up is cold
            cache = work / "tables"
            numba_cache: Path | None = work / "numba-cache"
            numba_cache.mkdir()
        else:  # the usual caches: warm after the first run on this machine
            cache = Path.home() / ".cache" / "shmpipe"
            numba_cache = None
        cache.mkdir(parents=True, exist_ok=True)
        geo = geometry_file(work, shape, modules)
        chain = lambda_chain(geo, shape)
        max_w = max(opts.workers)

        # 1. the anchor and the engine bound, side by side
        log("copy rate (one process, reused buffer) ...")
        parts_full = sim_parts(shape, modules)
        copy = copy_rate(parts_full, repeats=10 if opts.quick else 60)
        n = _frames(opts, 1000, 30)
        log(f"engine bound: null kernel, {n} frames, 2 workers ...")
        eb = run_pipeline(sim_source(n, shape, modules), null_chain(), 2, work)
        copy_after = copy_rate(parts_full, repeats=10 if opts.quick else 60)
        copy_fps = float(np.median([copy["fps"], copy_after["fps"]]))
        report["copy"] = {"before": copy, "after": copy_after, "fps": copy_fps}
        try:
            report["copy"]["streaming"] = copy_rate(parts_full, 10 if opts.quick else 60, True)
        except Exception as exc:  # noqa: BLE001 - a reference figure only
            report["copy"]["streaming"] = {"error": str(exc)}
        report["engine_bound"] = {
            **eb.brief(),
            "copy_fps": copy_fps,
            "ratio_steady": eb.fps_steady / copy_fps,
            "ratio_wall": eb.fps_wall / copy_fps,
            "ratio_vs_streaming_copy": eb.fps_steady
            / report["copy"]["streaming"].get("fps", math.nan),
        }
        log(f"  {eb.fps_steady:.1f} frames/s, {eb.gbps_steady:.2f} GB/s; copy {copy_fps:.1f}/s")

        # 2. the naive way, same null chain and the LAMBDA chain
        n_naive = _frames(opts, 200, 10)
        log(f"naive multiprocessing.Pool: {n_naive} frames, {max_w} workers ...")
        naive = naive_pool_rate(sim_source(n_naive, shape, modules), null_chain(), max_w, cache)
        eng = run_pipeline(sim_source(max(n, n_naive), shape, modules), null_chain(), max_w, work)
        report["naive_pool"] = {
            "workers": max_w,
            "chain": "null",
            "pool": naive,
            "engine": eng.brief(),
            "speedup": eng.fps_steady / naive["fps"],
        }
        log(f"  pool {naive['fps']:.1f}/s, engine {eng.fps_steady:.1f}/s")

        # 3. small messages
        n_small = _frames(opts, 40000, 300)
        log(f"small messages: 1 KB payloads, {n_small} messages ...")
        sm = run_pipeline(sim_source(n_small, payload=1024), null_chain(), max_w, work)
        report["small_messages"] = {**sm.brief(), "payload_bytes": 1024}
        log(f"  {sm.fps_steady:.0f} messages/s")

        # 4. start-up, cold then warm (also compiles and builds the tables for what follows)
        src_c = sim_source(4 if opts.quick else 8, shape, modules, "bitshuffle-lz4")
        sim_parts_lz4(shape, modules)  # the simulator's pool is not what we time
        startup: dict[str, Any] = {}
        if opts.cold_start:
            log("start-up with a cold Numba cache (compiles every kernel) ...")
        first = startup_time(src_c, chain, 1, numba_cache, cache, work)  # fills the caches
        if opts.cold_start:
            startup["cold"] = first
        log("start-up with a warm Numba cache ...")
        startup["warm"] = startup_time(src_c, chain, 1, numba_cache, cache, work)
        report["startup"] = startup

        # 5. scaling with the LAMBDA chain (+ end to end against the stages' kernel times)
        n_chain = _frames(opts, 60, 8)
        anchor_s = 0.3 if opts.quick else 1.0
        log("machine anchors: CPU-bound and copying processes side by side ...")
        cpu_before = {w: cpu_anchor(w, anchor_s)["rate"] for w in opts.workers}
        mem_before = {w: memory_anchor(w, seconds=anchor_s) for w in opts.workers}
        runs = []
        for w in opts.workers:
            log(f"scaling: LAMBDA chain, {w} workers, {n_chain} frames ...")
            r = run_pipeline(
                sim_source(n_chain, shape, modules, "bitshuffle-lz4"),
                chain,
                w,
                work,
                bytes_per_frame=float(sum(p.nbytes for p in parts_full)),
                cache_dir=str(cache),
            )
            runs.append(r)
            log(f"  {r.fps_steady:.2f} frames/s; stages {_fmt_ms(r.kernel_ms)}")
        base = runs[0].fps_steady * (1.0 / runs[0].workers)
        scaling = []
        for r in runs:
            kernel_sum = sum(r.kernel_ms.values())
            ideal = min(r.workers, os.cpu_count() or 1) / (kernel_sum / 1e3)
            scaling.append(
                {
                    **r.brief(),
                    "speedup": r.fps_steady / runs[0].fps_steady,
                    "efficiency": r.fps_steady / (base * r.workers),
                    "kernel_sum_ms": kernel_sum,
                    "ideal_fps": ideal,
                    "fps_over_ideal": r.fps_steady / ideal,
                    # what a worker spends on a frame outside the kernels (header, views,
                    # bookkeeping, hand-over): the engine's cost on the compute path
                    "engine_overhead_ms": r.worker_busy_ms - kernel_sum,
                    # wall time per frame per worker beyond the kernels; includes waiting
                    # for frames and noise (negative when the first, slower frames are
                    # outside the steady window but inside the kernel means)
                    "wall_minus_kernels_ms": 1e3
                    * min(r.workers, os.cpu_count() or 1)
                    / r.fps_steady
                    - kernel_sum,
                }
            )
        cpu_after = {w: cpu_anchor(w, anchor_s)["rate"] for w in opts.workers}
        mem_after = {w: memory_anchor(w, seconds=anchor_s) for w in opts.workers}
        w0 = opts.workers[0]
        machine = []
        for w in opts.workers:
            cpu = (cpu_before[w] + cpu_after[w]) / 2
            cpu0 = (cpu_before[w0] + cpu_after[w0]) / 2
            machine.append(
                {
                    "processes": w,
                    "cpu_speedup": cpu / cpu0,
                    "copy_gbps": (mem_before[w] + mem_after[w]) / 2,
                }
            )
        for row, m in zip(scaling, machine, strict=True):
            row["machine_cpu_speedup"] = m["cpu_speedup"]
            row["speedup_over_machine"] = row["speedup"] / m["cpu_speedup"]
        report["scaling"] = {"chain": list(chain), "runs": scaling, "machine": machine}
        log("  machine: " + ", ".join(
            f"{m['processes']} procs x{m['cpu_speedup']:.2f} CPU, {m['copy_gbps']:.1f} GB/s"
            for m in machine))  # fmt: skip
        one = scaling[0]
        report["end_to_end"] = {
            "workers": one["workers"],
            "fps": one["fps_steady"],
            "kernel_sum_ms": one["kernel_sum_ms"],
            "kernel_ms": one["kernel_ms"],
            "ideal_fps": one["ideal_fps"],
            "fps_over_ideal": one["fps_over_ideal"],
            "engine_overhead_ms_per_frame": one["engine_overhead_ms"],
            "worker_busy_ms": one["worker_busy_ms"],
            "wall_minus_kernels_ms": one["wall_minus_kernels_ms"],
        }

        # 5b. the naive way with the LAMBDA chain (for reference; the goal is the null chain)
        n_nl = _frames(opts, 40, 6)
        log(f"naive multiprocessing.Pool, LAMBDA chain: {n_nl} frames, {max_w} workers ...")
        src_l = sim_source(n_nl, shape, modules, "bitshuffle-lz4")
        naive_l = naive_pool_rate(src_l, chain, max_w, cache)
        eng_l = next(r for r in runs if r.workers == max_w)
        report["naive_pool_lambda"] = {
            "workers": max_w,
            "pool": naive_l,
            "engine_fps": eng_l.fps_steady,
            "speedup": eng_l.fps_steady / naive_l["fps"],
        }
        log(f"  pool {naive_l['fps']:.2f}/s, engine {eng_l.fps_steady:.2f}/s")

        # 6. latency at half the sustainable rate
        best = max(runs, key=lambda r: r.fps_steady)
        rate = 0.5 * best.fps_steady
        settle = 0.0 if opts.quick else 2.0
        n_lat = _frames(opts, max(40, int(rate * (15 + settle + 3))), 8)
        log(f"latency: {best.workers} workers, paced at {rate:.2f} frames/s, {n_lat} frames ...")
        lat = run_pipeline(
            sim_source(n_lat, shape, modules, "bitshuffle-lz4", rate=rate),
            chain,
            best.workers,
            work,
            settle_s=settle,
            cache_dir=str(cache),
        )
        chain_ms = sum(lat.kernel_ms.values()) or sum(best.kernel_ms.values())
        # --quick runs a handful of frames, all of them often dispatched before the workers
        # are ready: then the start-up backlog is all there is to measure.
        counted = lat.latency_s if len(lat.latency_s) else lat.latency_all_s
        p50, p99 = percentiles(counted)
        report["latency"] = {
            "workers": best.workers,
            "rate": rate,
            "frames": lat.frames,
            "settle_s": settle,
            "frames_counted": len(lat.latency_s),
            "p50_s": p50,
            "p99_s": p99,
            "max_s": float(counted.max()) if len(counted) else math.nan,
            "p99_with_startup_s": percentiles(lat.latency_all_s, (99,))[0],
            "chain_ms": chain_ms,
            "p99_over_chain": p99 / (chain_ms / 1e3),
            "engine_histogram_mean_s": lat.engine_latency_mean_s,
            "buckets_s": list(LATENCY_BUCKETS_S),
        }
        log(f"  p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms (chain {chain_ms:.1f} ms)")

        # 7. the model
        geo_px = _image_px(geo)
        moved = chain_bytes_per_frame(
            shape, modules, geo_px, compressed_frame_bytes(shape, modules)
        )
        # The dispatcher's time per frame, from the null-kernel run (raw frames), scaled to
        # the compressed payload it copies for the LAMBDA chain.
        raw_bytes = float(sum(p.nbytes for p in parts_full))
        comp = moved["dispatcher"] / 2
        dispatcher_ms = 1e3 / report["engine_bound"]["fps_steady"] * comp / raw_bytes
        report["model"] = node_model(
            one["kernel_ms"],
            max(0.0, one["engine_overhead_ms"]),
            dispatcher_ms,
            moved["total"],
            ModelAssumptions(),
        )
        report["model"]["bytes_by_stage"] = moved
        report["model"]["measured_here_copy_gbps"] = max(m["copy_gbps"] for m in machine)
        report["goals"] = goals(report)
        plots(report, out, lat.latency_s)

        # 8. the beamline chain against the stitch-first chain, side by side
        from shmpipe.beamline_bench import suite_step

        log("beamline chain vs stitch-first chain ...")
        report["beamline"] = suite_step(opts, geo, shape, modules, work, cache, log)
    (out / "report.md").write_text(report_markdown(report))  # before NaN becomes null
    report = _jsonable(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _open_lz4_pool(module_shape: tuple[int, int], modules: int) -> None:
    from shmpipe.sources.sim import SimParams, SimSource

    SimSource(
        SimParams(module_shape=list(module_shape), modules=modules, compression="bitshuffle-lz4")
    ).open()


def sim_parts_lz4(module_shape: tuple[int, int], modules: int) -> None:
    """Generate (and cache on disk) the compressed simulator pool before anything is timed.

    Runs in a child process: bitshuffle starts OpenMP threads, and a process that has used
    GNU OpenMP must not fork the engine's workers afterwards (their first bitshuffle call
    deadlocks).
    """
    proc = mp.get_context("fork").Process(target=_open_lz4_pool, args=(module_shape, modules))
    proc.start()
    proc.join()


def _image_px(geometry: Path) -> int:
    from native_kernels.geometry import load_geometry

    h, w = load_geometry(str(geometry)).shape
    return int(h * w)


def _fmt_ms(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} ms" for k, v in d.items())


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the benchmark issue: measured value, goal, met or not."""
    scaling = report["scaling"]["runs"]
    by_w = {r["workers"]: r for r in scaling}
    rows = [
        ("engine bound: null, 2 workers, frames/s over copy rate", "engine_bound_vs_copy",
         report["engine_bound"]["ratio_steady"], ">="),
        ("engine bound (issue 2 goal)", "engine_bound_vs_copy_issue2",
         report["engine_bound"]["ratio_steady"], ">="),
        ("engine over naive multiprocessing.Pool, frames/s", "naive_pool_speedup",
         report["naive_pool"]["speedup"], ">="),
        ("small messages (1 KB) per second", "small_messages_per_s",
         report["small_messages"]["fps_steady"], ">="),
    ]  # fmt: skip
    if 1 in by_w and 2 in by_w:
        rows.append(
            ("LAMBDA chain speedup 1 -> 2 workers", "scaling_1_to_2", by_w[2]["speedup"], ">=")
        )
    rows.append(
        ("latency p99 over the chain's time per frame", "latency_p99_over_chain",
         report["latency"]["p99_over_chain"], "<=")
    )  # fmt: skip
    out = []
    for text, key, value, op in rows:
        goal = GOALS[key]
        met = bool(value >= goal) if op == ">=" else bool(value <= goal)
        out.append({"goal": text, "key": key, "measured": value, "target": f"{op} {goal}",
                    "met": met})  # fmt: skip
    return out


def _meta(opts: SuiteOptions, shape: tuple[int, int], modules: int) -> dict[str, Any]:
    import numba

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "commit": commit,
        "quick": opts.quick,
        "module_shape": list(shape),
        "modules": modules,
        "workers": list(opts.workers),
        "frame_bytes": modules * shape[0] * shape[1] * 2,
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# -- plots -----------------------------------------------------------------------------------
def plots(report: dict[str, Any], out: Path, latency_s: np.ndarray) -> list[Path]:
    """Write throughput_vs_workers.png, latency.png and stages.png into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    runs = report["scaling"]["runs"]
    w = [r["workers"] for r in runs]
    fps = [r["fps_steady"] for r in runs]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(w, fps, "o-", label="measured")
    if runs:
        ax.plot(w, [fps[0] * x for x in w], "--", color="grey", label="linear")
    ax.set_xlabel("workers")
    ax.set_ylabel("frames/s (LAMBDA chain)")
    ax.set_xticks(w)
    ax.legend()
    ax.set_title("Throughput against workers")
    fig.tight_layout()
    paths.append(out / "throughput_vs_workers.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ms = np.asarray(latency_s) * 1e3
    if len(ms):
        ax.hist(ms, bins=min(40, max(5, len(ms) // 2)))
        lat = report["latency"]
        for q, style in (("p50_s", "-"), ("p99_s", "--")):
            if lat[q] is not None and math.isfinite(lat[q]):
                ax.axvline(
                    lat[q] * 1e3, color="k", ls=style, label=f"{q[:3]} {lat[q] * 1e3:.1f} ms"
                )
        ax.legend()
    ax.set_xlabel("dispatch -> publish latency (ms)")
    ax.set_ylabel("frames")
    ax.set_title(f"Latency at {report['latency']['rate']:.2f} frames/s")
    fig.tight_layout()
    paths.append(out / "latency.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    e2e = report["end_to_end"]
    names = [*e2e["kernel_ms"], "engine overhead"]
    vals = [*e2e["kernel_ms"].values(), max(0.0, e2e["engine_overhead_ms_per_frame"])]
    ax.barh(names, vals)
    ax.set_xlabel("ms per frame (1 worker)")
    ax.set_title("Time per stage")
    ax.invert_yaxis()
    fig.tight_layout()
    paths.append(out / "stages.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def print_summary(report: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """Print the goal table of a report."""
    for g in report["goals"]:
        mark = "met" if g["met"] else "NOT met"
        measured = g["measured"]
        shown = f"{measured:>10.3f}" if measured is not None else f"{'n/a':>10}"
        log(f"{g['goal']:<58} {shown}  goal {g['target']:<10} {mark}")
    m = report["model"]
    log(
        f"model: {m['predicted_fps']:.1f} frames/s on a {m['assumptions']['cores']}-core node "
        f"({m['bound_by']}); {m['nodes_for_detector']} nodes for "
        f"{m['assumptions']['detector_rate_hz']:.0f} Hz"
    )


def report_markdown(report: dict[str, Any]) -> str:
    """The report's figures as Markdown tables (what docs/performance.md shows)."""
    m, eb, nv = report["meta"], report["engine_bound"], report["naive_pool"]
    sm, lat, e2e = report["small_messages"], report["latency"], report["end_to_end"]
    cp = report["copy"]
    nl = report["naive_pool_lambda"]
    lines = [
        f"Measured {m['date']} on `{m['host']}` ({m['cpus']} CPUs, Python {m['python']}, "
        f"numpy {m['numpy']}, numba {m['numba']}), commit `{m['commit']}`; frames "
        f"{m['modules']} x {m['module_shape'][0]} x {m['module_shape'][1]} uint16 "
        f"({m['frame_bytes'] / 1e6:.1f} MB).",
        "",
        "| goal | measured | target | met |",
        "|---|---:|---|---|",
    ]
    for g in report["goals"]:
        lines.append(
            f"| {g['goal']} | {g['measured']:.3g} | {g['target']} | {'yes' if g['met'] else 'no'} |"
        )
    stream = cp.get("streaming", {}).get("fps", math.nan)
    lines += [
        "",
        "| measurement | value |",
        "|---|---:|",
        f"| copy anchor (memcpy, one process, reused buffer), frames/s | {cp['fps']:.0f} |",
        f"| streaming-copy reference (one process), frames/s | {stream:.0f} |",
        f"| engine, null kernel, 2 workers, frames/s (steady) | {eb['fps_steady']:.0f} |",
        f"| engine, null kernel, 2 workers, GB/s (steady) | {eb['gbps_steady']:.2f} |",
        f"| engine, null kernel, 2 workers, frames/s (whole run, start-up included) | "
        f"{eb['fps_wall']:.0f} |",
        f"| engine / streaming-copy reference | {eb['ratio_vs_streaming_copy']:.2f} |",
        f"| naive `multiprocessing.Pool` ({nv['workers']} workers, pickled frames), frames/s "
        f"| {nv['pool']['fps']:.1f} |",
        f"| engine, same chain and workers, frames/s | {nv['engine']['fps_steady']:.0f} |",
        f"| naive `Pool`, LAMBDA chain ({nl['workers']} workers), frames/s | "
        f"{nl['pool']['fps']:.2f} |",
        f"| engine, LAMBDA chain, same workers, frames/s | {nl['engine_fps']:.2f} |",
        f"| 1 KB messages/s (steady) | {sm['fps_steady']:.0f} |",
        f"| 1 KB message latency p50 / p99, ms | {sm['latency_p50_s'] * 1e3:.2f} / "
        f"{sm['latency_p99_s'] * 1e3:.2f} |",
        f"| 1 KB messages: ring slots, messages per hand-over to the workers | "
        f"{sm.get('slots', 0)}, {sm.get('frames_per_handover', math.nan):.1f} |",
        "",
        "| workers | frames/s | speedup | efficiency | machine CPU speedup | "
        + " | ".join(f"{k} ms" for k in e2e["kernel_ms"])
        + " |",
        "|---:|---:|---:|---:|---:|" + "---:|" * len(e2e["kernel_ms"]),
    ]
    for r in report["scaling"]["runs"]:
        lines.append(
            f"| {r['workers']} | {r['fps_steady']:.2f} | {r['speedup']:.2f} | "
            f"{r['efficiency']:.2f} | {r.get('machine_cpu_speedup', math.nan):.2f} | "
            + " | ".join(f"{r['kernel_ms'].get(k, math.nan):.1f}" for k in e2e["kernel_ms"])
            + " |"
        )
    st = report["startup"]
    cold = st.get("cold", {}).get("first_result_s", math.nan)
    lines += [
        "",
        "| end to end (1 worker) | value |",
        "|---|---:|",
        f"| sum of the stages' kernel times, ms | {e2e['kernel_sum_ms']:.1f} |",
        f"| frames/s if the engine cost nothing (1 / sum) | {e2e['ideal_fps']:.2f} |",
        f"| frames/s measured | {e2e['fps']:.2f} |",
        f"| worker time per frame (claim to done), ms | {e2e['worker_busy_ms']:.2f} |",
        f"| engine overhead in the worker per frame (that minus the kernels), ms | "
        f"{e2e['engine_overhead_ms_per_frame']:.2f} |",
        f"| wall time per frame minus the kernels, ms | {e2e['wall_minus_kernels_ms']:.2f} |",
        "",
        "| latency and start-up | value |",
        "|---|---:|",
        f"| source paced at, frames/s ({lat['workers']} workers) | {lat['rate']:.2f} |",
        f"| dispatch -> publish p50 / p99, ms | {lat['p50_s'] * 1e3:.1f} / "
        f"{lat['p99_s'] * 1e3:.1f} |",
        f"| chain's own time per frame, ms | {lat['chain_ms']:.1f} |",
        f"| p99 with the start-up backlog, ms | {lat['p99_with_startup_s'] * 1e3:.1f} |",
        f"| first result, cold Numba cache, s | {cold:.2f} |",
        f"| first result, warm Numba cache, s | {st['warm']['first_result_s']:.2f} |",
    ]
    mo = report["model"]
    a = mo["assumptions"]
    lines += [
        "",
        "| node model | value |",
        "|---|---:|",
        f"| CPU time per frame (kernels + engine), ms | {mo['cpu_ms_per_frame']:.1f} |",
        f"| bytes moved per frame (reads + writes), MB | {mo['bytes_per_frame'] / 1e6:.0f} |",
        f"| {a['cores']:.0f}-core node, compute bound ({mo['workers']:.0f} workers), frames/s | "
        f"{mo['fps_compute']:.0f} |",
        f"| dispatcher bound, frames/s | {mo['fps_dispatcher']:.0f} |",
        f"| memory bound at {a['mem_bandwidth_gbs']:.0f} GB/s, frames/s | {mo['fps_memory']:.0f} |",
        f"| **predicted frames/s per node** ({mo['bound_by']}) | **{mo['predicted_fps']:.0f}** |",
        f"| **nodes for a {a['detector_rate_hz']:.0f} Hz LAMBDA 9M** | "
        f"**{mo['nodes_for_detector']}** |",
    ]
    text = "\n".join(lines) + "\n"
    if "beamline" in report:
        from shmpipe.beamline_bench import report_markdown as beamline_markdown

        text += "\n" + beamline_markdown(report["beamline"])
    return text
