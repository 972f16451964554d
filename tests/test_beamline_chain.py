"""The beamline chain (decompress -> integrate and statistics on the modules) against the
stitch-first chain, the integer statistics path, ROIs mapped onto modules, the lean dummy loop."""

from __future__ import annotations

import numpy as np
import pytest

from native_kernels.compression import compress
from native_kernels.geometry import DetectorGeometry, ModulePlacement
from native_kernels.integrator import AzimuthalIntegrator
from native_kernels.shmpipe_kernels import (
    AzimuthalIntegrate,
    FrameStats,
    KernelConfigError,
    LambdaDecompress,
    LambdaStitch,
)
from native_kernels.stats import (
    _stats,
    accumulate_stats,
    check_rois,
    module_rois,
    roi_sums_on_parts,
)
from native_kernels.stitch import stitch
from shmpipe.api import ArraySpec, Frame, SetupContext
from tests.test_native_kernels import make, run_chain

SHAPE = (40, 72)


def oriented_geometry() -> DetectorGeometry:
    """Six small modules, some flipped or turned, one absent, gaps between them."""
    r, c = SHAPE
    mods = (
        ModulePlacement(0, 0),
        ModulePlacement(0, c + 3, flip_lr=True),
        ModulePlacement(0, 2 * c + 6, flip_ud=True),
        ModulePlacement(r + 5, 0, rot90=1),
        ModulePlacement(r + 5, r + 4, rot90=3, flip_ud=True),
        ModulePlacement(r + 5, 2 * r + 9, present=False),
    )
    return DetectorGeometry(SHAPE, mods, name="test")


@pytest.fixture(scope="module")
def geometry_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("geo") / "geo.json"
    oriented_geometry().to_file(path)
    return path


def frame(geo: DetectorGeometry, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    parts = [rng.poisson(30.0, geo.module_shape).astype(np.uint16) for _ in geo.present]
    for p in parts:  # dead pixels reading 0 (the dummy) and a few hot ones
        p[rng.random(p.shape) < 0.02] = 0
        p[rng.random(p.shape) < 0.001] = 60000
    return parts


INTEGRATE = dict(
    dist=0.05,
    poni1=0.004,
    poni2=0.006,
    rot1=0.02,
    wavelength=1e-10,
    npt=64,
    unit="q_nm^-1",
    method="bbox",
    polarization_factor=0.99,
    error_model="poisson",
    dummy=0.0,
)
ROIS = [[0, 40, 0, 72], [10, 80, 50, 200], [45, 117, 0, 222]]  # across gaps and modules


@pytest.mark.parametrize("method", ["bbox", "no"])
def test_beamline_chain_equals_stitch_first(geometry_file, tmp_path, method):
    geo = oriented_geometry()
    g = str(geometry_file)
    integ = {**INTEGRATE, "method": method, "geometry": g}
    stats = dict(threshold=35.0, rois=ROIS, dummy=0.0)
    stitch_first = [
        make(LambdaDecompress, "decompress", geometry=g),
        make(LambdaStitch, "stitch", input="decompress.modules", geometry=g),
        make(AzimuthalIntegrate, "integrate", **integ),
        make(FrameStats, "stats", **stats),
    ]
    beamline = [
        make(LambdaDecompress, "decompress", geometry=g),
        make(AzimuthalIntegrate, "integrate", input="decompress.modules", **integ),
        make(FrameStats, "stats", input="decompress.modules", geometry=g, **stats),
    ]
    for seed in (1, 2):
        payloads = [compress(p) for p in frame(geo, seed)]
        a = run_chain(stitch_first, SetupContext(parts=None, cache_dir=tmp_path), payloads)
        b = run_chain(beamline, SetupContext(parts=None, cache_dir=tmp_path), payloads)
        assert "stitch.image" not in b
        for name in ("radial", "intensity", "sigma", "count", "sum_normalization"):
            x, y = a[f"integrate.{name}"], b[f"integrate.{name}"]
            assert np.any(x != 0)
            np.testing.assert_allclose(y, x, rtol=1e-6, atol=0, err_msg=name)
        for name in ("sum", "max", "count_above", "n_valid", "roi_sums"):
            np.testing.assert_array_equal(b[f"stats.{name}"], a[f"stats.{name}"], err_msg=name)
        assert np.all(a["stats.roi_sums"] > 0)


def test_module_rois_equal_image_rois_for_any_orientation():
    geo = oriented_geometry()
    rng = np.random.default_rng(5)
    parts = [rng.integers(1, 1000, geo.module_shape).astype(np.uint32) for _ in geo.present]
    image = stitch(parts, geo, np.float64)
    h, w = geo.shape
    for _ in range(50):
        y0, y1 = sorted(rng.choice(h + 1, 2, replace=False))
        x0, x1 = sorted(rng.choice(w + 1, 2, replace=False))
        rois = check_rois([[y0, y1, x0, x1]], geo.shape)
        got = np.zeros(1)
        roi_sums_on_parts(parts, module_rois(geo, rois), 0.0, got)
        assert got[0] == image[y0:y1, x0:x1].sum()


def test_roi_outside_the_image_or_wrong_geometry_is_a_config_error():
    ctx = SetupContext(parts=[ArraySpec("m", (516, 1556), "uint16")] * 12)
    with pytest.raises(KernelConfigError, match="outside the image"):
        make(FrameStats, "f", input="parts", rois=[[0, 10, 0, 9999]]).setup(ctx)
    with pytest.raises(KernelConfigError, match="does not match the geometry"):
        make(FrameStats, "f", input="parts", rois=[[0, 10, 0, 10]], missing_modules=[3]).setup(ctx)


def reference(img: np.ndarray, threshold: float, dummy: float | None) -> list[float]:
    v = img.astype(np.float64)
    x = v[v != dummy] if dummy is not None else v.reshape(-1)
    return [x.sum(), x.max() if len(x) else -np.inf, float((x > threshold).sum()), len(x)]


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int16", "int32"])
@pytest.mark.parametrize("dummy", [None, 0.0, -0.0, 7.0, 7.5, np.nan, 1e30, -3.0])
@pytest.mark.parametrize("threshold", [20.0, 20.5, -np.inf, np.inf, np.nan, -1.0, 1e30])
def test_integer_statistics_equal_numpy_and_the_general_path(dtype, dummy, threshold):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    img = rng.poisson(20, (37, 203)).astype(dtype)
    img[0, :5] = (info.max, info.min, 0, 7, 7)
    if info.min < 0:
        img[1, :20] = -3
    fast = np.array([0.0, -np.inf, 0.0, 0.0])
    accumulate_stats(img, threshold, dummy, fast)
    general = np.array([0.0, -np.inf, 0.0, 0.0])
    _stats(img, float(threshold), dummy is not None, 0.0 if dummy is None else dummy, general)
    assert fast.tolist() == general.tolist() == reference(img, threshold, dummy)


def test_integer_statistics_of_an_all_dummy_array():
    out = np.array([0.0, -np.inf, 0.0, 0.0])
    accumulate_stats(np.zeros((3, 4), np.uint16), 0.0, 0.0, out)
    assert out.tolist() == [0.0, -np.inf, 0.0, 0.0]


@pytest.mark.parametrize("method", ["bbox", "no"])
def test_exact_dummy_in_the_lean_loop_equals_a_static_mask(method):
    """A pixel reading the dummy contributes exactly as if it were masked."""
    geo = oriented_geometry()
    ai = AzimuthalIntegrator(0.05, 0.004, 0.006, 0.02, wavelength=1e-10, geometry=geo)
    parts = frame(geo, 7)
    dead = np.stack([p == 0 for p in parts])
    kw = dict(npt=64, method=method, polarization_factor=0.99, error_model="poisson")
    by_dummy = ai.integrate1d(parts, dummy=0.0, **kw)
    by_mask = ai.integrate1d(parts, mask=dead, **kw)
    # A tolerance takes the general loop: on integers, 0.5 around 0 means the same pixels.
    general = ai.integrate1d(parts, dummy=0.0, delta_dummy=0.5, **kw)
    for name in ("intensity", "sigma", "count", "sum_normalization"):
        x = getattr(by_mask, name)
        np.testing.assert_allclose(getattr(by_dummy, name), x, rtol=1e-9, err_msg=name)
        np.testing.assert_allclose(getattr(general, name), x, rtol=1e-9, err_msg=name)
    assert by_dummy.count.sum() < ai.integrate1d(parts, **kw).count.sum()


def test_live_rois_on_module_input_are_image_coordinates(geometry_file):
    geo = oriented_geometry()
    parts = frame(geo, 4)
    image = stitch(parts, geo, np.float64)
    ctx = SetupContext(parts=[ArraySpec("m", geo.module_shape, "uint16")] * len(geo.present))
    k = make(FrameStats, "stats", input="parts", geometry=str(geometry_file), max_rois=2, dummy=0.0)
    out = run_chain([k], ctx, parts)
    assert np.isnan(out["stats.roi_sums"]).all()  # no ROI yet
    live = k.check_params({"rois": [[45, 117, 0, 222]]}, out)
    k.on_params(live, 3)
    outs = {n.split(".", 1)[1]: a for n, a in out.items()}
    k.process(Frame("s", 2, "f2", {}, {}, parts, out), outs)
    out2 = out
    with pytest.raises(ValueError, match="outside"):
        k.check_params({"rois": [[0, 500, 0, 10]]}, out)
    assert out2["stats.roi_sums"][0] == image[45:117, 0:222].sum()
    assert np.isnan(out2["stats.roi_sums"][1]) and out2["stats.roi_version"] == 3
