"""Detector geometry as data: default layout, files, NeXus modules, PONI files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from native_kernels.geometry import (
    DetectorGeometry,
    GeometryError,
    ModulePlacement,
    load_geometry,
    read_nexus_corrections,
)
from native_kernels.poni import Poni, PoniError, parse_poni, read_poni, write_poni


def test_default_lambda9m_layout():
    g = DetectorGeometry.default_lambda9m()
    assert g.module_shape == (516, 1556)
    assert g.n_modules == 12 and g.present == list(range(12))
    assert g.shape == (4 * 516 + 3 * 140, 3 * 1556 + 2 * 30)
    assert g.valid_mask().sum() == 12 * 516 * 1556
    assert g.pixel_size == (55e-6, 55e-6)


def test_missing_corner_module_keeps_shape():
    g = DetectorGeometry.default_lambda9m(missing=(11,))
    assert g.present == list(range(11))
    assert g.shape == DetectorGeometry.default_lambda9m().shape
    assert g.valid_mask().sum() == 11 * 516 * 1556
    assert not g.valid_mask()[-516:, -1556:].any()
    assert g.with_missing([0]).present == list(range(1, 11))


def test_rotated_module_occupies_swapped_shape():
    g = DetectorGeometry((4, 6), (ModulePlacement(0, 0), ModulePlacement(0, 8, rot90=1)))
    assert g.shape == (6, 12)
    idx = g.module_pixel_index()
    assert idx.shape == (2, 4, 6)
    assert len(np.unique(idx)) == 48  # every module pixel lands on its own image pixel


def test_overlap_and_bad_values_are_rejected():
    with pytest.raises(GeometryError, match="overlap"):
        DetectorGeometry((4, 4), (ModulePlacement(0, 0), ModulePlacement(2, 2)))
    with pytest.raises(GeometryError, match="negative"):
        DetectorGeometry((4, 4), (ModulePlacement(-1, 0),))
    with pytest.raises(GeometryError, match="out of range"):
        DetectorGeometry.default_lambda9m().with_missing([12])


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_geometry_file_roundtrip(tmp_path, suffix):
    path = tmp_path / f"geo{suffix}"
    if suffix == ".json":
        g = DetectorGeometry.default_lambda9m(missing=(2,))
        g.to_file(path)
        back = DetectorGeometry.from_file(path)
        assert back == g and back.digest() == g.digest()
        return
    path.write_text(
        'name = "p03"\nmodule_shape = [516, 1556]\ndummy = -1\nmissing_modules = [1]\n'
        "[[modules]]\ny = 0\nx = 0\n"
        "[[modules]]\ny = 0\nx = 1586\nflip_lr = true\n"
        "[[modules]]\ny = 656\nx = 0\nrot90 = 2\n"
    )
    g = DetectorGeometry.from_file(path)
    assert g.name == "p03" and g.dummy == -1 and g.present == [0, 2]
    assert g.shape == (656 + 516, 1586 + 1556)
    assert g.modules[2].rot90 == 2 and g.modules[1].flip_lr
    assert load_geometry(path, [0]).present == [2]


def test_geometry_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("module_shape = [516, 1556]\n[[modules]]\ny = 0\n")
    with pytest.raises(GeometryError):
        DetectorGeometry.from_file(bad)
    bad.write_text("this is not toml = = =")
    with pytest.raises(GeometryError, match="cannot read"):
        DetectorGeometry.from_file(bad)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"modules": [{"y": 0, "x": 0}], "colour": "red"}))
    with pytest.raises(GeometryError, match="unknown"):
        DetectorGeometry.from_file(extra)


def test_from_nexus_module_files(tmp_path):
    # P03-like: 3 columns, a corner module absent, offsets as [x, y] in pixels.
    offsets = [(0, 0), (1586, 0), (3172, 0), (0, 660), (1586, 660)]
    paths = []
    for i, (x, y) in enumerate(offsets):
        p = tmp_path / f"scan_m{i + 1:02d}.nxs"
        with h5py.File(p, "w") as f:
            d = f.create_group("entry/instrument/detector")
            d.create_dataset("translation/distance", data=[x + 5.0, y + 7.0])
            d.create_dataset("data", shape=(1, 516, 1556), dtype="u2")
            d.create_dataset("flatfield", data=np.full((516, 1556), 1.5, np.float32))
            d.create_dataset("flatfield_applied", data=i == 0)
        paths.append(p)
    g = DetectorGeometry.from_nexus(paths)
    assert [(m.x, m.y) for m in g.modules] == offsets  # shifted to start at 0
    assert g.shape == (660 + 516, 3172 + 1556)
    flats, masks = read_nexus_corrections(paths)
    assert flats[0] is None and all(f is not None and f[0, 0] == 1.5 for f in flats[1:])
    assert masks == [None] * 5
    with pytest.raises(GeometryError):
        DetectorGeometry.from_nexus([tmp_path / "missing.nxs"])


PONI_V2 = """# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis
poni_version: 2
Detector: Detector
Detector_config: {"pixel1": 5.5e-05, "pixel2": 5.5e-05, "max_shape": [2484, 4728]}
Distance: 0.2
Poni1: 0.05
Poni2: 0.12
Rot1: 0.02
Rot2: -0.01
Rot3: 0.0
Wavelength: 1e-10
"""


def test_parse_poni_v2_and_pyfai_agrees(tmp_path):
    p = parse_poni(PONI_V2)
    assert p.params == (0.2, 0.05, 0.12, 0.02, -0.01, 0.0)
    assert p.wavelength == 1e-10 and p.pixel_size == (5.5e-5, 5.5e-5)
    path = tmp_path / "out.poni"
    write_poni(p, path)
    assert read_poni(path) == p
    pyFAI = pytest.importorskip("pyFAI")
    ai = pyFAI.load(str(path))
    assert (ai.dist, ai.poni1, ai.poni2, ai.rot1, ai.rot2, ai.rot3) == p.params
    assert ai.wavelength == p.wavelength


@pytest.mark.parametrize(
    "text, match",
    [
        ("Distance: 0.1\nPoni1: 0\n", "missing"),
        (PONI_V2.replace("Rot2: -0.01", "Rot2: abc"), "not a number"),
        ("just garbage without colon", "key: value"),
        (PONI_V2.replace("poni_version: 2", "poni_version: 9"), "newer"),
        (PONI_V2.replace('"max_shape"', '"orientation": 7, "max_shape"'), "orientation"),
        (PONI_V2.replace("Detector_config: {", "Detector_config: {{"), "JSON"),
        (PONI_V2.replace("Distance: 0.2", "Distance: -1"), "positive"),
    ],
)
def test_bad_poni_is_a_clear_error(text, match):
    with pytest.raises(PoniError, match=match):
        parse_poni(text)


def test_unreadable_poni_file(tmp_path):
    with pytest.raises(PoniError, match="cannot read"):
        read_poni(tmp_path / "nope.poni")
    assert isinstance(Poni(0.1, 0, 0), Poni)
