"""Radial integration against pyFAI (the reference), plus the fused path and table caching."""

from __future__ import annotations

import numpy as np
import pytest

from native_kernels import tables
from native_kernels.geometry import DetectorGeometry, ModulePlacement
from native_kernels.integrator import AzimuthalIntegrator
from native_kernels.poni import Poni, write_poni
from native_kernels.stitch import stitch

pyFAI = pytest.importorskip("pyFAI")
from pyFAI.detectors import Detector  # noqa: E402
from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator  # noqa: E402

PX = 55e-6
# A reduced 2 x 2 module detector (one module turned by 180 degrees): small enough for fast
# tests, with gaps and module orientation like the real one.
SMALL = DetectorGeometry(
    (96, 300),
    (
        ModulePlacement(0, 0),
        ModulePlacement(0, 306),
        ModulePlacement(106, 0, rot90=2),
        ModulePlacement(106, 306),
    ),
    name="small",
)
GEOMETRIES = {
    # name: (dist, poni1, poni2, rot1, rot2, rot3), units
    "centred": ((0.05, 0.0056, 0.0167, 0.0, 0.0, 0.0), ("2th_deg", "q_nm^-1")),
    "tilted_offcentre": ((0.08, 0.002, 0.004, 0.12, -0.08, 0.3), ("q_A^-1", "r_mm")),
    "beam_off_detector": ((0.1, -0.003, 0.04, 0.05, 0.02, 0.0), ("2th_deg", "r_mm")),
}
WAVELENGTH = 1.0e-10


def pyfai_for(geo: DetectorGeometry, params) -> PyFAIIntegrator:
    det = Detector(pixel1=geo.pixel_size[0], pixel2=geo.pixel_size[1], max_shape=geo.shape)
    return PyFAIIntegrator(*params, detector=det, wavelength=WAVELENGTH)


def ring_image(geo: DetectorGeometry, params, seed=0, scale=1000.0):
    """Poisson counts on smooth powder rings (so bin means are well defined)."""
    ref = pyfai_for(geo, params)
    tth = ref.center_array(geo.shape, "2th_deg")
    lam = scale * (1.2 + np.sin(tth * 7.0)) + 5.0
    rng = np.random.default_rng(seed)
    return rng.poisson(lam).astype(np.float32)


@pytest.fixture(scope="module")
def corrections():
    rng = np.random.default_rng(42)
    shape = SMALL.shape
    mask = rng.random(shape) < 0.01
    flat = rng.uniform(0.8, 1.2, shape).astype(np.float32)
    dark = rng.uniform(0.0, 5.0, shape).astype(np.float32)
    return {"mask": mask, "flat": flat, "dark": dark}


def _assert_profiles_match(ours, ref, sigma_rtol=1e-3, min_count=100):
    np.testing.assert_allclose(ours.radial, ref.radial, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.count, ref.count, rtol=1e-5, atol=1e-3)
    ok = ref.count >= min_count
    assert ok.sum() >= 10, "too few populated bins for a meaningful comparison"
    rel = np.abs(ours.intensity[ok] / ref.intensity[ok] - 1.0)
    assert rel.max() <= 1e-4, f"mean intensity differs by {rel.max():.2e}"
    np.testing.assert_allclose(ours.sum_signal[ok], ref.sum_signal[ok], rtol=1e-4)
    np.testing.assert_allclose(ours.sum_normalization[ok], ref.sum_normalization[ok], rtol=1e-5)
    if ref.sigma is not None:
        srel = np.abs(ours.sigma[ok] / ref.sigma[ok] - 1.0)
        assert srel.max() <= sigma_rtol, f"sigma differs by {srel.max():.2e}"
        np.testing.assert_allclose(ours.std[ok], ref.std[ok], rtol=sigma_rtol)


@pytest.mark.parametrize("split", ["no", "bbox"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_integrate1d_matches_pyfai(name, split, corrections):
    params, units = GEOMETRIES[name]
    img = ring_image(SMALL, params)
    img[5, 7:20] = -5.0  # dynamic mask through dummy/delta_dummy
    ref_ai = pyfai_for(SMALL, params)
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL)
    mask = corrections["mask"]
    for unit in units:
        kw = dict(
            unit=unit,
            polarization_factor=0.95,
            dark=corrections["dark"],
            flat=corrections["flat"],
            dummy=-5.0,
            delta_dummy=0.5,
            normalization_factor=2.5,
            error_model="poisson",
        )
        ref = ref_ai.integrate1d(
            img,
            150,
            method=(split, "csr", "cython"),
            mask=mask | SMALL.gap_mask(),
            correctSolidAngle=True,
            **kw,
        )
        ours = ai.integrate1d(img, 150, method=split, mask=mask, correct_solid_angle=True, **kw)
        _assert_profiles_match(ours, ref)
        # the fused path (module parts, never assembled) gives the same profile
        parts = [np.ascontiguousarray(v) for v in SMALL.module_views(img)]
        fused = ai.integrate1d(parts, 150, method=split, mask=mask, **kw)
        np.testing.assert_allclose(fused.intensity, ours.intensity, rtol=1e-12)


@pytest.mark.parametrize("split", ["no", "bbox"])
def test_azimuthal_error_model(split, corrections):
    params = GEOMETRIES["tilted_offcentre"][0]
    img = ring_image(SMALL, params, seed=3)
    kw = dict(
        unit="q_nm^-1", error_model="azimuthal", dark=corrections["dark"], polarization_factor=0.9
    )
    ref = pyfai_for(SMALL, params).integrate1d(
        img, 100, method=(split, "csr", "cython"), mask=SMALL.gap_mask(), **kw
    )
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL)
    ours = ai.integrate1d(img, 100, method=split, **kw)
    # pyFAI's single-pass update depends on the pixel order; we visit pixels in image order
    # too (also from module parts, where the rotated module runs backwards), so this is tight.
    _assert_profiles_match(ours, ref, sigma_rtol=1e-6)
    parts = [np.ascontiguousarray(v) for v in SMALL.module_views(img)]
    fused = ai.integrate1d(parts, 100, method=split, **kw)
    np.testing.assert_allclose(fused.sigma, ours.sigma, rtol=1e-12)


def test_corrections_change_the_result():
    """Guard against a comparison that passes because a correction is ignored on both sides."""
    params = GEOMETRIES["tilted_offcentre"][0]
    img = ring_image(SMALL, params)
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL)
    base = ai.integrate1d(img, 80, method="no", correct_solid_angle=False)
    sa = ai.integrate1d(img, 80, method="no", correct_solid_angle=True)
    pol = ai.integrate1d(img, 80, method="no", correct_solid_angle=False, polarization_factor=0.9)
    nf = ai.integrate1d(img, 80, method="no", correct_solid_angle=False, normalization_factor=2.0)
    assert not np.allclose(base.intensity, sa.intensity, rtol=1e-3)
    assert not np.allclose(base.intensity, pol.intensity, rtol=1e-3)
    np.testing.assert_allclose(nf.intensity * 2.0, base.intensity, rtol=1e-12)


@pytest.mark.parametrize("split", ["no", "bbox"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_integrate2d_matches_pyfai(name, split):
    params, units = GEOMETRIES[name]
    img = ring_image(SMALL, params)
    ref = pyfai_for(SMALL, params).integrate2d_ng(
        img,
        60,
        36,
        unit=units[0],
        method=(split, "csr", "cython"),
        mask=SMALL.gap_mask(),
        polarization_factor=0.9,
    )
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL)
    ours = ai.integrate2d(img, 60, 36, unit=units[0], method=split, polarization_factor=0.9)
    assert ours.intensity.shape == ref.intensity.shape == (36, 60)
    np.testing.assert_allclose(ours.radial, ref.radial, rtol=1e-9)
    np.testing.assert_allclose(ours.azimuthal, ref.azimuthal, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.count, ref.count, rtol=1e-5, atol=1e-3)
    ok = ours.count >= 20
    assert ok.sum() > 20
    np.testing.assert_allclose(ours.intensity[ok], ref.intensity[ok], rtol=1e-4)
    # The fused path (module parts, no assembled image) gives the same cake.
    parts = [np.ascontiguousarray(v) for v in SMALL.module_views(img)]
    fused = ai.integrate2d(parts, 60, 36, unit=units[0], method=split, polarization_factor=0.9)
    np.testing.assert_allclose(fused.intensity, ours.intensity, rtol=1e-6, atol=1e-9)


def test_integrate2d_bbox_table_is_cached_and_conserves_pixels(tmp_path):
    params = GEOMETRIES["centred"][0]  # beam on the detector: pixels straddle chi = 180 deg
    img = ring_image(SMALL, params)

    def cake():
        ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL)
        return ai.integrate2d(img, 40, 24, method="bbox", cache_dir=tmp_path)

    first, again = cake(), cake()  # the second plan is read from the cache
    assert any(tmp_path.iterdir())
    np.testing.assert_array_equal(first.intensity, again.intensity)
    # Every module pixel's weights add up to one: nothing is lost at the chi cut.
    assert first.count.sum() == pytest.approx(SMALL.n_pixels, rel=1e-6)


@pytest.fixture(scope="module")
def lambda9m_frame():
    geo = DetectorGeometry.default_lambda9m(missing=(11,))
    rng = np.random.default_rng(7)
    parts = [rng.poisson(30.0, geo.module_shape).astype(np.uint16) for _ in geo.present]
    return geo, parts


@pytest.mark.parametrize("split", ["no", "bbox"])
def test_full_lambda9m_against_pyfai(lambda9m_frame, split, tmp_path):
    """The full 9M geometry (11 modules), tilted, off-centre, 1000 bins, as deployed."""
    geo, parts = lambda9m_frame
    params = (0.25, 0.08, 0.13, 0.03, -0.02, 0.0)
    img = stitch(parts, geo)
    det = Detector(pixel1=PX, pixel2=PX, max_shape=geo.shape)
    ref = PyFAIIntegrator(*params, detector=det, wavelength=WAVELENGTH).integrate1d(
        img,
        1000,
        unit="q_nm^-1",
        method=(split, "csr", "cython"),
        mask=geo.gap_mask(),
        polarization_factor=0.99,
        error_model="poisson",
    )
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=geo)
    plan = ai.plan1d(1000, "q_nm^-1", split, polarization_factor=0.99, cache_dir=tmp_path)
    ours = plan.integrate(img, error_model="poisson")
    _assert_profiles_match(ours, ref)
    fused = plan.integrate(parts, error_model="poisson")  # uint16 parts, no assembly
    for name in ("intensity", "sum_signal", "sum_normalization", "count", "sigma"):
        np.testing.assert_allclose(getattr(fused, name), getattr(ours, name), rtol=1e-12)


def test_tables_are_cached_on_disk(tmp_path, monkeypatch):
    params = GEOMETRIES["centred"][0]
    img = ring_image(SMALL, params)
    first = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL)
    p1 = first.plan1d(100, "2th_deg", "bbox", polarization_factor=0.5, cache_dir=tmp_path)
    dirs = list(tmp_path.glob("azint-*"))
    assert len(dirs) == 1 and not list(tmp_path.glob(".azint-*"))  # no temp file left
    assert {f.name for f in dirs[0].iterdir()} >= {"bin.npy", "coef.npy", "norm.npy"}

    def boom(*a, **k):
        raise AssertionError("table rebuilt although it is cached")

    # A "second worker": a fresh integrator must load, not rebuild.
    import native_kernels.integrator as integ

    monkeypatch.setattr(integ, "build_table_1d", boom)
    second = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL)
    p2 = second.plan1d(100, "2th_deg", "bbox", polarization_factor=0.5, cache_dir=tmp_path)
    r1, r2 = p1.integrate(img), p2.integrate(img)
    np.testing.assert_array_equal(r1.intensity, r2.intensity)
    np.testing.assert_array_equal(r1.radial, r2.radial)
    # Different geometry -> different key -> rebuilt (and here: refused by the patch).
    third = AzimuthalIntegrator(0.051, *params[1:], wavelength=WAVELENGTH, geometry=SMALL)
    with pytest.raises(AssertionError, match="rebuilt"):
        third.plan1d(100, "2th_deg", "bbox", polarization_factor=0.5, cache_dir=tmp_path)
    # The tables are mapped read-only from the cache (shared by every worker), not copied.
    assert not p2.table.coef.flags.writeable and not p2.norm.flags.writeable
    # A corrupt or truncated cache file is rebuilt, not trusted, and then replaced.
    monkeypatch.undo()
    coef = dirs[0] / "coef.npy"
    good = coef.read_bytes()
    for bad in (b"not an npy file", good[: len(good) // 2]):
        coef.write_bytes(bad)
        p3 = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL).plan1d(
            100, "2th_deg", "bbox", polarization_factor=0.5, cache_dir=tmp_path
        )
        np.testing.assert_array_equal(p3.integrate(img).intensity, r1.intensity)
        assert coef.read_bytes() == good
        assert [p.name for p in tmp_path.iterdir()] == [dirs[0].name]


def test_table_contributions_match_pyfai_csr():
    """Our pixel-ordered bbox table is pyFAI's CSR matrix, entry by entry."""
    params = GEOMETRIES["tilted_offcentre"][0]
    g = DetectorGeometry((60, 80), (ModulePlacement(0, 0),))
    ref_ai = pyfai_for(g, params)
    ref_ai.integrate1d(
        np.ones(g.shape, np.float32), 40, unit="q_nm^-1", method=("bbox", "csr", "cython")
    )
    eng = next(e.engine for e in ref_ai.engines.values() if e.engine is not None)
    data, indices, indptr = eng.lut
    ref = {}
    for b in range(40):
        for j in range(indptr[b], indptr[b + 1]):
            ref[(int(indices[j]), b)] = float(data[j])
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=g)
    from native_kernels import positions as P

    pos = ai._per_pixel("center", P.SPACE_Q)
    dpos = ai._per_pixel("delta", P.SPACE_Q)
    t = tables.build_table_1d(pos, dpos, np.ones(pos.shape, bool), 40)
    pix, bins, w = t.contributions()
    ours = {(int(p), int(b)): float(c) for p, b, c in zip(pix, bins, w, strict=True) if c > 0}
    ref = {k: v for k, v in ref.items() if v > 0}
    assert ours.keys() == ref.keys()
    assert max(abs(ours[k] - ref[k]) for k in ref) < 1e-5


def test_split_table_packs_bin_and_weight_into_one_word():
    """With up to 1023 bins each pixel's (bin, weight) is one uint32, decoded exactly; the
    weights are multiples of 2**-22; dropped pixels go to the trash bin in both forms."""
    params = GEOMETRIES["tilted_offcentre"][0]
    g = DetectorGeometry((60, 80), (ModulePlacement(0, 0),))
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=g)
    from native_kernels import positions as P

    pos = ai._per_pixel("center", P.SPACE_Q)
    dpos = ai._per_pixel("delta", P.SPACE_Q)
    t = tables.build_table_1d(pos, dpos, np.ones(pos.shape, bool), 40)
    assert t.word is not None and t.word.dtype == np.uint32
    q = t.coef.astype(np.float64) * tables.COEF_ONE
    np.testing.assert_array_equal(q, np.rint(q))  # exact multiples of 2**-22
    assert (t.coef > 0).all() and (t.coef <= 1).all()
    split = (t.coef < 1) & (t.bin < t.nbins)
    assert split.sum() > 100  # the geometry does split pixels
    bins = t.word >> tables.COEF_BITS
    coef = 1.0 - (t.word & (tables.COEF_ONE - 1)) / tables.COEF_ONE
    np.testing.assert_array_equal(bins, t.bin)
    np.testing.assert_array_equal(coef, t.coef)
    gone = np.flatnonzero(split)[:5]
    t.drop(gone)
    assert (t.word[gone] >> tables.COEF_BITS == t.nbins).all()
    np.testing.assert_array_equal(t.word, tables.pack_words(t.bin, t.coef))
    many = tables.build_table_1d(pos, dpos, np.ones(pos.shape, bool), tables.WORD_MAX_BINS + 1)
    assert many.word is None  # the trash bin no longer fits: bin and weight stay separate


def test_packed_words_give_the_general_loops_result(tmp_path):
    """The lean loop (words) and the general loop (bin and weight arrays, taken for a
    dummy tolerance that matches nothing extra) agree on a split geometry."""
    params = GEOMETRIES["tilted_offcentre"][0]
    g = DetectorGeometry((60, 80), (ModulePlacement(0, 0),))
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=g)
    img = np.random.default_rng(3).poisson(50, g.shape).astype(np.uint16)
    img[::7, ::5] = 0
    kw = dict(unit="q_nm^-1", method="bbox", polarization_factor=0.9, cache_dir=tmp_path)
    lean = ai.plan1d(300, dummy=0.0, **kw)
    general = ai.plan1d(300, dummy=0.0, delta_dummy=0.25, **kw)
    assert lean.table.word is not None
    a = lean.integrate(img, error_model="poisson")
    b = general.integrate(img, error_model="poisson")
    np.testing.assert_allclose(a.intensity, b.intensity, rtol=1e-12)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-12)


def test_from_poni_file(tmp_path):
    params = GEOMETRIES["tilted_offcentre"][0]
    path = tmp_path / "calib.poni"
    write_poni(
        Poni(*params, wavelength=WAVELENGTH, detector_config={"pixel1": PX, "pixel2": PX}), path
    )
    img = ring_image(SMALL, params)
    a = AzimuthalIntegrator.from_poni(path, geometry=SMALL).integrate1d(img, 50, unit="r_mm")
    b = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL).integrate1d(
        img, 50, unit="r_mm"
    )
    np.testing.assert_array_equal(a.intensity, b.intensity)
    q, intensity = a  # unpacks like pyFAI's result
    assert q is a.radial and intensity is a.intensity


def test_bad_input_is_a_clear_error():
    params = GEOMETRIES["centred"][0]
    ai = AzimuthalIntegrator(*params, wavelength=WAVELENGTH, geometry=SMALL)
    img = np.ones(SMALL.shape, np.float32)
    with pytest.raises(ValueError, match="mask has shape"):
        ai.integrate1d(img, 10, mask=np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="image has shape"):
        ai.integrate1d(np.ones((5, 5), np.float32), 10)
    parts = [np.ones(SMALL.module_shape, np.uint16)] * 4
    with pytest.raises(ValueError, match="expected 4 module parts"):
        ai.integrate1d(parts[:3], 10)
    with pytest.raises(ValueError, match="part 1 has shape"):
        ai.integrate1d([parts[0], np.ones((3, 3), np.uint16)] + parts[2:], 10)
    with pytest.raises(TypeError, match="dtype"):
        ai.integrate1d(img.astype(np.complex64), 10)
    with pytest.raises(ValueError, match="unit"):
        ai.integrate1d(img, 10, unit="furlongs")
    with pytest.raises(ValueError, match="error_model"):
        ai.integrate1d(img, 10, error_model="gaussian")
    with pytest.raises(ValueError, match="splitting"):
        ai.integrate1d(img, 10, method="full")
    with pytest.raises(ValueError, match="wavelength"):
        AzimuthalIntegrator(*params, geometry=SMALL).integrate1d(img, 10, unit="q_nm^-1")
    with pytest.raises(ValueError, match="dark has shape"):
        ai.integrate1d(img, 10, dark=np.zeros((2, 2), np.float32))
