"""A ``shmpipe serve`` in a subprocess against the project's ASAPO service, for the tests of
``shmpipe/serve/``: its files (service TOML, token file, a small LAMBDA-like recipe), HTTP
helpers, and a clean stop."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from shmpipe.config import load_config, to_toml
from shmpipe.plugins.sources.sim import SimParams, sim_geometry
from tests.conftest import REPO, wait_for
from tests.view_helpers import small_lambda_kernels

SHAPE = [48, 64]
BEAMTIME = "bt_serve"
TOKEN = "s3cret-write-token"
BEAMTIME_TOKEN = "bt-read-token"  # the ASAPO service of the tests takes any token


def pipeline_toml(tmp: Path, asapo_endpoint: str, data_source: str = "azint") -> Path:
    """A recipe's pipeline: 12 raw modules of 48 x 64, stitched, integrated (1000 points by
    default), to HDF5 files (``out_{stream}.h5``) and the ASAPO data source ``data_source``."""
    geo = tmp / "geometry.json"
    if not geo.exists():
        sim_geometry(SimParams(module_shape=SHAPE)).to_file(geo)
    raw = {
        "run": {"workers": 1, "progress": "off", "on_error": "skip", "commit_every": 2},
        "source": {
            "kind": "asapo",
            "endpoint": asapo_endpoint,
            "beamtime": "set_by_the_service",
            "data_source": "set_by_the_service",
            "part_shape": SHAPE,
            "timeout_ms": 200,
            # Unlimited redeliveries: a backlog held unacknowledged in a slow child's ring must
            # still come back to its replacement (3 attempts can be spent on the child itself).
            "resend_delay_ms": 2000,
            "resend_attempts": 0,
            "follow": "finished",
        },
        "kernels": small_lambda_kernels(geo),
        "sinks": [
            {"kind": "hdf5", "output": "out_{stream}.h5", "outputs": ["integrate.intensity"]},
            {
                "kind": "asapo",
                "endpoint": asapo_endpoint,
                "data_source": data_source,
                "outputs": ["integrate.intensity"],
            },
        ],
    }
    path = tmp / f"pipeline-{data_source}.toml"
    effective = load_config(raw=raw).effective()
    effective["sinks"][0]["output"] = "out_{stream}.h5"
    path.write_text(to_toml(effective))
    return path


def service_toml(
    tmp: Path,
    asapo_endpoint: str,
    recipes: list[dict],
    max_workers: int = 2,
    extra: str = "",
) -> Path:
    """A service file (port 0, state and outputs under ``tmp``) and its token file."""
    (tmp / "serve.tokens").write_text(f"# writers\n{TOKEN}\n")
    lines = [
        "[serve]",
        "port = 0",
        'state = "state/serve.sqlite"',
        'token_file = "serve.tokens"',
        f"max_workers = {max_workers}",
        f'endpoint = "{asapo_endpoint}"',
        f'beamtimes = [{{ id = "{BEAMTIME}", token = "{BEAMTIME_TOKEN}" }}]',
        'output_dir = "out"',
        "poll_s = 0.5",
        extra,
    ]
    for r in recipes:
        lines += ["", "[[recipes]]"]
        for k, v in r.items():
            lines.append(f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}")
    path = tmp / "service.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _inline(d: dict) -> str:
    return "{ " + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in d.items()) + " }"


class Serve:
    """``python -m shmpipe serve --config PATH`` in a subprocess, its output in a file."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.parent / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> Serve:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shmpipe", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.output()}")
            text = self.log.read_bytes()[offset:].decode(errors="replace")
            for line in text.splitlines():
                if line.startswith("shmpipe serve: http://"):
                    return line.split()[2]
            return None

        self.url = wait_for(ready, 60, "serve to listen").rstrip("/")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def request(self, method: str, path: str, body=None, token: str | None = None):
        """(status, decoded JSON) of one request."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def runs(self) -> list[dict]:
        status, runs = self.request("GET", "/api/runs")
        assert status == 200, runs
        return runs

    def run(self, run_id: int) -> dict:
        status, run = self.request("GET", f"/api/runs/{run_id}")
        assert status == 200, run
        return run

    def kill(self) -> None:
        """SIGKILL: the service dies at once; its pipelines go on."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM, as systemd stops it: the pipelines drain, then the service exits."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True
