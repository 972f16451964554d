"""The live view of a single-module detector (a PILATUS 100k named by its pyFAI name): the same
page and API as for the LAMBDA 9M, with no LAMBDA assumption anywhere on the way."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shmpipe.plugins.sinks.hdf5 import read_stream
from tests.conftest import wait_for
from tests.view_helpers import RunningView

SHAPE = [195, 487]  # Pilatus100k: one module


def test_view_of_a_single_module_detector(tmp_path):
    raw = {
        "run": {"workers": 2, "progress": "off", "name": "view-single", "commit_every": 4},
        "source": {
            "kind": "sim",
            "modules": 1,
            "module_shape": SHAPE,
            "frames": 100000,
            "rate": 10.0,
        },
        "kernels": {
            "integrate": {
                "kind": "azimuthal_integrate",
                "input": "parts",
                "geometry": "Pilatus100k",
                "dist": 0.2,
                "poni1": 0.005,
                "poni2": 0.02,
                "wavelength": 1e-10,
                "npt": 64,
                "error_model": "poisson",
            },
            "stats": {"kind": "frame_stats", "input": "parts", "threshold": 150.0},
        },
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "out_{stream}.h5")}],
    }
    rv = RunningView(tmp_path, "view-single", raw=raw)
    try:
        code, doc = rv.get_json("/api/outputs")
        outs = doc["outputs"]
        assert code == 200
        assert outs["raw"]["kind"] == "image" and outs["raw"]["modules"] == 1
        assert outs["integrate.intensity"]["kind"] == "profile"
        assert outs["integrate.intensity"]["axis"] == "integrate.radial"

        code, body, headers = rv.get("/api/image/raw.png?width=487")
        assert code == 200, body
        assert headers["X-Shape"] == f"{SHAPE[0]},{SHAPE[1]}"  # the module as it is, no gaps
        png = np.asarray(Image.open(io.BytesIO(body)))
        assert png.shape[:2] == tuple(SHAPE) and png.std() > 0  # drawn, not blank

        def profile():
            code, p = rv.get_json("/api/profile/integrate.intensity")
            return p if code == 200 else None

        p = wait_for(profile, timeout=30, what="a profile")
        assert p["x_unit"] == "q_nm^-1" and len(p["x"]) == len(p["y"]) == 64
        mid = p["message_id"]
    finally:
        err = rv.stop()
    assert rv.proc.returncode == rv.clean_exit, err
    rows = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    row = rows["message_id"].tolist().index(mid)
    np.testing.assert_allclose(p["y"], rows["integrate.intensity"][row], equal_nan=True)
