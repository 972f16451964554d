"""Engine benchmarks: the engine bound, the naive way, small messages, latency, start-up.

Every ratio is measured side by side inside one test (the anchor right before and after the
run it is compared with), because the machines are shared and noisy. Run::

    PYTHONPATH=. python -m pytest bench/bench_engine.py -s            # measure
    PYTHONPATH=. python -m pytest bench --benchmark-disable           # smoke (CI)
"""

from __future__ import annotations

import numpy as np

from bench.conftest import report
from shmpipe.api.message import Message, payload_bytes
from shmpipe.benchmark import (
    copy_rate,
    naive_pool_rate,
    null_chain,
    percentiles,
    run_pipeline,
    sim_parts,
    sim_parts_lz4,
    sim_source,
    startup_time,
)
from shmpipe.shm.slotio import copy_parts


def test_copy_anchor(benchmark, sizes):
    """The anchor: one process copies an 18.9 MB frame into a reused buffer."""
    parts = sim_parts(sizes.shape)
    dest = np.empty(payload_bytes(parts), dtype=np.uint8)
    msg = Message("copy", 1, "copy", parts)
    benchmark.pedantic(copy_parts, args=(msg, dest), rounds=sizes.copy_repeats, warmup_rounds=1)
    nbytes = sum(p.nbytes for p in parts)
    if not benchmark.disabled:
        med = benchmark.stats.stats.median
        report(benchmark, "copy", frame_bytes=nbytes, fps=1 / med, gbps=nbytes / med / 1e9)


def test_engine_bound(benchmark, sizes, tmp_path):
    """``null`` kernel, 2 workers: frames/s against the copy rate measured alongside."""
    parts = sim_parts(sizes.shape)
    before = copy_rate(parts, sizes.copy_repeats)
    r = benchmark.pedantic(
        run_pipeline,
        args=(sim_source(sizes.null_frames, sizes.shape), null_chain(), 2, tmp_path),
        rounds=1,
    )
    after = copy_rate(parts, sizes.copy_repeats)
    copy_fps = float(np.median([before["fps"], after["fps"]]))
    assert r.frames == sizes.null_frames, r.error
    report(
        benchmark,
        "engine bound",
        fps=r.fps_steady,
        gbps=r.gbps_steady,
        fps_wall=r.fps_wall,
        copy_fps=copy_fps,
        ratio=r.fps_steady / copy_fps,
        goal=0.8,
    )


def test_naive_pool(benchmark, sizes, tmp_path):
    """The same chain through ``multiprocessing.Pool`` pickling frames, then the engine."""
    src = sim_source(sizes.pool_frames, sizes.shape)
    pool = naive_pool_rate(src, null_chain(), 2, tmp_path)
    r = benchmark.pedantic(run_pipeline, args=(src, null_chain(), 2, tmp_path), rounds=1)
    assert r.frames == sizes.pool_frames, r.error
    report(
        benchmark,
        "naive pool",
        pool_fps=pool["fps"],
        engine_fps=r.fps_steady,
        speedup=r.fps_steady / pool["fps"],
        goal=5.0,
    )


def test_small_messages(benchmark, sizes, tmp_path):
    """1 KB payloads through the ``null`` chain: messages/s end to end."""
    src = sim_source(sizes.small_messages, payload=1024)
    r = benchmark.pedantic(run_pipeline, args=(src, null_chain(), 2, tmp_path), rounds=1)
    assert r.frames == sizes.small_messages, r.error
    report(benchmark, "small messages", per_s=r.fps_steady, per_s_wall=r.fps_wall, goal=20000)


def test_latency_half_rate(benchmark, sizes, tmp_path, chain, table_cache):
    """Dispatch -> publish p50/p99 of the LAMBDA chain, source paced at half the rate that
    2 workers sustain (measured first, in this test)."""
    sim_parts_lz4(sizes.shape, 12)
    full = run_pipeline(
        sim_source(sizes.chain_frames, sizes.shape, compression="bitshuffle-lz4"),
        chain,
        2,
        tmp_path,
        cache_dir=str(table_cache),
    )
    rate = 0.5 * full.fps_steady
    settle = 0.0 if sizes.smoke else 2.0  # after all workers are ready: backlog drains
    frames = sizes.chain_frames if sizes.smoke else max(40, int(rate * (15 + settle + 3)))
    src = sim_source(frames, sizes.shape, compression="bitshuffle-lz4", rate=rate)
    r = benchmark.pedantic(
        run_pipeline,
        args=(src, chain, 2, tmp_path),
        kwargs={"cache_dir": str(table_cache), "settle_s": settle},
    )
    assert r.frames == frames, r.error
    chain_ms = sum(r.kernel_ms.values())
    p50, p99 = percentiles(r.latency_s)
    report(
        benchmark,
        "latency",
        rate=rate,
        p50_ms=p50 * 1e3,
        p99_ms=p99 * 1e3,
        chain_ms=chain_ms,
        p99_over_chain=p99 * 1e3 / chain_ms,
        p99_with_startup_ms=percentiles(r.latency_all_s, (99,))[0] * 1e3,
        goal=3.0,
    )


def test_startup_cold_and_warm(benchmark, sizes, tmp_path, chain):
    """Time until the first result in a fresh process: empty Numba and table caches (cold),
    then the same caches again (warm). Smoke mode uses the ``null`` chain (no compiling)."""
    kernels = null_chain() if sizes.smoke else chain
    src = sim_source(4, sizes.shape, compression="none" if sizes.smoke else "bitshuffle-lz4")
    if not sizes.smoke:
        sim_parts_lz4(sizes.shape, 12)
    numba_cache, tables = tmp_path / "numba", tmp_path / "tables"
    numba_cache.mkdir()
    tables.mkdir()
    cold = startup_time(src, kernels, 1, numba_cache, tables, tmp_path)
    warm = benchmark.pedantic(
        startup_time, args=(src, kernels, 1, numba_cache, tables, tmp_path), rounds=1
    )
    assert not cold["error"] and not warm["error"], (cold["error"], warm["error"])
    report(
        benchmark,
        "start-up",
        cold_first_result_s=cold["first_result_s"],
        warm_first_result_s=warm["first_result_s"],
        cold_process_s=cold["process_s"],
        warm_process_s=warm["process_s"],
    )
