"""The native kernels driven through the shmpipe Kernel protocol, as the engine will."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from native_kernels.compression import PayloadError, compress
from native_kernels.geometry import DetectorGeometry
from native_kernels.integrator import AzimuthalIntegrator
from native_kernels.poni import Poni, write_poni
from native_kernels.shmpipe_kernels import (
    AzimuthalIntegrate,
    FrameStats,
    KernelConfigError,
    LambdaDecompress,
    LambdaStitch,
)
from native_kernels.stitch import stitch
from shmpipe.api.kernel import ArraySpec, Frame, Kernel, SetupContext

GEO = DetectorGeometry.default_lambda9m()
PARAMS = (0.25, 0.08, 0.13, 0.03, -0.02, 0.0)
WL = 1.0e-10


def run_chain(kernels, ctx, parts, meta=None):
    """Minimal engine: setup each kernel, allocate its outputs, process one frame."""
    arrays: dict[str, np.ndarray] = {}
    outs = []
    for k in kernels:
        specs = k.setup(ctx)
        out = {}
        for s in specs:
            a = np.zeros(s.shape, s.dtype)
            out[s.name] = a
            arrays[f"{k.name}.{s.name}"] = a
            ctx.available[f"{k.name}.{s.name}"] = s
        outs.append(out)
    frame = Frame("s", 1, "f1", meta or {}, {}, parts, arrays)
    for k, out in zip(kernels, outs, strict=True):
        k.process(frame, out)
    return arrays


def make(cls, name, **kw):
    return cls(name, cls.Params(**kw))


@pytest.fixture(scope="module")
def frame_parts():
    rng = np.random.default_rng(11)
    return [rng.poisson(40.0, GEO.module_shape).astype(np.uint16) for _ in GEO.present]


@pytest.fixture(scope="module")
def poni_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("poni") / "calib.poni"
    write_poni(Poni(*PARAMS, wavelength=WL), path)
    return path


def test_params_are_plain_dataclasses_with_defaults():
    for cls in (LambdaDecompress, LambdaStitch, AzimuthalIntegrate, FrameStats):
        assert issubclass(cls, Kernel)
        for f in dataclasses.fields(cls.Params):
            assert f.default is not dataclasses.MISSING or (
                f.default_factory is not dataclasses.MISSING
            ), f"{cls.__name__}.{f.name}"
    names = {f.name for f in dataclasses.fields(AzimuthalIntegrate.Params)}
    assert {
        "npt",
        "bins",
        "unit",
        "dummy",
        "delta_dummy",
        "polarization_factor",
        "correct_solid_angle",
        "error_model",
        "poni",
    } <= names


def test_entry_points_declared():
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).parents[1] / "setup.cfg")
    eps = dict(
        line.split(" = ")
        for line in cfg["options.entry_points"]["shmpipe.kernels"].strip().splitlines()
    )
    for name, cls in (
        ("lambda_decompress", LambdaDecompress),
        ("lambda_stitch", LambdaStitch),
        ("azimuthal_integrate", AzimuthalIntegrate),
        ("frame_stats", FrameStats),
    ):
        assert eps[name] == f"native_kernels.shmpipe_kernels:{cls.__name__}"


def test_chain_raw_parts(frame_parts, poni_file, tmp_path):
    ctx = SetupContext(parts=[ArraySpec("m", GEO.module_shape, "uint16")] * 12, cache_dir=tmp_path)
    chain = [
        make(LambdaStitch, "stitch"),
        make(
            AzimuthalIntegrate,
            "integrate",
            poni=str(poni_file),
            bins=500,
            method="no",
            unit="2th_deg",
            error_model="poisson",
            polarization_factor=0.99,
            normalization_key="i0",
        ),
        make(
            AzimuthalIntegrate,
            "fused",
            input="parts",
            poni=str(poni_file),
            npt=500,
            method="no",
            unit="2th_deg",
            error_model="poisson",
            polarization_factor=0.99,
            normalization_key="i0",
        ),
        make(FrameStats, "stats", threshold=60.0, rois=[[0, 10, 0, 20], [600, 700, 30, 90]]),
    ]
    out = run_chain(chain, ctx, frame_parts, meta={"i0": 2.0})
    img = stitch(frame_parts, GEO)
    np.testing.assert_array_equal(out["stitch.image"], img)
    ref = AzimuthalIntegrator(*PARAMS, wavelength=WL).integrate1d(
        img,
        500,
        unit="2th_deg",
        method="no",
        error_model="poisson",
        polarization_factor=0.99,
        normalization_factor=2.0,
    )
    np.testing.assert_allclose(out["integrate.intensity"], ref.intensity, rtol=1e-12)
    np.testing.assert_allclose(out["integrate.sigma"], ref.sigma, rtol=1e-12)
    np.testing.assert_allclose(out["integrate.radial"], ref.radial)
    np.testing.assert_allclose(out["fused.intensity"], ref.intensity, rtol=1e-12)
    np.testing.assert_allclose(out["fused.count"], ref.count)
    assert list(tmp_path.glob("azint-*/bin.npy"))  # tables landed in ctx.cache_dir
    assert out["stats.sum"] == pytest.approx(float(img.sum(dtype=np.float64)))
    assert out["stats.max"] == img.max()
    assert out["stats.count_above"] == int((img > 60).sum())
    assert out["stats.n_valid"] == img.size
    np.testing.assert_allclose(
        out["stats.roi_sums"], [img[0:10, 0:20].sum(), img[600:700, 30:90].sum()]
    )


def test_chain_compressed_parts_with_missing_module(frame_parts, tmp_path):
    geo = DetectorGeometry.default_lambda9m(missing=(11,))
    parts = frame_parts[:11]
    payloads = [compress(p) for p in parts]
    ctx = SetupContext(parts=None, cache_dir=tmp_path)  # compressed: layout unknown
    chain = [
        make(LambdaDecompress, "decompress", missing_modules=[11]),
        make(LambdaStitch, "stitch", input="decompress.modules", missing_modules=[11]),
        make(
            AzimuthalIntegrate,
            "integrate",
            input="decompress.modules",
            dist=PARAMS[0],
            poni1=PARAMS[1],
            poni2=PARAMS[2],
            rot1=PARAMS[3],
            rot2=PARAMS[4],
            wavelength=WL,
            missing_modules=[11],
            npt=300,
            unit="q_nm^-1",
        ),
        make(FrameStats, "stats", input="decompress.modules", threshold=50.0),
    ]
    out = run_chain(chain, ctx, payloads)
    np.testing.assert_array_equal(out["decompress.modules"], np.stack(parts))
    np.testing.assert_array_equal(out["stitch.image"], stitch(parts, geo))
    ref = AzimuthalIntegrator(*PARAMS[:5], wavelength=WL, geometry=geo).integrate1d(
        stitch(parts, geo), 300, unit="q_nm^-1"
    )
    np.testing.assert_allclose(out["integrate.intensity"], ref.intensity, rtol=1e-12)
    assert out["stats.count_above"] == sum(int((p > 50).sum()) for p in parts)
    # A truncated payload is an error for that frame, naming it.
    bad = payloads[:3] + [payloads[3][:100]] + payloads[4:]
    k = make(LambdaDecompress, "decompress", missing_modules=[11])
    (spec,) = k.setup(SetupContext(parts=None))
    frame = Frame("s", 7, "f7", {}, {}, bad, {})
    with pytest.raises(PayloadError, match="frame 7 .* part 3"):
        k.process(frame, {"modules": np.zeros(spec.shape, spec.dtype)})


def test_setup_rejects_inconsistent_configuration(tmp_path):
    ctx = SetupContext(parts=[ArraySpec("m", GEO.module_shape, "uint16")] * 12)
    with pytest.raises(KernelConfigError, match="disagree"):
        make(AzimuthalIntegrate, "i", dist=0.2, npt=100, bins=200, input="parts").setup(ctx)
    with pytest.raises(KernelConfigError, match="poni"):
        make(AzimuthalIntegrate, "i", input="parts").setup(ctx)
    with pytest.raises(KernelConfigError, match="not produced"):
        make(AzimuthalIntegrate, "i", dist=0.2).setup(ctx)  # no stitch.image in the chain
    with pytest.raises(KernelConfigError, match="11 present modules"):
        make(LambdaStitch, "s", missing_modules=[3]).setup(ctx)
    with pytest.raises(KernelConfigError, match="decompress"):
        make(LambdaStitch, "s").setup(SetupContext(parts=None))
    with pytest.raises(KernelConfigError, match="does not match the geometry"):
        make(FrameStats, "f", input="parts", rois=[[0, 10, 0, 10]], missing_modules=[3]).setup(ctx)
    bad_mask = tmp_path / "mask.npy"
    np.save(bad_mask, np.zeros((3, 3), bool))
    with pytest.raises(KernelConfigError, match="mask"):
        make(AzimuthalIntegrate, "i", dist=0.2, input="parts", mask=str(bad_mask), npt=100).setup(
            ctx
        )
