"""Every process of a run names its role in ``ps``: ``shmpipe: worker 1 [run name]``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from tests.conftest import wait_for


def _titles(pid: int) -> set[str]:
    pids = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    out = subprocess.run(
        ["ps", "-o", "args=", "-p", ",".join(map(str, pids))], capture_output=True, text=True
    ).stdout
    return {line.strip() for line in out.splitlines()}


def test_process_titles_name_each_role_in_ps():
    run = subprocess.Popen(
        [sys.executable, "-m", "shmpipe", "run", "--workers", "2", "--progress", "off",
         "--set", "run.name=titles", "--set", "source.frames=0", "--set", "source.rate=50",
         "--set", "source.module_shape=[8, 8]", "--sink", "null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy(),
    )  # fmt: skip
    want = {
        "shmpipe: supervisor [titles]",
        "shmpipe: dispatcher [titles]",
        "shmpipe: publisher [titles]",
        "shmpipe: worker 0 [titles]",
        "shmpipe: worker 1 [titles]",
    }
    try:
        titles = wait_for(
            lambda: (t := _titles(run.pid)) >= want and t, timeout=60, what="process titles"
        )
        assert want <= titles
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.send_signal(signal.SIGINT)  # the second one stops at once
            run.wait(timeout=30)
