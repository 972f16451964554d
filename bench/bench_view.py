"""Live view benchmarks: what the preview tap and the view cost the pipeline, and how fresh
the image in the browser is.

Run::

    PYTHONPATH=. python -m pytest bench/bench_view.py -s            # measure (LAMBDA 9M frames)
    PYTHONPATH=. python -m pytest bench/bench_view.py --benchmark-disable   # smoke

- throughput of the LAMBDA chain with no tap, with the tap only, and with the tap, the view
  process and a browser stand-in subscribed over the WebSocket, interleaved in one test, at
  1 worker (a core to spare for the view, as on a node: 14 workers on 16 cores) and at 2
  workers (every core busy, so the view's CPU comes straight off the workers); with the
  view process's CPU per image sent and the publisher's tap copies;
- the raw view (the decompressed modules of a compressed source, binned from the modules):
  on/off once, with the view's CPU per image;
- publish -> image-received latency (p50, p99) for the stitched frame at 10 Hz, and the view
  process's CPU while it serves one client.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys

import numpy as np
import pytest

from bench.conftest import report
from shmpipe.benchmark import percentiles, run_pipeline, sim_parts_lz4, sim_source

WORKERS = (1, 2)  # a spare core for the view (as on a node), and every core busy
OTHER_NICE = 10  # the view's priority compared with the default (``view.nice`` = 19)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(port: int, image: str, seconds: float, out) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.view_client", str(port), image, str(seconds), out]
    )


def _run(mode, src, chain, tmp_path, table_cache, seconds, workers=2, image="stitch.image"):
    """One run: ``off`` (no tap), ``tap`` (tap only), ``view`` (tap, view, one client) or
    ``view_niceN`` (the same with ``view.nice = N``)."""
    view: dict = {"tap": mode != "off"}
    client = None
    out = tmp_path / f"client-{mode}.json"
    out.unlink(missing_ok=True)
    if mode.startswith("view"):
        port = _free_port()
        view["port"] = port
        if mode.startswith("view_nice"):
            view["nice"] = int(mode.removeprefix("view_nice"))
        client = _client(port, image, seconds, str(out))
    r = run_pipeline(src, chain, workers, tmp_path, view=view, cache_dir=str(table_cache))
    got = None
    if client is not None:
        try:
            # The run is over: a client that received frames sees the socket close at once;
            # one still waiting to connect (a run shorter than the view's start) never will.
            client.wait(timeout=15)
        except subprocess.TimeoutExpired:
            client.terminate()
            client.wait(timeout=15)
        got = json.loads(out.read_text()) if out.exists() else None
    return r, got


def _view_costs(got: dict | None) -> dict[str, float]:
    """The view's CPU per image sent and share of a core, the browser stand-in's share of a
    core (a browser runs elsewhere on a beamline; here it shares the cores), the images it
    got a second, the publisher's time per full tap copy and its copies a second."""
    keys = ("view_ms_per_image", "view_core", "client_core", "images_per_s", "tap_copy_ms")
    if not got or not got.get("images"):
        return dict.fromkeys((*keys, "copies_per_s"), math.nan)
    status = got.get("status") or {}
    first = got.get("first_status") or {}
    copies = status.get("tap_copies") or 0
    window = (copies - first.get("tap_copies", 0)) if first else math.nan
    return {
        "view_ms_per_image": 1e3 * got["view_cpu_s"] / got["images"],
        "view_core": got["view_cpu_s"] / got["elapsed_s"],
        "client_core": got["client_cpu_s"] / got["elapsed_s"],
        "images_per_s": got["images"] / got["elapsed_s"] if got["elapsed_s"] else math.nan,
        "tap_copy_ms": 1e3 * status.get("tap_copy_s", math.nan) / copies if copies else math.nan,
        "copies_per_s": window / got["elapsed_s"] if got["elapsed_s"] else math.nan,
    }


def _median(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else math.nan


def _runs(values: list[float]) -> str:
    return "/".join(f"{x:.3g}" for x in values)


@pytest.mark.timeout(3600)
def test_view_on_vs_off(benchmark, sizes, tmp_path, chain, table_cache):
    """Frames/s of the LAMBDA chain with the view off, the tap only, the view on, at 1 and 2
    workers: off, tap, view at 1 worker, the same at 2, and again, so that drift of the
    machine's speed hits all alike."""
    sim_parts_lz4(sizes.shape, 12)
    frames = sizes.chain_frames if sizes.smoke else 160
    src = sim_source(frames, sizes.shape, compression="bitshuffle-lz4")
    rounds = 1 if sizes.smoke else 3
    other = f"view_nice{OTHER_NICE}"
    modes = ("off", "tap", "view", other)
    fps = {(w, m): [] for w in WORKERS for m in modes}
    costs: dict[tuple[int, str], list[dict]] = {(w, m): [] for w in WORKERS for m in modes}

    def measure():
        for _ in range(rounds):
            for workers in WORKERS:
                for mode in modes:
                    r, got = _run(mode, src, chain, tmp_path, table_cache, 60, workers)
                    assert r.frames == frames, r.error
                    fps[workers, mode].append(r.fps_steady)
                    if mode.startswith("view"):
                        costs[workers, mode].append(_view_costs(got))

    benchmark.pedantic(measure, rounds=1)
    for workers in WORKERS:
        med = {m: float(np.median(fps[workers, m])) for m in modes}
        cost = {k: _median([c[k] for c in costs[workers, "view"]]) for k in _view_costs(None)}
        alt = {k: _median([c[k] for c in costs[workers, other]]) for k in _view_costs(None)}
        report(
            benchmark,
            f"view on vs off, {workers} worker{'s' if workers > 1 else ''}",
            fps_off=med["off"],
            fps_tap=med["tap"],
            fps_view=med["view"],
            tap_over_off=med["tap"] / med["off"],
            view_over_off=med["view"] / med["off"],
            **{f"{other}_over_off": med[other] / med["off"]},
            goal=0.97,
            **cost,
            **{f"{other}_{k}": alt[k] for k in ("images_per_s", "copies_per_s", "view_core")},
            runs=" ".join(f"{m}:{_runs(fps[workers, m])}" for m in modes),
        )


@pytest.mark.timeout(900)
def test_raw_view_on_vs_off(benchmark, sizes, tmp_path, chain, table_cache):
    """The raw view of a compressed source (decompress, integrate and statistics from the
    modules, no stitched image): the view shows ``raw``, the decompressed modules binned
    straight from the stack. One off/view pair at 1 worker (smoke: paced at 10 Hz for 4 s, so
    that the view is up while frames come)."""
    sim_parts_lz4(sizes.shape, 12)
    frames = 40 if sizes.smoke else 160
    rate = {"rate": 10.0} if sizes.smoke else {}
    src = sim_source(frames, sizes.shape, compression="bitshuffle-lz4", **rate)
    modules = "decompress.modules"
    raw_chain = {k: v for k, v in chain.items() if k != "stitch"}
    raw_chain["integrate"] = {**chain["integrate"], "input": modules}
    raw_chain["stats"] = {**chain["stats"], "input": modules}
    fps, got = {}, None

    def measure():
        nonlocal got
        for mode in ("off", "view"):
            r, g = _run(mode, src, raw_chain, tmp_path, table_cache, 60, 1, image="raw")
            assert r.frames == frames, r.error
            fps[mode] = r.fps_steady
            got = g or got

    benchmark.pedantic(measure, rounds=1)
    assert got is not None and got["images"], "the client received no raw image"
    report(
        benchmark,
        "raw view on vs off, 1 worker",
        fps_off=fps["off"],
        fps_view=fps["view"],
        view_over_off=fps["view"] / fps["off"],
        images=got["images"],
        **_view_costs(got),
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
    costs = _view_costs(got)
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
        view_ms_per_image=costs["view_ms_per_image"],
        tap_copy_ms=costs["tap_copy_ms"],
        images_per_s=costs["images_per_s"],
        copies_per_s=costs["copies_per_s"],
        goal_p50_ms=200.0,
    )


def _render_inputs(sizes):
    """A stitched-size float32 frame (gaps NaN) and its twelve uint16 modules."""
    from native_kernels.geometry import DetectorGeometry
    from shmpipe.view.assemble import assemble, geometry_for

    rng = np.random.default_rng(0)
    parts = [rng.poisson(40.0, sizes.shape).astype(np.uint16) for _ in range(12)]
    geometry = geometry_for(12, sizes.shape)
    if not sizes.smoke:
        assert geometry == DetectorGeometry.default_lambda9m()
    return parts, geometry, assemble(parts)


RENDER_STEPS = ("bin", "raw_from_modules", "raw_assembled", "percentiles", "indices", "png")


@pytest.mark.parametrize("step", RENDER_STEPS)
def test_render_step(benchmark, sizes, step):
    """One image's steps in the view, 1024 wide: binning the stitched-size frame, the raw
    frame binned from its modules (and, for comparison, assembled then binned), contrast
    from percentiles, scaling to colour indices and the PNG."""
    from shmpipe.view.binning import to_indices
    from shmpipe.view.rawbin import render_parts
    from shmpipe.view.render import RenderParams, bin_image, contrast, render

    parts, geometry, image = _render_inputs(sizes)
    params = RenderParams(width=1024 if not sizes.smoke else 50)
    rendered = render(image, params)
    binned = bin_image(image, rendered.factor, False)
    vmin, vmax = contrast(binned, params)
    run = {
        "bin": lambda: bin_image(image, rendered.factor, False),
        "raw_from_modules": lambda: render_parts(parts, params, geometry),
        "raw_assembled": lambda: render(_assemble(parts), params),
        "percentiles": lambda: contrast(binned, params),
        "indices": lambda: to_indices(binned, vmin, vmax, 0),
        "png": rendered.png,
    }[step]
    benchmark.pedantic(run, rounds=3 if sizes.smoke else 30, warmup_rounds=1)
    report(
        benchmark,
        f"render step {step}",
        image=f"{image.shape[1]}x{image.shape[0]}",
        binned=f"{binned.shape[1]}x{binned.shape[0]}",
        mean_ms=benchmark.stats.stats.mean * 1e3 if benchmark.stats else math.nan,
    )


def _assemble(parts):
    from shmpipe.view.assemble import assemble

    return assemble(parts)
