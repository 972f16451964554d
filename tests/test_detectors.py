"""Named and generic detectors from PONI files, checked against pyFAI (the reference)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from native_kernels.detectors import (
    CATALOGUE,
    DetectorError,
    builtin_geometry,
    detector_geometry,
    geometry_from_mask,
)
from native_kernels.integrator import AzimuthalIntegrator, PoniMismatchWarning
from native_kernels.poni import PoniError

pytest.importorskip("pyFAI")
import pyFAI.detectors  # noqa: E402
from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator  # noqa: E402

WAVELENGTH = 1.0e-10
UNITS = ("2th_deg", "2th_rad", "q_nm^-1", "q_A^-1", "r_mm", "r_m")
# Representative cases run by default; the whole detector x split x unit matrix is slow.
DEFAULT_CASES = [
    ("Pilatus300k", "bbox", "q_nm^-1"),
    ("Lambda250k", "no", "2th_deg"),
    ("Eiger2_500k", "bbox", "r_mm"),
    ("Jungfrau1M", "no", "q_A^-1"),
]


def tilted_offcentre(det) -> tuple[float, ...]:
    """A tilted geometry with the beam off-centre (a quarter of the way in), for detector det."""
    h, w = det.max_shape
    return (0.15, 0.27 * h * det.pixel1, 0.31 * w * det.pixel2, 0.05, -0.04, 0.2)


def ring_image(ref: PyFAIIntegrator, shape) -> np.ndarray:
    """Poisson counts on powder rings; gap pixels hold a huge value that must be ignored."""
    tth = ref.center_array(shape, "2th_deg")
    rng = np.random.default_rng(7)
    img = rng.poisson(500.0 * (1.2 + np.sin(tth * 5.0)) + 5.0).astype(np.float32)
    if ref.detector.mask is not None:
        img[ref.detector.mask != 0] = 1e9
    return img


def _pyfai_case(name: str, tmp_path, orientation: int | None = None):
    config = None if orientation is None else {"orientation": orientation}
    det = pyFAI.detectors.detector_factory(name, config)
    ref = PyFAIIntegrator(*tilted_offcentre(det), detector=det, wavelength=WAVELENGTH)
    poni = tmp_path / f"{name}.poni"
    ref.save(str(poni))  # the PONI file as pyFAI writes it
    return ref, poni


def _compare(ours, ref):
    np.testing.assert_allclose(ours.radial, ref.radial, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.count, ref.count, rtol=1e-5, atol=1e-3)
    ok = ref.count >= 50
    assert ok.sum() >= 10, "too few populated bins for a meaningful comparison"
    rel = np.abs(ours.intensity[ok] / ref.intensity[ok] - 1.0)
    assert rel.max() <= 1e-4, f"mean intensity differs by {rel.max():.2e}"


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_catalogue_matches_pyfai(name):
    det = pyFAI.detectors.detector_factory(name)
    ours = builtin_geometry(name)
    assert ours.shape == tuple(det.max_shape)
    assert ours.pixel_size == (det.pixel1, det.pixel2)
    pyfai_mask = np.zeros(det.max_shape, bool) if det.mask is None else det.mask != 0
    np.testing.assert_array_equal(ours.gap_mask(), pyfai_mask)
    # The geometry read from pyFAI's own definition is the same layout.
    assert detector_geometry(name, use_pyfai=True).digest() == ours.digest()


def _integrate_case(name, split, unit, tmp_path):
    ref, poni = _pyfai_case(name, tmp_path)
    img = ring_image(ref, ref.detector.max_shape)
    ai = AzimuthalIntegrator.from_poni(poni)  # no geometry given: the PONI's detector
    assert ai.geometry.shape == tuple(ref.detector.max_shape)
    method = (split, "csr", "cython")
    r = ref.integrate1d_ng(img, 60, unit=unit, method=method, polarization_factor=0.95)
    o = ai.integrate1d(img, 60, unit=unit, method=split, polarization_factor=0.95)
    _compare(o, r)


@pytest.mark.parametrize("name, split, unit", DEFAULT_CASES)
def test_poni_detector_integrates_like_pyfai(name, split, unit, tmp_path):
    _integrate_case(name, split, unit, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("split", ["no", "bbox"])
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_catalogue_detector_split_and_unit(name, split, unit, tmp_path):
    _integrate_case(name, split, unit, tmp_path)


@pytest.mark.parametrize("orientation", [1, 2, 4])
def test_poni_orientation_matches_pyfai(orientation, tmp_path):
    ref, poni = _pyfai_case("Lambda250k", tmp_path, orientation)
    assert "orientation" in poni.read_text()
    img = ring_image(ref, ref.detector.max_shape)
    ai = AzimuthalIntegrator.from_poni(poni)
    assert ai.orientation == orientation
    r = ref.integrate1d_ng(img, 50, unit="2th_deg", method=("bbox", "csr", "cython"))
    _compare(ai.integrate1d(img, 50, unit="2th_deg", method="bbox"), r)


def test_generic_detector_from_detector_config(tmp_path):
    det = pyFAI.detectors.Detector(100e-6, 120e-6, max_shape=(90, 110))
    ref = PyFAIIntegrator(*tilted_offcentre(det), detector=det, wavelength=WAVELENGTH)
    poni = tmp_path / "generic.poni"
    ref.save(str(poni))
    ai = AzimuthalIntegrator.from_poni(poni)
    assert ai.geometry.shape == (90, 110) and ai.geometry.pixel_size == (100e-6, 120e-6)
    img = ring_image(ref, (90, 110))
    r = ref.integrate1d_ng(img, 30, unit="r_mm", method=("no", "csr", "cython"))
    _compare(ai.integrate1d(img, 30, unit="r_mm", method="no"), r)


def test_builtin_catalogue_is_used_without_pyfai():
    geo = detector_geometry("eiger2 4m", {"orientation": 3}, use_pyfai=False)
    assert geo.name == "Eiger2_4M" and len(geo.modules) == 8
    assert detector_geometry("Detector", {"pixel1": 1e-4, "pixel2": 1e-4}) is None


def test_explicit_geometry_wins_with_a_warning(tmp_path):
    ref, poni = _pyfai_case("Pilatus100k", tmp_path)
    with pytest.warns(PoniMismatchWarning, match=r"Pilatus100k.*shape \(195, 487\)"):
        ai = AzimuthalIntegrator.from_poni(poni, geometry=(100, 100))
    assert ai.geometry.shape == (100, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same detector given explicitly: no warning
        AzimuthalIntegrator.from_poni(poni, geometry=builtin_geometry("Pilatus100k"))


def test_unknown_detector_name_is_a_clear_error(tmp_path):
    ref, poni = _pyfai_case("Pilatus100k", tmp_path)
    bad = tmp_path / "bad.poni"
    bad.write_text(poni.read_text().replace("Detector: Pilatus100k", "Detector: Pilatus99Z"))
    with pytest.raises(PoniError, match=r"bad\.poni.*Pilatus99Z"):
        AzimuthalIntegrator.from_poni(bad)
    with pytest.raises(DetectorError, match="unknown detector 'Pilatus99Z'.*Eiger2_4M"):
        detector_geometry("Pilatus99Z", use_pyfai=False)


def test_image_shape_disagreeing_with_the_poni_names_it(tmp_path):
    ref, poni = _pyfai_case("Pilatus100k", tmp_path)
    ai = AzimuthalIntegrator.from_poni(poni)
    with pytest.raises(ValueError, match=r"image has shape \(3100, 3000\).*Pilatus100k\.poni"):
        ai.integrate1d(np.zeros((3100, 3000), np.float32), 10)


def test_mask_that_is_not_a_module_grid_is_refused():
    mask = np.zeros((20, 30), bool)
    mask[:, 14:16] = True
    assert len(geometry_from_mask((20, 30), mask, (1e-4, 1e-4), "x").modules) == 2
    mask[5, 5] = True
    with pytest.raises(DetectorError, match="not a grid"):
        geometry_from_mask((20, 30), mask, (1e-4, 1e-4), "x")


def test_integrate_kernel_uses_the_ponis_detector(tmp_path):
    from native_kernels.shmpipe_kernels import AzimuthalIntegrate, KernelConfigError
    from shmpipe.api.kernel import ArraySpec, Frame, SetupContext

    ref, poni = _pyfai_case("Pilatus300k", tmp_path)
    img = ring_image(ref, ref.detector.max_shape)
    ctx = SetupContext(parts=[ArraySpec("frame", img.shape, "float32")], cache_dir=tmp_path)
    k = AzimuthalIntegrate(
        "integrate", AzimuthalIntegrate.Params(input="parts", poni=str(poni), npt=40)
    )
    out = {s.name: np.zeros(s.shape, s.dtype) for s in k.setup(ctx)}
    k.process(Frame("s", 1, "f1", {}, {}, [img], {}), out)
    r = ref.integrate1d_ng(img, 40, unit="q_nm^-1", method=("bbox", "csr", "cython"))
    ok = r.count > 50
    np.testing.assert_allclose(out["intensity"][ok], r.intensity[ok], rtol=1e-4)
    # A detector name as geometry; one that does not fit the input is refused at setup.
    named = AzimuthalIntegrate.Params(input="parts", poni=str(poni), geometry="Pilatus1M")
    with pytest.warns(PoniMismatchWarning), pytest.raises(KernelConfigError, match="geometry"):
        AzimuthalIntegrate("integrate", named).setup(ctx)
    unknown = AzimuthalIntegrate.Params(input="parts", poni=str(poni), geometry="Pilatus99Z")
    with pytest.raises(KernelConfigError, match="Pilatus99Z"):
        AzimuthalIntegrate("integrate", unknown).setup(ctx)


def test_generic_poni_of_the_stitched_lambda9m_keeps_its_module_layout(tmp_path):
    from native_kernels.geometry import DetectorGeometry
    from native_kernels.poni import Poni, write_poni

    lambda9m = DetectorGeometry.default_lambda9m()
    config = {"pixel1": 55e-6, "pixel2": 55e-6, "max_shape": list(lambda9m.shape)}
    poni = tmp_path / "stitched.poni"
    write_poni(Poni(0.3, 0.06, 0.13, detector="Detector", detector_config=config), poni)
    ai = AzimuthalIntegrator.from_poni(poni)
    assert ai.geometry.digest() == lambda9m.digest()  # 12 modules, gaps left out
