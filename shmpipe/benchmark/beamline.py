"""The beamline chain against the stitch-first chain: CPU and bytes per stage, frames/s per
worker, memory per worker, profile agreement, and the node model fed with what was measured.

The two chains compute the same profiles from the same bitshuffle-LZ4 modules (bbox
splitting, Poisson errors, solid angle, polarization, dummy 0, statistics with one ROI):

==============  ==========================================================================
beamline        decompress -> integrate (from the modules) -> statistics (on the modules)
stitch_first    decompress -> stitch (float32 image) -> integrate (image) -> statistics
==============  ==========================================================================

``compare_chains`` measures, in one run and interleaved (A, B, A, B ...) because the machine
is shared and only ratios taken minutes apart are honest:

* per stage, the CPU time of one frame (``time.thread_time`` around each kernel, in this
  process, frames rotating through several result buffers so that, as in the ring, a stage
  reads what the previous one wrote to memory, not to cache) and the bytes it reads and writes;
* each chain through the real engine at 1 and 2 workers: frames/s per worker, each worker's
  CPU time per frame (user + system, sampled: CPU seconds per second in the steady middle
  of the run over the frames per second) and its memory (RSS, and PSS, which
  splits pages shared with other processes, such as the mapped integration tables);
* the largest relative difference between the two chains' profiles;
* the node model (:func:`shmpipe.benchmark.model.node_model`) from the measured CPU and bytes.

``shmpipe bench --beamline`` runs this alone; ``bench/bench_beamline.py`` is its
pytest-benchmark case.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe.api import Frame
from shmpipe.api.message import Message
from shmpipe.benchmark import bandwidth
from shmpipe.benchmark.inputs import (
    KERNELS,
    sim_parts_lz4,
    sim_source,
)
from shmpipe.benchmark.model import ModelAssumptions, compressed_frame_bytes, node_model
from shmpipe.benchmark.pipeline_run import run_pipeline
from shmpipe.benchmark.sampler import DescendantSampler
from shmpipe.config import load_config
from shmpipe.engine.chain import KernelChain
from shmpipe.engine.startup import run_detector

CHAINS = ("beamline", "stitch_first")
COMPARED = ("integrate.radial", "integrate.intensity", "integrate.sigma")
BUFFERS = 4  # result buffers the in-process frames rotate through (4 x 19 MB > the L3 cache)


def chains(geometry: Path, module_shape: tuple[int, int]) -> dict[str, dict[str, Any]]:
    """The ``[kernels]`` tables of both chains for a geometry file (README parameters).

    The detector is not named here: the simulated source declares its layout (the one
    ``geometry`` holds), which is the run's detector (kernels get it at setup).
    """
    from native_kernels.geometry import load_geometry

    geo = load_geometry(str(geometry))
    h, w = geo.shape
    px = geo.pixel_size
    integrate = {
        "kind": f"{KERNELS}:AzimuthalIntegrate",
        "dist": 0.3,
        "poni1": 0.47 * h * px[0],  # where the simulator puts the beam
        "poni2": 0.52 * w * px[1],
        "wavelength": 1e-10,
        "npt": 1000,
        "unit": "q_nm^-1",
        "method": "bbox",
        "polarization_factor": 0.99,
        "error_model": "poisson",
        "dummy": 0.0,
    }
    stats = {
        "kind": f"{KERNELS}:FrameStats",
        "threshold": 150.0,
        "rois": [[0, module_shape[0], 0, module_shape[1]]],
        "dummy": 0.0,
    }
    decompress = {"kind": f"{KERNELS}:LambdaDecompress"}
    modules = "decompress.modules"
    return {
        "beamline": {
            "decompress": decompress,
            "integrate": {**integrate, "input": modules},
            "stats": {**stats, "input": modules},
        },
        "stitch_first": {
            "decompress": decompress,
            "stitch": {"kind": f"{KERNELS}:LambdaStitch", "input": modules},
            "integrate": integrate,
            "stats": stats,
        },
    }


# -- per stage, in this process ----------------------------------------------------------------
@dataclass
class StageCosts:
    """CPU time and bytes moved per frame by each kernel of a chain (in-process)."""

    cpu_ms: dict[str, float]
    bytes: dict[str, float]
    outputs: dict[str, np.ndarray] = field(repr=False)
    """The small outputs of the last frame (profiles, statistics)."""
    alone_ms: dict[str, float] = field(default_factory=dict)
    """CPU time of each integration kernel run alone, the same frame again and again."""
    engines: dict[str, dict] = field(default_factory=dict)
    """The integration engines chosen on this CPU, by kind of frame."""

    @property
    def cpu_ms_total(self) -> float:
        return sum(self.cpu_ms.values())


def _stage_bytes(kernel: Any, chain_arrays: dict[str, np.ndarray], compressed: float) -> float:
    """Bytes a kernel reads and writes per frame (inputs, outputs and tables it streams)."""
    from native_kernels import shmpipe_kernels as nk

    def size(name: str) -> int:
        return int(chain_arrays[name].nbytes)

    if isinstance(kernel, nk.LambdaDecompress):
        raw = size(f"{kernel.name}.modules")
        # Payloads in, modules out: bitshuffle's decoder writes straight into the slot.
        return compressed + raw
    if isinstance(kernel, nk.LambdaStitch):
        return size(kernel.params.input) + size(f"{kernel.name}.image")
    if isinstance(kernel, nk.AzimuthalIntegrate) and kernel.params.input in chain_arrays:
        item = chain_arrays[kernel.params.input].dtype.itemsize
        return float(kernel.plan.bytes_per_frame(item))  # the pixels and the table it streams
    if isinstance(kernel, nk.FrameStats) and kernel.params.input in chain_arrays:
        return float(size(kernel.params.input))
    return math.nan  # a kernel this measurement does not know, or one reading the parts


def stage_costs(
    source: dict[str, Any], kernels: dict[str, Any], frames: int, cache_dir: Path
) -> StageCosts:
    """Run ``frames`` frames through the chain in a child process, timing each kernel's CPU.

    The child is a fresh interpreter (spawned, not forked: a fork of a process that has run
    bitshuffle's OpenMP deadlocks in its first bitshuffle call) with one OpenMP thread, as a
    worker: bitshuffle's OpenMP runtime must never start in this process (it could not fork
    the pipelines afterwards), and on a busy machine its idle threads spin. Two frames are
    run first and not counted (compilation is cached, but the first calls load it). Each
    frame gets the next of ``BUFFERS`` result buffers, as frames get the next slot of the
    ring.
    """
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1, initializer=_one_thread) as pool:
        return pool.apply(_stage_costs_here, (source, kernels, frames, cache_dir))


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # before bitshuffle loads its OpenMP runtime


def _stage_costs_here(
    source: dict[str, Any], kernels: dict[str, Any], frames: int, cache_dir: Path
) -> StageCosts:
    cfg = load_config(raw={"source": source, "kernels": kernels, "sinks": [{"kind": "null"}]})
    src = cfg.source_instance()
    src.open()
    chain = KernelChain(cfg.kernel_instances())
    src_layout = src.layout()
    # The run's detector as a run hands it to the kernels ([detector], else the source's).
    detector = run_detector(cfg, src_layout)
    layout = chain.setup(src_layout.parts, Path(cache_dir), 1, 0, detector)
    # Touched before timing, as the ring's slots are after their first lap (a fresh zeroed
    # buffer would charge its page faults to whichever kernel writes it first).
    bufs = [np.ones(max(layout.result_bytes, 64), np.uint8) for _ in range(BUFFERS)]
    views = [
        chain.output_views(lambda off, dt, shape, b=b: np.ndarray(shape, dt, buffer=b, offset=off))
        for b in bufs
    ]
    messages = []
    while len(messages) < min(frames + 2, 8):
        msg = src.next(1.0)
        if isinstance(msg, Message):
            messages.append(msg)
    src.close()
    compressed = float(np.mean([sum(p.nbytes for p in m.parts) for m in messages]))
    names = [k.name for k in chain.kernels]
    cpu = dict.fromkeys(names, 0)
    for i in range(frames + 2):
        m = messages[i % len(messages)]
        v = views[i % BUFFERS]
        frame = Frame(m.stream, m.message_id, m.name, m.meta, {}, m.parts, v.by_name)
        for k, out in zip(chain.kernels, v.per_kernel, strict=True):
            t0 = time.thread_time_ns()
            k.process(frame, out)
            if i >= 2:
                cpu[k.name] += time.thread_time_ns() - t0
    last = views[(frames + 1) % BUFFERS].by_name
    alone, engines = _integration_alone(chain.kernels, frame, v, frames)
    return StageCosts(
        cpu_ms={n: cpu[n] / frames / 1e6 for n in names},
        bytes={k.name: _stage_bytes(k, last, compressed) for k in chain.kernels},
        outputs={n: a.copy() for n, a in last.items() if a.nbytes < 2**20},
        alone_ms=alone,
        engines=engines,
    )


def _integration_alone(kernels, frame: Frame, views, frames: int):
    """Each integration kernel alone on the chain's last frame (its input and table already
    in memory, in cache where they fit): CPU ms a frame, and the engines it chose."""
    from native_kernels import shmpipe_kernels as nk
    from native_kernels.bslz4_decode import choice

    alone: dict[str, float] = {}
    engines: dict[str, dict] = {}
    for k, out in zip(kernels, views.per_kernel, strict=True):
        if isinstance(k, nk.LambdaDecompress):  # its decoder build, chosen as engines are
            engines[f"{k.name} bitshuffle-LZ4"] = choice(out["modules"].dtype.itemsize)
        if not isinstance(k, nk.AzimuthalIntegrate):
            continue
        k.process(frame, out)
        t0 = time.thread_time_ns()
        for _ in range(frames):
            k.process(frame, out)
        alone[k.name] = (time.thread_time_ns() - t0) / frames / 1e6
        engines.update(k.plan.engine_choices())
    return alone, engines


def max_relative_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest |a - b| / |a| over the compared profiles (bins where a is 0 compare absolutely)."""
    worst = 0.0
    for name in COMPARED:
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        scale = np.where(x != 0, np.abs(x), 1.0)
        worst = max(worst, float(np.max(np.abs(x - y) / scale)))
    return worst


# -- through the engine, with the workers' CPU and memory sampled ------------------------------
def engine_run(
    source: dict[str, Any], kernels: dict[str, Any], workers: int, workdir: Path, cache_dir: Path
) -> dict[str, Any]:
    """One run through the engine: frames/s (per worker too), worker CPU per frame, memory."""
    with DescendantSampler() as sampler:
        r = run_pipeline(source, kernels, workers, workdir, cache_dir=str(cache_dir))
    peaks = [sampler.peak.get(pid) for pid in r.worker_pids]
    # CPU per frame in steady state: the workers' CPU seconds per second over the frames per
    # second (start-up, table loading and shut-down left out).
    busy = sum(sampler.cpu_rate(pid) for pid in r.worker_pids) if r.worker_pids else math.nan
    fps = r.fps_steady
    cpu_how = "steady"
    if not math.isfinite(busy) and r.worker_pids and r.frames:
        # A run too short for a steady window (--quick): the workers' whole CPU time, start-up
        # (table mapping, loading compiled loops) included, over every frame.
        busy = sum(sampler.last.get(pid, {}).get("cpu_s", math.nan) for pid in r.worker_pids)
        fps = r.frames
        cpu_how = "whole run"
        if not math.isfinite(busy):  # a worker never sampled: the engine's own busy time
            busy, fps, cpu_how = r.worker_busy_ms / 1e3, 1.0, "busy time (too short to sample)"
    mib = 2.0**20

    def mean(key: str) -> float:
        vals = [p[key] for p in peaks if p]
        return float(np.mean(vals)) / mib if vals else math.nan

    return {
        "workers": workers,
        "frames": r.frames,
        "fps": r.fps_steady,
        "fps_per_worker": r.fps_steady / workers,
        "worker_cpu_ms_per_frame": 1e3 * busy / fps if fps > 0 else math.nan,
        "worker_cpu_how": cpu_how,
        "dispatcher_cpu_ms_per_frame": 1e3 * sampler.cpu_rate(r.dispatcher_pid) / r.fps_steady
        if r.fps_steady > 0
        else math.nan,
        "kernel_wall_ms": r.kernel_ms,
        "rss_mib_per_worker": mean("rss"),
        "pss_mib_per_worker": mean("pss"),
        "uss_mib_per_worker": mean("uss"),
        "error": r.error,
    }


# -- the comparison ------------------------------------------------------------------------------
def compare_chains(
    geometry: Path,
    module_shape: tuple[int, int],
    modules: int,
    workdir: Path,
    cache_dir: Path,
    frames: int = 100,
    stage_frames: int = 20,
    workers: tuple[int, ...] = (1, 2),
    memory_workers: tuple[int, ...] = (1, 2, 4),
    repeats: int = 2,
    log=print,
) -> dict[str, Any]:
    """Measure both chains side by side (see the module docstring); return the report."""
    kernels = chains(geometry, module_shape)
    here = bandwidth.machine(os.cpu_count() or 1)
    log(
        f"  {here['cpu_model']}: one core reads {here['read_gbs_one_core']:.1f} GB/s, "
        f"{here['node_processes']} cores {here['read_gbs_node']:.1f} GB/s"
    )
    sim_parts_lz4(module_shape, modules)  # the simulator's compressed pool, made once
    src = sim_source(frames, module_shape, modules, "bitshuffle-lz4")
    stage_src = sim_source(stage_frames + 2, module_shape, modules, "bitshuffle-lz4")
    stages: dict[str, list[StageCosts]] = {c: [] for c in CHAINS}
    runs: dict[str, dict[int, list[dict]]] = {c: {w: [] for w in workers} for c in CHAINS}
    for rep in range(repeats):
        for c in CHAINS:  # interleaved: A, B, A, B
            s = stage_costs(stage_src, kernels[c], stage_frames, cache_dir)
            stages[c].append(s)
            log(f"  {c} (round {rep + 1}): {s.cpu_ms_total:.1f} ms CPU/frame " + _ms(s.cpu_ms))
        for w in workers:
            for c in CHAINS:
                run = engine_run(src, kernels[c], w, workdir, cache_dir)
                runs[c][w].append(run)
                log(
                    f"  {c}, {w} worker(s): {run['fps_per_worker']:.1f} frames/s per worker, "
                    f"{_f(run['worker_cpu_ms_per_frame'], 1)} ms worker CPU/frame"
                    + (f" ({run['worker_cpu_how']})" if run["worker_cpu_how"] != "steady" else "")
                )
    report: dict[str, Any] = {
        "frames": frames,
        "stage_frames": stage_frames,
        "machine": here,
        "chains": {},
    }
    node = ModelAssumptions(mem_bandwidth_gbs=here["read_gbs_node"])
    compressed = compressed_frame_bytes(module_shape, modules)
    for c in CHAINS:
        best = {k: min(s.cpu_ms[k] for s in stages[c]) for k in stages[c][0].cpu_ms}
        nbytes = stages[c][0].bytes
        per_w = {}
        for w in workers:
            rs = runs[c][w]
            per_w[w] = {
                "fps_per_worker": float(np.median([r["fps_per_worker"] for r in rs])),
                "worker_cpu_ms_per_frame": float(
                    np.median([r["worker_cpu_ms_per_frame"] for r in rs])
                ),
                "rss_mib_per_worker": float(np.median([r["rss_mib_per_worker"] for r in rs])),
                "pss_mib_per_worker": float(np.median([r["pss_mib_per_worker"] for r in rs])),
                "runs": rs,
            }
        moved = {"dispatcher": 2.0 * compressed, **nbytes}
        moved["total"] = sum(moved.values())
        # The dispatcher's CPU per frame and the engine's share of a worker's CPU beyond the
        # kernels, in steady state, from the 1-worker runs.
        one = runs[c][workers[0]]
        dispatcher_ms = float(np.median([r["dispatcher_cpu_ms_per_frame"] for r in one]))
        worker_ms = float(np.median([r["worker_cpu_ms_per_frame"] for r in one]))
        overhead = max(0.0, worker_ms - sum(best.values())) if math.isfinite(worker_ms) else 0.0
        model = node_model(best, overhead, dispatcher_ms, moved["total"], node)
        bounds = bandwidth.bandwidth_bounds(best, moved, here["read_gbs_one_core"])
        chain_bound = sum(moved[k] for k in best) / (here["read_gbs_one_core"] * 1e9) * 1e3
        alone = {k: min(s.alone_ms[k] for s in stages[c]) for k in stages[c][0].alone_ms}
        in_pipeline = {
            k: float(np.median([r["kernel_wall_ms"].get(k, math.nan) for r in one])) for k in alone
        }
        report["chains"][c] = {
            "kernels": list(kernels[c]),
            "stage_cpu_ms": best,
            "cpu_ms_per_frame": sum(best.values()),
            "bytes_by_stage": moved,
            "bandwidth_bounds": bounds,
            "over_bandwidth_bound": sum(best.values()) / chain_bound,
            "integrate_alone_ms": alone,
            "integrate_in_pipeline_ms": in_pipeline,
            "integrate_engines": stages[c][-1].engines,
            "engine": per_w,
            "model": model,
        }
    a, b = (report["chains"][c] for c in CHAINS)
    report["max_relative_difference"] = max_relative_difference(
        stages["stitch_first"][-1].outputs, stages["beamline"][-1].outputs
    )
    report["cpu_ratio"] = b["cpu_ms_per_frame"] / a["cpu_ms_per_frame"]
    report["fps_per_worker_ratio"] = {
        w: a["engine"][w]["fps_per_worker"] / b["engine"][w]["fps_per_worker"] for w in workers
    }
    report["memory"] = memory_by_workers(src, kernels, memory_workers, workdir, cache_dir, log)
    return report


def memory_by_workers(
    source: dict[str, Any],
    kernels: dict[str, dict[str, Any]],
    workers: tuple[int, ...],
    workdir: Path,
    cache_dir: Path,
    log=print,
) -> dict[str, dict[int, dict[str, float]]]:
    """RSS, PSS and USS per worker (MiB) of the beamline chain at each worker count."""
    out: dict[str, dict[int, dict[str, float]]] = {"beamline": {}}
    short = dict(source, frames=max(4 * max(workers), 12))
    for w in workers:
        run = engine_run(short, kernels["beamline"], w, workdir, cache_dir)
        out["beamline"][w] = {
            k: run[k] for k in ("rss_mib_per_worker", "pss_mib_per_worker", "uss_mib_per_worker")
        }
        log(
            f"  memory, {w} worker(s): RSS {_f(run['rss_mib_per_worker'], 0)} MiB, "
            f"PSS {_f(run['pss_mib_per_worker'], 0)} MiB, "
            f"USS {_f(run['uss_mib_per_worker'], 0)} MiB per worker"
        )
    return out


def _ms(d: dict[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.1f}" for k, v in d.items()) + ")"


def report_markdown(r: dict[str, Any]) -> str:
    """The comparison as a Markdown section."""
    a, b = r["chains"]["beamline"], r["chains"]["stitch_first"]
    workers = list(a["engine"])
    m = r.get("machine", {})
    lines = ["## Beamline chain vs stitch-first chain", ""]
    if m:
        lines += [
            f"CPU: {m['cpu_model']}; one core reads {m['read_gbs_one_core']:.1f} GB/s, "
            f"{m['node_processes']} cores side by side {m['read_gbs_node']:.1f} GB/s (numpy sum "
            "over 64 MiB, measured in this run).",
            "",
        ]
    lines += [
        "| | beamline | stitch-first | ratio |",
        "|---|---:|---:|---:|",
        f"| CPU per frame (in-process, sum of stages), ms | {a['cpu_ms_per_frame']:.1f} | "
        f"{b['cpu_ms_per_frame']:.1f} | {r['cpu_ratio']:.2f} |",
    ]
    if "over_bandwidth_bound" in a:
        lines.append(
            f"| CPU per frame over the bandwidth bound (bytes / one core's read bandwidth) | "
            f"{a['over_bandwidth_bound']:.1f} | {b['over_bandwidth_bound']:.1f} | |"
        )
    for k in a.get("integrate_alone_ms", {}):
        al, bl = a["integrate_alone_ms"][k], b["integrate_alone_ms"].get(k, math.nan)
        lines += [
            f"| {k} alone (same frame and table, repeated), CPU ms | {al:.1f} | {bl:.1f} | |",
            f"| {k} in the chain (in-process) over alone | {a['stage_cpu_ms'][k] / al:.2f} | "
            f"{b['stage_cpu_ms'][k] / bl:.2f} | |",
        ]
    w0 = workers[0]
    lines.append(
        f"| worker CPU per frame in the pipeline ({w0} worker) over the in-process chain | "
        f"{a['engine'][w0]['worker_cpu_ms_per_frame'] / a['cpu_ms_per_frame']:.2f} | "
        f"{b['engine'][w0]['worker_cpu_ms_per_frame'] / b['cpu_ms_per_frame']:.2f} | |"
    )
    for w in workers:
        ea, eb = a["engine"][w], b["engine"][w]
        lines += [
            f"| frames/s per worker, {w} worker(s) | {ea['fps_per_worker']:.1f} | "
            f"{eb['fps_per_worker']:.1f} | {r['fps_per_worker_ratio'][w]:.2f} |",
            f"| worker CPU per frame, {w} worker(s), ms | "
            f"{_f(ea['worker_cpu_ms_per_frame'], 1)} | {_f(eb['worker_cpu_ms_per_frame'], 1)} | |",
            f"| RSS / PSS per worker, {w} worker(s), MiB | {_f(ea['rss_mib_per_worker'], 0)} / "
            f"{_f(ea['pss_mib_per_worker'], 0)} | {_f(eb['rss_mib_per_worker'], 0)} / "
            f"{_f(eb['pss_mib_per_worker'], 0)} | |",
        ]
    ma, mb = a["model"], b["model"]
    if r.get("quick"):  # toy frames: no node sized on them
        ma = mb = None
    lines += (
        []
        if ma is None
        else [
            f"| node model, frames/s ({ma['assumptions']['cores']} cores, memory "
            f"{ma['assumptions']['mem_bandwidth_gbs']:.0f} GB/s) | "
            f"{ma['predicted_fps']:.0f} ({ma['bound_by']}) | {mb['predicted_fps']:.0f} "
            f"({mb['bound_by']}) | |",
            f"| nodes for a 2 kHz LAMBDA 9M | {ma['nodes_for_detector']} | "
            f"{mb['nodes_for_detector']} | |",
        ]
    )
    lines += [
        "",
        f"Largest relative profile difference: {r['max_relative_difference']:.2e}.",
        "",
        "| stage | beamline CPU ms | MB | x bound | stitch-first CPU ms | MB | x bound |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for k in dict.fromkeys([*b["bytes_by_stage"], *a["bytes_by_stage"]]):
        ca, cb = a["stage_cpu_ms"].get(k), b["stage_cpu_ms"].get(k)
        ba, bb = a["bytes_by_stage"].get(k), b["bytes_by_stage"].get(k)
        xa = a.get("bandwidth_bounds", {}).get(k, {}).get("over_bound")
        xb = b.get("bandwidth_bounds", {}).get(k, {}).get("over_bound")
        lines.append(
            f"| {k} | {_f(ca, 1)} | {_f(ba and ba / 1e6, 0)} | {_f(xa, 1)} | {_f(cb, 1)} | "
            f"{_f(bb and bb / 1e6, 0)} | {_f(xb, 1)} |"
        )
    ms, mv = a["stage_cpu_ms"].get("decompress"), a["bytes_by_stage"]
    if ms:  # decoded bytes: what decompress moves less the payload (half the dispatcher's)
        gbs = (mv["decompress"] - mv["dispatcher"] / 2) / ms / 1e6
        lines += ["", f"Decompression (beamline): {gbs:.2f} GB/s of decoded modules per core."]
    engines = {**b.get("integrate_engines", {}), **a.get("integrate_engines", {})}
    if engines:
        lines += ["", "Engines chosen on this CPU (kind of frame or stage: engine, how):", ""]
        lines += [f"- `{k}`: {v['engine']} ({v['how']})" for k, v in sorted(engines.items())]
    mem = r.get("memory", {}).get("beamline", {})
    if mem:
        lines += ["", "| workers | RSS MiB per worker | PSS | USS |", "|---:|---:|---:|---:|"]
        for w, m in mem.items():
            lines.append(
                f"| {w} | {_f(m['rss_mib_per_worker'], 0)} | {_f(m['pss_mib_per_worker'], 0)} | "
                f"{_f(m['uss_mib_per_worker'], 0)} |"
            )
    return "\n".join(lines) + "\n"


def _f(v: float | None, digits: int) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def suite_step(opts, geometry: Path, shape, modules, work: Path, cache: Path, log=print) -> dict:
    """The comparison as a step of ``shmpipe bench`` (sizes from its options)."""
    workers = tuple(w for w in (1, 2) if w in opts.workers) or (opts.workers[0],)
    if opts.quick:  # every code path once, quickly
        workers = workers[:1]
    report = compare_chains(
        geometry,
        shape,
        modules,
        work,
        cache,
        frames=opts.frames or (8 if opts.quick else 150),
        stage_frames=2 if opts.quick else 20,
        workers=workers,
        memory_workers=(1,) if opts.quick else (1, 2, 4),
        repeats=1 if opts.quick else 2,
        log=log,
    )
    report["quick"] = bool(opts.quick)
    return report
