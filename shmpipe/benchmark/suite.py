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

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe.benchmark import bandwidth, model
from shmpipe.benchmark.anchors import cpu_anchor, memory_anchor
from shmpipe.benchmark.beamline import report_markdown as beamline_markdown
from shmpipe.benchmark.beamline import suite_step
from shmpipe.benchmark.copy import copy_rate
from shmpipe.benchmark.inputs import (
    LAMBDA_MODULE_SHAPE,
    QUICK_MODULE_SHAPE,
    SuiteOptions,
    _image_px,
    geometry_file,
    lambda_chain,
    null_chain,
    sim_parts,
    sim_parts_lz4,
    sim_source,
)
from shmpipe.benchmark.naive_pool import naive_pool_rate
from shmpipe.benchmark.pipeline_run import percentiles, run_pipeline
from shmpipe.benchmark.report import (
    QUICK_NOTE,
    _fmt_ms,
    _jsonable,
    _meta,
    goals,
    plots,
    report_markdown,
)
from shmpipe.benchmark.startup import startup_time
from shmpipe.shm.layout import (
    LATENCY_BUCKETS_S,
)


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
            log(f"  first result after {first['first_result_s']:.2f} s")
        log("start-up with a warm Numba cache ...")
        startup["warm"] = startup_time(src_c, chain, 1, numba_cache, cache, work)
        log(f"  first result after {startup['warm']['first_result_s']:.2f} s")
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
        backlog = "" if len(lat.latency_s) else ", start-up backlog only"
        log(
            f"  p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms over {len(counted)} frames "
            f"(chain {chain_ms:.1f} ms{backlog})"
        )

        # 7. the model
        geo_px = _image_px(geo)
        moved = model.chain_bytes_per_frame(
            shape, modules, geo_px, model.compressed_frame_bytes(shape, modules)
        )
        # The dispatcher's time per frame, from the null-kernel run (raw frames), scaled to
        # the compressed payload it copies for the LAMBDA chain.
        raw_bytes = float(sum(p.nbytes for p in parts_full))
        comp = moved["dispatcher"] / 2
        dispatcher_ms = 1e3 / report["engine_bound"]["fps_steady"] * comp / raw_bytes
        cores = os.cpu_count() or 1
        report["machine"] = bandwidth.machine(cores)
        log(
            f"  {report['machine']['cpu_model']}: one core reads "
            f"{report['machine']['read_gbs_one_core']:.1f} GB/s, {cores} cores "
            f"{report['machine']['read_gbs_node']:.1f} GB/s"
        )
        report["model"] = model.node_model(
            one["kernel_ms"],
            max(0.0, one["engine_overhead_ms"]),
            dispatcher_ms,
            moved["total"],
            model.ModelAssumptions(mem_bandwidth_gbs=report["machine"]["read_gbs_node"]),
        )
        report["model"]["bytes_by_stage"] = moved
        report["model"]["measured_here_copy_gbps"] = max(m["copy_gbps"] for m in machine)
        # A quick run's toy frames would judge goals and size a cluster on nothing.
        report["goals"] = [] if opts.quick else goals(report)
        if opts.quick:
            report["note"] = QUICK_NOTE.format(shape=shape)
        for path in plots(report, out, lat.latency_s):
            log(f"plot: {path}")
        if not len(lat.latency_s):
            log("no latency plot: no frame was published after the settling time")

        # 8. the beamline chain against the stitch-first chain, side by side
        log("beamline chain vs stitch-first chain ...")
        report["beamline"] = suite_step(opts, geo, shape, modules, work, cache, log)
    (out / "report.md").write_text(report_markdown(report))  # before NaN becomes null
    report = _jsonable(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def run_beamline_alone(opts: SuiteOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``shmpipe bench --beamline``: only the beamline chain against the stitch-first chain;
    report.json and report.md in ``opts.output``."""
    out = Path(opts.output)
    out.mkdir(parents=True, exist_ok=True)
    shape = QUICK_MODULE_SHAPE if opts.quick else LAMBDA_MODULE_SHAPE
    with tempfile.TemporaryDirectory(prefix="shmpipe-bench-") as tmp:
        work = Path(tmp)
        cache = Path.home() / ".cache" / "shmpipe"
        geo = geometry_file(work, shape, 12)
        report: dict[str, Any] = {"meta": _meta(opts, shape, 12)}
        log("beamline chain vs stitch-first chain ...")
        report["beamline"] = suite_step(opts, geo, shape, 12, work, cache, log)
    (out / "report.md").write_text(beamline_markdown(report["beamline"]))
    (out / "report.json").write_text(json.dumps(_jsonable(report), indent=1))
    return report
