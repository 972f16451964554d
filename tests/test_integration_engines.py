"""The integrator's engine registry: every key answered, the choice kept and reused, and every
engine that applies to a key giving the same sums, bit for bit."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from native_kernels import engines
from native_kernels.cpu import cpu_model
from native_kernels.engine_choice import CHOICE_FILE, EngineChooser
from native_kernels.geometry import DetectorGeometry, ModulePlacement
from native_kernels.integrator import AzimuthalIntegrator

PARAMS = (0.08, 0.002, 0.004, 0.12, -0.08, 0.3)  # tilted, off centre
WAVELENGTH = 1.0e-10
# Two modules, one turned by 180 degrees: the stitched image's module views are then strided
# backwards, as on the real detector.
GEO = DetectorGeometry(
    (40, 64), (ModulePlacement(0, 0), ModulePlacement(46, 0, rot90=2)), name="two"
)


def _integrator() -> AzimuthalIntegrator:
    return AzimuthalIntegrator(*PARAMS, wavelength=WAVELENGTH, geometry=GEO)


def _frame(dtype: str, layout: str, dummy: float | None):
    """Counts with some pixels at the dummy value (and NaN/inf for a float frame)."""
    rng = np.random.default_rng(5)
    img = rng.poisson(40, GEO.shape).astype(dtype)
    if dummy is not None:
        img[::7, ::5] = dummy
    if img.dtype.kind == "f":
        img[3, 3:9] = np.nan
        img[20, 1] = np.inf
    if layout == "stitched":
        return img
    return [np.ascontiguousarray(v) for v in GEO.module_views(img)]


def test_the_registry_answers_every_key():
    keys = engines.all_keys()
    assert len(keys) == len(set(keys)) > 100
    for key in keys:
        found = engines.candidates(key)
        assert all(e.applies(key) for e in found), key
        # the loop family matches the frame kind: general loops only for dark / tolerance
        assert all((key.frame == "general") == (e.run is not engines._run_lean) for e in found)
    with pytest.raises(LookupError):
        engines.candidates(
            engines.EngineKey(1, "full", "bins", "uint16", "modules", "plain", "none")
        )


@pytest.mark.parametrize("split", ["no", "bbox"])
@pytest.mark.parametrize("npt", [(200, None), (50, 12)])
def test_every_key_the_integrator_asks_for_is_registered(split, npt, tmp_path):
    ai = _integrator()
    keys = set(engines.all_keys())
    dark = np.ones(GEO.shape, np.float32)
    for dummy, delta in ((None, None), (0.0, None), (0.0, 0.5)):
        if npt[1] is None:
            plan = ai.plan1d(npt[0], method=split, dummy=dummy, delta_dummy=delta)
        else:
            plan = ai.plan2d(*npt, method=split, dummy=dummy, delta_dummy=delta)
        for dtype in engines.DTYPES:
            for layout in ("stitched", "modules"):
                for d in (None, dark):
                    for em in (None, "poisson", "azimuthal"):
                        key = plan.engine_key(_frame(dtype, layout, None), d, em)
                        assert key in keys, key
                        # the engines answer for each kind (timing compiles: three dtypes)
                        if dtype in ("uint16", "int32", "float32"):
                            assert plan.engine_for(key, d, em).applies(key)
    with pytest.raises(TypeError, match="float16"):
        plan.integrate(_frame("float16", "stitched", None))


@pytest.mark.parametrize("split", ["no", "bbox"])
@pytest.mark.parametrize("dummy", [None, 0.0])
@pytest.mark.parametrize("error_model", [None, "poisson"])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("layout", ["stitched", "modules"])
def test_every_engine_of_a_key_gives_the_same_sums(split, dummy, error_model, dtype, layout):
    ai = _integrator()
    data = _frame(dtype, layout, dummy)
    base = ai.plan1d(300, method=split, dummy=dummy, polarization_factor=0.9)
    key = base.engine_key(data, None, error_model)
    options = engines.candidates(key)
    assert len(options) >= 2  # the lean keys are where engines compete
    results = {}
    for e in options:
        plan = ai.plan1d(300, method=split, dummy=dummy, polarization_factor=0.9, engine=e.name)
        r = plan.integrate(data, error_model=error_model)
        assert plan.engine_choices()[str(key)] == {
            "engine": e.name,
            "how": "forced",
            "times_ms": {},
        }
        results[e.name] = r
    first = results[options[0].name]
    assert np.count_nonzero(first.sum_signal) > 100
    for name, r in results.items():
        for field in ("sum_signal", "count", "sum_normalization", "intensity"):
            np.testing.assert_array_equal(getattr(r, field), getattr(first, field), err_msg=name)
        if error_model:
            np.testing.assert_array_equal(r.sum_variance, first.sum_variance, err_msg=name)


def test_the_choice_is_timed_once_stored_beside_the_tables_and_reused(tmp_path, caplog):
    img = _frame("uint16", "modules", None)
    with caplog.at_level(logging.INFO, logger="native_kernels.engine_choice"):
        plan = _integrator().plan1d(300, method="bbox", cache_dir=tmp_path)
        first = plan.integrate(img)
    key = str(plan.engine_key(img))
    made = plan.engine_choices()[key]
    assert made["how"] == "timed"
    assert set(made["times_ms"]) == {e.name for e in engines.candidates(plan.engine_key(img))}
    assert f"integration engine for {key}" in caplog.text and made["engine"] in caplog.text
    (store,) = tmp_path.glob(f"azint-*/{CHOICE_FILE}")
    stored = json.loads(store.read_text())
    assert stored[cpu_model()][key]["engine"] == made["engine"]
    # The same plan does not time again.
    before = store.stat().st_mtime_ns
    plan.integrate(img)
    assert plan.engine_choices()[key] == made and store.stat().st_mtime_ns == before
    # A new process on the same CPU reads the stored choice, whichever it is: store another
    # candidate than the one timed and check that a fresh plan takes it without timing.
    other = next(
        e.name for e in engines.candidates(plan.engine_key(img)) if e.name != made["engine"]
    )
    stored[cpu_model()][key] = {"engine": other, "how": "timed", "times_ms": {}}
    store.write_text(json.dumps(stored))
    again = _integrator().plan1d(300, method="bbox", cache_dir=tmp_path)
    second = again.integrate(img)
    assert again.engine_choices()[key]["engine"] == other
    assert again.engine_choices()[key]["how"] == "stored"
    np.testing.assert_array_equal(second.intensity, first.intensity)
    # Another CPU model's choices are not this one's: it times for itself.
    store.write_text(json.dumps({"Other CPU (family 1 model 1)": {key: {"engine": other}}}))
    third = _integrator().plan1d(300, method="bbox", cache_dir=tmp_path)
    third.integrate(img)
    assert third.engine_choices()[key]["how"] == "timed"
    assert set(json.loads(store.read_text())) == {"Other CPU (family 1 model 1)", cpu_model()}


def test_a_damaged_choice_file_is_timed_again(tmp_path):
    img = _frame("uint16", "stitched", None)
    plan = _integrator().plan1d(100, method="no", cache_dir=tmp_path)
    plan.integrate(img)
    (store,) = tmp_path.glob(f"azint-*/{CHOICE_FILE}")
    store.write_text("{not json")
    again = _integrator().plan1d(100, method="no", cache_dir=tmp_path)
    again.integrate(img)
    assert again.engine_choices()[str(again.engine_key(img))]["how"] == "timed"
    assert cpu_model() in json.loads(store.read_text())


@pytest.mark.parametrize("other_ms, chosen", [(9.7, 0), (9.0, 1)])
def test_another_engine_replaces_the_default_only_when_clearly_faster(other_ms, chosen):
    """Times from a controlled clock: a few per cent is noise on a loaded machine."""
    key = engines.EngineKey(1, "no", "bins", "uint16", "modules", "plain", "none")
    default, other = engines.candidates(key)
    seconds = {default.name: 10.0e-3, other.name: other_ms * 1e-3}
    calls = []

    def time_engine(e):
        calls.append(e.name)
        return seconds[e.name]

    chooser = EngineChooser()
    assert chooser.choose(key, time_engine) is (default, other)[chosen]
    assert chooser.choices()[str(key)]["times_ms"] == {
        default.name: pytest.approx(10.0),
        other.name: pytest.approx(other_ms),
    }
    n = len(calls)
    assert chooser.choose(key, time_engine) is (default, other)[chosen] and len(calls) == n


def test_a_choice_made_among_other_engines_is_timed_again(tmp_path):
    """An engine added since the choice was stored gets its chance on the next plan."""
    img = _frame("uint16", "modules", 0.0)
    plan = _integrator().plan1d(300, method="bbox", dummy=0.0, cache_dir=tmp_path)
    plan.integrate(img)
    key = str(plan.engine_key(img))
    (store,) = tmp_path.glob(f"azint-*/{CHOICE_FILE}")
    stored = json.loads(store.read_text())
    stored[cpu_model()][key] = {
        "engine": "bbox-scalar",
        "how": "timed",
        "times_ms": {"bbox-scalar": 1.0, "bbox-vector": 2.0},  # before the others existed
    }
    store.write_text(json.dumps(stored))
    again = _integrator().plan1d(300, method="bbox", dummy=0.0, cache_dir=tmp_path)
    again.integrate(img)
    made = again.engine_choices()[key]
    assert made["how"] == "timed"
    assert set(made["times_ms"]) == {e.name for e in engines.candidates(again.engine_key(img))}


# Modules whose rows are no multiple of four pixels (and shorter than four): the grouped
# loops handle a row's last pixels one by one.
ODD = DetectorGeometry((7, 38), (ModulePlacement(0, 0), ModulePlacement(9, 0, rot90=2)), name="odd")
NARROW = DetectorGeometry((30, 3), (ModulePlacement(0, 0),), name="narrow")


@pytest.mark.parametrize("geo", [ODD, NARROW], ids=["38-wide", "3-wide"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint32", "int64", "float32", "float64"])
def test_the_grouped_bbox_loops_give_the_scalar_loops_sums(geo, dtype):
    """Every pixel value kind the groups convert (signed, unsigned, above float32's exact
    integers, floats with NaN/inf), dummy pixels inside groups and in the row tails."""
    rng = np.random.default_rng(11)
    img = rng.poisson(30, geo.shape).astype(dtype)
    img[1::3, ::7] = 0  # the dummy, in groups and tails
    if dtype in ("uint32", "int64", "float64"):
        img[2, :5] = 2**24 + 1  # rounded to float32 as the scalar loops do
    if img.dtype.kind in "if":
        img[3, :6] = -5  # converted as signed values
    if img.dtype.kind == "f":
        img[4, 1] = np.nan
        img[5, -1] = -np.inf
    ai = AzimuthalIntegrator(*PARAMS, wavelength=WAVELENGTH, geometry=geo)
    for dummy in (None, 0.0):
        for em in (None, "poisson"):
            results = {}
            for name in ("bbox-scalar", "bbox-groups", "bbox-groups-signal"):
                plan = ai.plan1d(40, method="bbox", dummy=dummy, engine=name)
                results[name] = plan.integrate(img, error_model=em)
                forced = plan.engine_choices()[str(plan.engine_key(img, None, em))]
                # the signal-only loop applies to frames without errors only
                assert forced["engine"] == name or (name.endswith("signal") and em), forced
            ref = results["bbox-scalar"]
            assert np.count_nonzero(ref.count) > 10
            for name, r in results.items():
                for field in ("sum_signal", "count", "sum_normalization"):
                    np.testing.assert_array_equal(
                        getattr(r, field), getattr(ref, field), err_msg=f"{name} {dummy} {em}"
                    )
                if em:
                    np.testing.assert_array_equal(r.sum_variance, ref.sum_variance, err_msg=name)


@pytest.mark.parametrize("split", ["no", "bbox"])
def test_every_engine_of_a_2d_key_gives_the_same_sums(split):
    ai = _integrator()
    data = _frame("uint16", "modules", 0.0)
    key = ai.plan2d(40, 8, method=split, dummy=0.0).engine_key(data, None, "poisson")
    results = {}
    for e in engines.candidates(key):
        plan = ai.plan2d(40, 8, method=split, dummy=0.0, engine=e.name)
        results[e.name] = plan.integrate(data, error_model="poisson")
    first = next(iter(results.values()))
    assert len(results) >= 2 and np.count_nonzero(first.sum_signal) > 50
    for name, r in results.items():
        np.testing.assert_array_equal(r.sum_signal, first.sum_signal, err_msg=name)
        np.testing.assert_array_equal(r.sum_variance, first.sum_variance, err_msg=name)
