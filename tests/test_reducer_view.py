"""Reducers in the live view: a scan map as an image that fills in while the scan runs, the
running mean as a profile with error bars (in a real browser), read from the run's reducer
checkpoint by the view process."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tests.conftest import REPO, SMALL_SIM, wait_for
from tests.test_reducer_runs import chain
from tests.view_helpers import RunningView

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NX, NY = 20, 15


def _raw(tmp_path) -> dict:
    return {
        "run": {"workers": 2, "progress": "off", "name": f"reduce-view-{os.getpid()}",
                "commit_every": 4, "reducer_state": str(tmp_path / "state.ckpt")},
        "source": {**SMALL_SIM, "frames": 100000, "mesh": [NX, NY], "pool": 7, "rate": 40.0},
        "kernels": chain(tmp_path),
        "reducers": {
            "avg": {"kind": "mean", "input": "integrate.intensity"},
            "scan": {"kind": "map", "input": "stats.sum", "x_grid": [0.0, 1.9, NX],
                     "y_grid": [0.0, 1.4, NY]},
        },
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "out_{stream}.h5")}],
        "view": {"image": "scan.map"},
    }  # fmt: skip


def test_the_view_shows_the_map_filling_in_and_the_mean_with_error_bars(tmp_path):
    rv = RunningView(tmp_path, _raw(tmp_path)["run"]["name"], raw=_raw(tmp_path))
    try:
        code, doc = rv.get_json("/api/outputs")
        outs = doc["outputs"]
        assert code == 200 and outs["scan.map"]["kind"] == "image"
        assert outs["avg.mean"]["kind"] == "profile"
        assert outs["avg.mean"]["errors"] == "avg.sem"
        assert outs["avg.mean"]["axis"] == "integrate.radial"

        def profile():
            code, p = rv.get_json("/api/profile/avg.mean")
            return p if code == 200 and p["sigma"] and p["sigma"][0] is not None else None

        p = wait_for(profile, timeout=60, what="the mean with its errors")
        assert len(p["x"]) == len(p["y"]) == 40 and p["x_unit"]

        def cells_filled():
            code, body, headers = rv.get("/api/pixel/scan.map?x=0&y=0")
            return code == 200

        wait_for(cells_filled, timeout=60, what="the map's first cell")
        code, png, headers = rv.get("/api/image/scan.map.png?width=200")
        assert code == 200 and png[:4] == b"\x89PNG"
        assert headers["X-Shape"] == f"{NY},{NX}"
        if os.path.exists(CHROMIUM):
            _screenshot(rv, tmp_path)
        _attached_view_shows_the_reducers(rv.name)
    finally:
        stderr = rv.stop()
    assert rv.proc.returncode == rv.clean_exit, stderr


def _attached_view_shows_the_reducers(name: str) -> None:
    """``shmpipe view RUN`` attached to the running pipeline lists and serves them too."""
    import json
    import subprocess
    import sys
    import urllib.request

    from tests.view_helpers import free_port

    port = free_port()
    view = subprocess.Popen([sys.executable, "-m", "shmpipe", "view", name, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:

        def get(path: str):
            if view.poll() is not None:
                raise AssertionError(view.communicate()[1])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        outs = wait_for(lambda: get("/api/outputs"), timeout=60, what="the attached view")
        assert outs["outputs"]["scan.map"]["kind"] == "image"
        p = wait_for(lambda: get("/api/profile/avg.mean"), timeout=60, what="the mean profile")
        assert len(p["y"]) == 40 and p["sigma"] is not None
    finally:
        view.terminate()
        view.communicate(timeout=30)


def _screenshot(rv: RunningView, tmp_path) -> None:
    """The page with the map as its image and the mean as its profile."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from tests.test_view_browser import CANVAS_NOT_BLANK, open_live_view

    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        # The map has a few distinct values (the pool's frames): drawn, not necessarily
        # colourful enough for CANVAS_NOT_BLANK.
        browser, page = open_live_view(p, rv.url, errors)
        page.select_option("#prof-name", "avg.mean")
        page.wait_for_function(CANVAS_NOT_BLANK, arg="profile", timeout=30000)
        page.wait_for_function(
            "document.getElementById('prof-title').textContent.includes('avg.mean')",
            timeout=30000,
        )
        assert "scan.map" in page.inner_text("#img-title")
        shot = tmp_path / "reducers-live-view.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    keep = os.environ.get("SHMPIPE_SCREENSHOTS")
    if keep:  # docs/img is refreshed from here: SHMPIPE_SCREENSHOTS=docs/img pytest ...
        shutil.copy(shot, REPO / keep / shot.name)
    assert np.frombuffer(shot.read_bytes()[:8], np.uint8).tolist()[1:4] == list(b"PNG")
