"""A running sim pipeline with its live view, shared by the view tests."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from shmpipe.config import load_config, to_toml
from shmpipe.observe.runs import live_runs
from shmpipe.plugins.sources.sim import SimParams
from tests.conftest import wait_for


def stop_run(proc: subprocess.Popen, log) -> None:
    """Stop a ``shmpipe run`` child with SIGTERM (a kill past 60 s) and close its log."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def small_lambda_kernels(geo: Path, **integrate) -> dict:
    """Stitch and integrate the simulator's small LAMBDA frames (geometry file ``geo``)."""
    return {
        "stitch": {"kind": "lambda_stitch", "geometry": str(geo)},
        "integrate": {
            "kind": "azimuthal_integrate",
            "geometry": str(geo),
            "dist": 0.1,
            "poni1": 0.006,
            "poni2": 0.005,
            "wavelength": 1e-10,
            **integrate,
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_lambda_config(tmp: Path, name: str, port: int, zmq_port: int = 0, rate=10.0) -> Path:
    """A small LAMBDA-like chain (12 modules of 48 x 64): stitch, integrate, statistics."""
    from shmpipe.plugins.sources.sim import sim_geometry

    geo = tmp / "geometry.json"
    sim_geometry(SimParams(module_shape=[48, 64])).to_file(geo)
    raw = {
        "run": {"workers": 2, "progress": "off", "name": name, "commit_every": 4},
        "source": {"kind": "sim", "module_shape": [48, 64], "frames": 100000, "rate": rate},
        "kernels": {
            **small_lambda_kernels(geo, npt=50, error_model="poisson"),
            "stats": {"kind": "frame_stats", "threshold": 150.0},
        },
        "sinks": [{"kind": "hdf5", "output": str(tmp / "out_{stream}.h5")}],
        "view": {"port": port, "zmq": f"tcp://127.0.0.1:{zmq_port}" if zmq_port else ""},
    }
    path = tmp / "view.toml"
    path.write_text(to_toml(load_config(raw=raw).effective()))
    return path


class RunningView:
    """``shmpipe run`` with ``view.port`` set, in a subprocess; HTTP helpers for its view."""

    def __init__(
        self, tmp: Path, name: str, zmq_port: int = 0, rate: float = 10.0, raw: dict | None = None
    ) -> None:
        self.tmp, self.name, self.port = tmp, name, free_port()
        self.zmq_port = zmq_port
        if raw is None:
            cfg = small_lambda_config(tmp, name, self.port, zmq_port, rate)
        else:  # another chain: the caller's configuration, with this view's port
            raw = {**raw, "view": {**raw.get("view", {}), "port": self.port}}
            cfg = tmp / "view.toml"
            cfg.write_text(to_toml(load_config(raw=raw).effective()))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmpipe", "run", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr = ""
        wait_for(self._first_frame, timeout=120, what="the view's first frame")

    def _first_frame(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the pipeline stopped: {self.proc.communicate()[1]}")
        try:
            return self.get_json("/api/status")[1].get("message_id") is not None
        except OSError:
            return False

    def info(self) -> dict:
        return next(i for i in live_runs() if i["name"] == self.name)

    def get(self, path: str) -> tuple[int, bytes, dict]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers

    def get_json(self, path: str) -> tuple[int, dict]:
        status, body, _ = self.get(path)
        return status, json.loads(body)

    @property
    def clean_exit(self) -> int:
        """The exit status of a run that went well: 130 when stop() interrupted it (drained
        by Ctrl-C), 0 when it had ended by itself."""
        return 130 if getattr(self, "interrupted", False) else 0

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.interrupted = True
            self.proc.send_signal(signal.SIGINT)
            try:
                self.stderr = self.proc.communicate(timeout=90)[1]
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.stderr = self.proc.communicate()[1]
        return self.stderr


def reference_indices(image: np.ndarray, factor: int, vmin: float, vmax: float, scale: str):
    """The colour-map indices the view should send: numpy's nanmean binning, then scaling."""
    h, w = image.shape
    oh, ow = math.ceil(h / factor), math.ceil(w / factor)
    padded = np.full((oh * factor, ow * factor), np.nan)
    padded[:h, :w] = image
    blocks = padded.reshape(oh, factor, ow, factor).transpose(0, 2, 1, 3).reshape(oh, ow, -1)
    finite = np.isfinite(blocks)
    binned = np.where(finite, blocks, 0).sum(-1) / np.maximum(finite.sum(-1), 1)
    x = np.clip(binned - vmin, 0, vmax - vmin)
    if scale == "sqrt":
        x, span = np.sqrt(x), math.sqrt(vmax - vmin)
    elif scale == "log":
        x, span = np.log1p(x * 1000.0 / (vmax - vmin)), math.log1p(1000.0)
    else:
        span = vmax - vmin
    return np.floor(x * (255.0 / span) + 0.5).astype(np.uint8)
