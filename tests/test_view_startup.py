"""The live view starts at once beside busy workers, even on a fresh install: its Numba
kernels are compiled in the run's setup phase, before any worker, and the view process loads
them at the run's priority before it lowers its own (view.nice = 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import psutil

from shmpipe.config import load_config, to_toml
from tests.conftest import REPO, wait_for
from tests.view_helpers import free_port, stop_run

RUN = "view-startup"


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except (urllib.error.URLError, OSError):
        return None


def _children(pid: int, role: str) -> list[psutil.Process]:
    """The children titled ``shmpipe: <role> [run]``."""
    out = []
    for c in psutil.Process(pid).children():
        try:
            if " ".join(c.cmdline()).startswith(f"shmpipe: {role} "):
                out.append(c)
        except psutil.Error:
            pass
    return out


def test_the_view_answers_at_once_beside_busy_workers_with_an_empty_numba_cache(tmp_path):
    cache = tmp_path / "numba"
    cache.mkdir()
    port = free_port()
    raw = {
        "run": {"workers": 2, "progress": "off", "name": RUN},
        "source": {"kind": "sim", "module_shape": [48, 64], "frames": 0},
        "kernels": {"busy": {"kind": "tests.plugins:Spin", "ms": 50.0}},
        "sinks": [{"kind": "null"}],
        "view": {"port": port},
    }
    path = tmp_path / "run.toml"
    path.write_text(to_toml(load_config(raw=raw).effective()))
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpipe", "run", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        workers = wait_for(
            lambda: _children(proc.pid, "worker"),
            120,
            "the workers to start (the setup phase compiles into an empty cache first)",
        )
        started = min(w.create_time() for w in workers)
        # Bounded, not timed: before, the view compiled at nice 19 beside the busy workers
        # and answered nothing for minutes.
        code, body = wait_for(lambda: _get(url + "/api/status"), 60, "the view to answer")
        status = json.loads(body)
        assert code == 200 and status["run"] == RUN and status["workers"] == 2
        assert _get(url + "/")[0] == 200  # the page too, whatever the images do
        wait_for(
            lambda: json.loads(_get(url + "/api/status")[1])["workers_busy"] > 0,
            30,
            "busy workers",
        )
        # Every kernel of the view is in the cache, written before the first worker started:
        # compiled in the setup phase, only loaded by the view process.
        compiled = [f for f in cache.rglob("binning.*") if f.suffix in (".nbi", ".nbc")]
        assert compiled, sorted(str(f) for f in cache.rglob("*"))
        assert max(f.stat().st_mtime for f in compiled) <= started, "compiled after the workers"
        view = _children(proc.pid, "view")
        assert len(view) == 1 and view[0].nice() == 19  # lowered once it was ready
    finally:
        stop_run(proc, log)
    assert proc.returncode == 143, (tmp_path / "run.log").read_text()
