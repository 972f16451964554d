"""Reducers on the Tango device: the latest window's scalars and the ids it covers, through a
real DeviceProxy (no Tango database), equal to the window stored in the HDF5 file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from shmpipe.config import load_config, to_toml
from tests.conftest import SMALL_SIM, wait_for
from tests.test_reducer_runs import chain, reduced
from tests.test_tango import _free_port
from tests.view_helpers import stop_run

tango = pytest.importorskip("tango", reason="pytango is not installed")


def test_the_device_shows_the_latest_windows_scalars(tmp_path):
    port, device = _free_port(), "test/shmpipe/reducers"
    raw = {
        "run": {"workers": 2, "progress": "off", "name": "reduce-tango", "commit_every": 4,
                "reducer_state": str(tmp_path / "state.ckpt")},
        "source": {**SMALL_SIM, "frames": 0, "rate": 40.0, "pool": 7},
        "kernels": chain(tmp_path),
        "reducers": {"point": {"kind": "mean", "input": "stats.sum", "every": 10}},
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "out_{stream}.h5")}],
        "tango": {"device": device, "nodb": True, "port": port},
    }  # fmt: skip
    path = tmp_path / "run.toml"
    path.write_text(to_toml(load_config(raw=raw).effective()))
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "shmpipe", "run", "--config", str(path)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:

        def connected():
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                p = tango.DeviceProxy(f"tango://127.0.0.1:{port}/{device}#dbase=no")
                p.ping()
                return p
            except tango.DevFailed:
                return None

        proxy = wait_for(connected, 120, "the Tango device", interval=0.5)

        def second_window():  # None (quality invalid) until a window is written
            value = proxy.read_attribute("point_window").value
            return value is not None and value >= 1

        wait_for(second_window, 120, "the second window on the device", interval=0.1)
        # One request: its attributes come from the same window.
        names = ["point_window", "point_first_id", "point_last_id", "point_frames", "point_mean"]
        values = {a.name: a.value for a in proxy.read_attributes(names)}
        k = values["point_window"]
        assert (values["point_first_id"], values["point_last_id"]) == (10 * k + 1, 10 * k + 10)
        assert values["point_frames"] == 10
        assert proxy.get_attribute_config("point_mean").unit == "counts"
    finally:
        stop_run(proc, log)
    stored = reduced(tmp_path / "out_scan_0001.h5", "scan_0001", "point")
    row = int(np.nonzero(stored["window"] == k)[0][0])
    assert stored["mean"][row] == pytest.approx(values["point_mean"], rel=1e-12)
