"""Benchmarks of the native kernels on a full LAMBDA 9M frame, pyFAI timed in the same run.

Run (one thread everywhere, as the workers run)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 pytest bench/bench_kernels.py
    pytest bench/bench_kernels.py --benchmark-disable     # smoke mode: everything runs once

At the end a table is printed: each kernel's best time, its speed-up over the pyFAI call with
the same corrections (our integrate1d without splitting and with bbox, from the stitched
image, float32 or uint16, and from the uint16 modules), the integration engine chosen for
each kind of frame on this CPU, and its bandwidth fraction: the bytes the kernel must read and write
divided by the copy bandwidth measured in this run, over the kernel's time (1.0 = as fast as
the memory allows). Frames rotate through 4 buffers (more than the L3 cache holds), so data
comes from memory as it does in a streaming pipeline.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before pyFAI loads its OpenMP runtime
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import itertools  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from native_kernels.bslz4_decode import choice  # noqa: E402
from native_kernels.compression import compress, decompress_into  # noqa: E402
from native_kernels.geometry import DetectorGeometry  # noqa: E402
from native_kernels.integrator import AzimuthalIntegrator  # noqa: E402
from native_kernels.stats import frame_statistics  # noqa: E402
from native_kernels.stitch import Stitcher  # noqa: E402

NFRAMES = 4
NPT = 1000
PARAMS = (0.25, 0.08, 0.13, 0.03, -0.02, 0.0)  # tilted, beam off-centre
WL = 1.0e-10
POL = 0.99
GEO = DetectorGeometry.default_lambda9m()
NPIX = GEO.n_pixels  # 9.63 Mpx of module pixels
PART_BYTES = NPIX * 2

RESULTS: dict[str, float] = {}
BYTES: dict[str, int] = {}


def _record(benchmark, name: str, nbytes: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None with --benchmark-disable
        RESULTS[name] = stats.stats.min
        BYTES[name] = nbytes


def _pedantic(benchmark, fn, rounds):
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    tth = AzimuthalIntegrator(*PARAMS, wavelength=WL)._per_pixel("center", 0)
    lam = 50.0 * (1.2 + np.sin(np.rad2deg(tth) * 3.0))
    out = []
    st = Stitcher(GEO, np.uint16)
    for _ in range(NFRAMES):
        parts = [rng.poisson(m).astype(np.uint16) for m in lam]
        out.append((parts, st(parts)))
    return out


def test_copy_module_bytes(benchmark, frames):
    """The yardstick: copy the raw module bytes once (what the dispatcher does)."""
    srcs = [np.concatenate([p.reshape(-1) for p in parts]) for parts, _ in frames]
    dst = np.empty_like(srcs[0])
    it = itertools.cycle(srcs)
    _pedantic(benchmark, lambda: np.copyto(dst, next(it)), 50)
    _record(benchmark, "copy", 2 * PART_BYTES)


@pytest.mark.parametrize("dtype", ["same", "float32"])
def test_stitch(benchmark, frames, dtype):
    st = Stitcher(GEO, np.uint16, dtype)
    out = np.empty(GEO.shape, st.output_dtype)
    it = itertools.cycle([p for p, _ in frames])
    _pedantic(benchmark, lambda: st(next(it), out), 50)
    _record(benchmark, f"stitch_{dtype}", PART_BYTES + out.nbytes)


def _pyfai():
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator

    det = Detector(pixel1=GEO.pixel_size[0], pixel2=GEO.pixel_size[1], max_shape=GEO.shape)
    return PyFAIIntegrator(*PARAMS, detector=det, wavelength=WL)


@pytest.fixture(scope="module")
def pyfai_ai():
    pytest.importorskip("pyFAI")
    return _pyfai()


CASES = [("no", None), ("bbox", None), ("no", "poisson"), ("bbox", "poisson")]


def _case_name(split, em):
    return split + ("_poisson" if em else "")


@pytest.mark.parametrize("split, em", CASES, ids=[_case_name(*c) for c in CASES])
def test_pyfai(benchmark, frames, pyfai_ai, split, em):
    """pyFAI integrate1d, CSR Cython engine, solid angle + polarization + gap mask."""
    mask = GEO.gap_mask()
    it = itertools.cycle([img for _, img in frames])
    kw = dict(
        unit="q_nm^-1",
        method=(split, "csr", "cython"),
        mask=mask,
        polarization_factor=POL,
        correctSolidAngle=True,
        error_model=em,
    )
    pyfai_ai.integrate1d(frames[0][1], NPT, **kw)  # build the CSR matrix outside the timing
    _pedantic(benchmark, lambda: pyfai_ai.integrate1d(next(it), NPT, **kw), 5)
    _record(benchmark, f"pyfai_{_case_name(split, em)}", 0)


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    ai = AzimuthalIntegrator(*PARAMS, wavelength=WL, geometry=GEO)
    d = tmp_path_factory.mktemp("azint")
    return {
        s: ai.plan1d(NPT, "q_nm^-1", s, polarization_factor=POL, cache_dir=d)
        for s in ("no", "bbox")
    }


SOURCES = {  # what our integrator reads: the stitched image (float32 or uint16), or the modules
    "image": lambda parts, img: img,
    "image_uint16": lambda parts, img: img.astype(np.uint16),
    "parts": lambda parts, img: parts,
}
ENGINES: dict[str, dict] = {}


@pytest.mark.parametrize("source", list(SOURCES))
@pytest.mark.parametrize("split, em", CASES, ids=[_case_name(*c) for c in CASES])
def test_ours(benchmark, frames, plans, split, em, source):
    """Our integrate1d with the same corrections: from the stitched image (float32 or uint16),
    or fused from the uint16 module parts."""
    plan = plans[split]
    data = [SOURCES[source](parts, img) for parts, img in frames]
    it = itertools.cycle(data)
    _pedantic(benchmark, lambda: plan.integrate(next(it), error_model=em), 20)
    ENGINES.update(plan.engine_choices())
    _record(
        benchmark,
        f"ours_{_case_name(split, em)}_{source}",
        plan.bytes_per_frame(4 if source == "image" else 2),
    )


def test_decompress(benchmark, frames):
    """bitshuffle-LZ4 decoding of 12 modules into the slot, with the library build chosen on
    this CPU (``native_kernels.bslz4_decode``; the choice is listed with the engines)."""
    payloads = [compress(p) for p in frames[0][0]]
    out = np.empty((12, *GEO.module_shape), np.uint16)

    def run():
        for i, p in enumerate(payloads):
            decompress_into(p, out[i])

    _pedantic(benchmark, run, 10)
    _record(benchmark, "decompress_bslz4", sum(p.nbytes for p in payloads) + PART_BYTES)
    ENGINES["decompress bitshuffle-LZ4 (uint16)"] = choice(2)
    np.testing.assert_array_equal(out[3], frames[0][0][3])


def test_frame_stats(benchmark, frames):
    it = itertools.cycle([img for _, img in frames])
    _pedantic(benchmark, lambda: frame_statistics(next(it), 100.0, [[0, 100, 0, 100]]), 20)
    _record(benchmark, "stats_image", GEO.shape[0] * GEO.shape[1] * 4)


def test_summary(capsys):
    """Runs last: print each kernel's time, speed-up over pyFAI and bandwidth fraction."""
    if not RESULTS:
        pytest.skip("no timings (--benchmark-disable)")
    copy = RESULTS.get("copy")
    bw = BYTES["copy"] / copy if copy else None
    lines = [
        "",
        f"LAMBDA 9M, {NPIX / 1e6:.2f} Mpx, {NPT} bins, one thread"
        + (f"; copy bandwidth {bw / 1e9:.1f} GB/s (read + write)" if bw else ""),
    ]
    ref = {
        "no": RESULTS.get("pyfai_no"),
        "bbox": RESULTS.get("pyfai_bbox"),
        "no_poisson": RESULTS.get("pyfai_no_poisson"),
        "bbox_poisson": RESULTS.get("pyfai_bbox_poisson"),
    }
    for name, t in sorted(RESULTS.items()):
        line = f"  {name:28s} {t * 1e3:8.2f} ms"
        for key in sorted(ref, key=len, reverse=True):
            if name.startswith("ours_" + key + "_") and ref[key]:
                line += f"  {ref[key] / t:5.1f}x faster than pyFAI ({ref[key] * 1e3:.0f} ms)"
                break
        if name.startswith("stitch") and copy:
            line += f"  {t / copy:5.2f}x the copy time"
        if bw and not name.startswith("pyfai"):
            line += f"  bandwidth fraction {BYTES[name] / bw / t:4.2f}"
        lines.append(line)
    lines.append("engines chosen (key: engine, how):")
    lines += [f"  {k}: {v['engine']} ({v['how']})" for k, v in sorted(ENGINES.items())]
    with capsys.disabled():
        print("\n".join(lines))
