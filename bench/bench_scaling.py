"""Scaling of the LAMBDA chain over 1..N workers, and end to end against the kernel times.

The worker counts run in one session, one after the other; the speedup of N workers is taken
against the 1-worker run of the same session. Run::

    PYTHONPATH=. python -m pytest bench/bench_scaling.py -s
"""

from __future__ import annotations

import os

import pytest

from bench.conftest import report
from shmpipe.benchmark import run_pipeline, sim_parts_lz4, sim_source

WORKERS = list(range(1, (os.cpu_count() or 1) + 1))
_FPS: dict[int, float] = {}


@pytest.mark.parametrize("workers", WORKERS)
def test_scaling(benchmark, sizes, tmp_path, chain, table_cache, workers):
    """Frames/s of the LAMBDA chain on ``workers`` workers; speedup and efficiency vs 1."""
    sim_parts_lz4(sizes.shape, 12)
    src = sim_source(sizes.chain_frames, sizes.shape, compression="bitshuffle-lz4")
    r = benchmark.pedantic(
        run_pipeline, args=(src, chain, workers, tmp_path), kwargs={"cache_dir": str(table_cache)}
    )
    assert r.frames == sizes.chain_frames, r.error
    _FPS[workers] = r.fps_steady
    figures = {"fps": r.fps_steady, "kernel_ms_sum": sum(r.kernel_ms.values())}
    if 1 in _FPS:
        figures["speedup"] = r.fps_steady / _FPS[1]
        figures["efficiency"] = figures["speedup"] / workers
    report(benchmark, f"scaling {workers} workers", **figures, **r.kernel_ms)


def test_end_to_end_vs_kernel_times(benchmark, sizes, tmp_path, chain, table_cache):
    """One worker: the chain's frames/s against 1 / (sum of its stages' kernel times); the
    difference per frame is what the engine adds."""
    sim_parts_lz4(sizes.shape, 12)
    src = sim_source(sizes.chain_frames, sizes.shape, compression="bitshuffle-lz4")
    r = benchmark.pedantic(
        run_pipeline, args=(src, chain, 1, tmp_path), kwargs={"cache_dir": str(table_cache)}
    )
    assert r.frames == sizes.chain_frames, r.error
    kernel_s = sum(r.kernel_ms.values()) / 1e3
    report(
        benchmark,
        "end to end",
        fps=r.fps_steady,
        ideal_fps=1 / kernel_s,
        fps_over_ideal=r.fps_steady * kernel_s,
        engine_ms_in_worker=r.worker_busy_ms - kernel_s * 1e3,
        wall_minus_kernels_ms=(1 / r.fps_steady - kernel_s) * 1e3,
        **r.kernel_ms,
    )


def test_naive_pool_lambda_chain(benchmark, sizes, tmp_path, chain, table_cache):
    """For reference: the LAMBDA chain through ``multiprocessing.Pool`` (compressed frames
    pickled to 2 workers), then through the engine with 2 workers."""
    from shmpipe.benchmark import naive_pool_rate

    sim_parts_lz4(sizes.shape, 12)
    frames = 6 if sizes.smoke else 40
    src = sim_source(frames, sizes.shape, compression="bitshuffle-lz4")
    pool = naive_pool_rate(src, chain, 2, table_cache)
    r = benchmark.pedantic(
        run_pipeline, args=(src, chain, 2, tmp_path), kwargs={"cache_dir": str(table_cache)}
    )
    assert r.frames == frames, r.error
    report(
        benchmark,
        "naive pool, LAMBDA chain",
        pool_fps=pool["fps"],
        engine_fps=r.fps_steady,
        speedup=r.fps_steady / pool["fps"],
    )
