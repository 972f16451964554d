"""Live view benchmarks: what the preview tap and the view cost the pipeline, and how fresh
the image in the browser is.

Run::

    PYTHONPATH=. python -m pytest bench/bench_view.py -s            # measure (LAMBDA 9M frames)
    PYTHONPATH=. python -m pytest bench/bench_view.py --benchmark-disable   # smoke

- throughput of the LAMBDA chain with no tap, with the tap only, and with the tap, the view
  process and a browser stand-in subscribed over the WebSocket, interleaved in one test;
- publish -> image-received latency (p50, p99) for the stitched frame at 10 Hz, and the view
  process's CPU while it serves one client.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from bench.conftest import report
from shmpipe.benchmark import percentiles, run_pipeline, sim_parts_lz4, sim_source


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(port: int, seconds: float, out) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.view_client", str(port), "stitch.image", str(seconds), out]
    )


def _run(mode: str, src, chain, tmp_path, table_cache, seconds: float):
    """One run: ``off`` (no tap), ``tap`` (tap only) or ``view`` (tap, view, one client)."""
    view: dict = {"tap": mode != "off"}
    client = None
    out = tmp_path / f"client-{mode}.json"
    if mode == "view":
        port = _free_port()
        view["port"] = port
        client = _client(port, seconds, str(out))
    r = run_pipeline(src, chain, 2, tmp_path, view=view, cache_dir=str(table_cache))
    got = None
    if client is not None:
        client.wait(timeout=180)
        got = json.loads(out.read_text()) if out.exists() else None
    return r, got


@pytest.mark.timeout(1800)
def test_view_on_vs_off(benchmark, sizes, tmp_path, chain, table_cache):
    """Frames/s of the LAMBDA chain with the view off, the tap only, the view on: off, tap,
    view, off, tap, view ... so that drift of the machine's speed hits all alike."""
    sim_parts_lz4(sizes.shape, 12)
    frames = sizes.chain_frames if sizes.smoke else 160
    src = sim_source(frames, sizes.shape, compression="bitshuffle-lz4")
    rounds = 1 if sizes.smoke else 3
    fps: dict[str, list[float]] = {"off": [], "tap": [], "view": []}

    def measure():
        for _ in range(rounds):
            for mode in fps:
                r, _ = _run(mode, src, chain, tmp_path, table_cache, seconds=30)
                assert r.frames == frames, r.error
                fps[mode].append(r.fps_steady)

    benchmark.pedantic(measure, rounds=1)
    med = {k: float(np.median(v)) for k, v in fps.items()}
    report(
        benchmark,
        "view on vs off",
        fps_off=med["off"],
        fps_tap=med["tap"],
        fps_view=med["view"],
        tap_over_off=med["tap"] / med["off"],
        view_over_off=med["view"] / med["off"],
        goal=0.97,
        runs=" ".join(f"{k}:{'/'.join(f'{x:.3g}' for x in v)}" for k, v in fps.items()),
    )


@pytest.mark.timeout(600)
def test_view_latency_10hz(benchmark, sizes, tmp_path, chain, table_cache):
    """Publish -> image received by a WebSocket client, source at 10 Hz; the view's CPU."""
    sim_parts_lz4(sizes.shape, 12)
    seconds = 4.0 if sizes.smoke else 30.0
    frames = int(10 * (seconds + 15))
    src = sim_source(frames, sizes.shape, compression="bitshuffle-lz4", rate=10.0)
    r, got = benchmark.pedantic(
        _run, args=("view", src, chain, tmp_path, table_cache, seconds), rounds=1
    )
    assert r.frames == frames, r.error
    assert got is not None and got["latency_s"], "the client received no image"
    lat = np.array(got["latency_s"])
    p50, p99 = percentiles(lat)
    h, w = (4 * sizes.shape[0] + 420, 3 * sizes.shape[1] + 60)
    report(
        benchmark,
        "view latency at 10 Hz",
        frame_mpx=12 * sizes.shape[0] * sizes.shape[1] / 1e6,
        image_mpx=h * w / 1e6,
        images=len(lat),
        p50_ms=p50 * 1e3,
        p99_ms=p99 * 1e3,
        view_cpu_percent=100 * got["view_cpu_s"] / got["elapsed_s"],
        goal_p50_ms=200.0,
    )
