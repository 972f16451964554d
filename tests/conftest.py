"""Shared fixtures: an isolated run registry, /dev/shm and child-process leak checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL_SIM = {"kind": "sim", "module_shape": [48, 64], "modules": 12, "frames": 40, "pool": 3}


@pytest.fixture(scope="session", autouse=True)
def isolated_registry(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    os.environ["SHMPIPE_RUN_DIR"] = str(d)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    yield d


def _shm_entries() -> set[str]:
    try:
        return {e for e in os.listdir("/dev/shm") if not e.startswith(("sem.", "lttng"))}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test leaves /dev/shm and the process tree as it found them."""
    before = _shm_entries()
    yield
    me = psutil.Process()
    left = [
        c
        for c in me.children(recursive=True)
        if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
    ]
    for c in left:
        c.kill()
    assert not left, f"processes left running: {[(c.pid, c.name()) for c in left]}"
    new = _shm_entries() - before
    assert not new, f"left in /dev/shm: {sorted(new)}"


def run_cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m shmpipe ARGS`` to completion and return its output."""
    return subprocess.run(
        [sys.executable, "-m", "shmpipe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=kw.pop("cwd", None),
        env=kw.pop("env", None),
        **kw,
    )


def pytest_addoption(parser):
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the long reliability runs (@pytest.mark.soak); skipped otherwise",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="long run: give --soak to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.02):
    """Poll ``predicate`` until it returns something true (returned), or fail after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)  # polling interval of a bounded wait
    raise AssertionError(f"timed out waiting for {what}")
