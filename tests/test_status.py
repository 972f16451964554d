"""``shmpipe status NAME``: the printed table of a running pipeline."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil

from shmpipe.observe.runs import live_runs
from shmpipe.observe.status import attach_tables
from shmpipe.shm.layout import (
    P_FRAMES,
    PROC_FIRST_WORKER,
)
from tests.conftest import run_cli, wait_for


def parse_table(text: str) -> dict[str, list[str]]:
    """Rows of the process table by role."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["role", "pid"])
    rows = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if not cells or cells[0] == "stream":
            break
        if cells[0] == "worker":
            cells = [f"worker {cells[1]}", *cells[2:]]
        rows[cells[0]] = cells
    return rows


def test_status_prints_a_row_per_process_of_a_running_pipeline():
    name = "status-test"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shmpipe",
            "run",
            "--set",
            f"run.name={name}",
            "--set",
            "source.module_shape=[48, 64]",
            "--set",
            "source.rate=10.0",
            "--frames",
            "300",
            "--workers",
            "2",
            "--progress",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def workers_busy():
            # Cheap in-process check first, so the command below runs once, at a known point.
            for info in live_runs():
                if info["name"] == name:
                    try:
                        _, procs, m = attach_tables(info)
                    except OSError:
                        return False
                    ok = all(procs[PROC_FIRST_WORKER + i, P_FRAMES] > 0 for i in (0, 1))
                    del procs
                    m.close()
                    return ok
            return False

        def busy_table():
            r = run_cli("status", name, timeout=30)
            if r.returncode != 0 or "worker 1" not in r.stdout:
                return None
            rows = parse_table(r.stdout)
            done = all(int(rows[f"worker {i}"][3]) > 0 for i in (0, 1))
            return (r.stdout, rows) if done else None

        wait_for(workers_busy, 60, "both workers to have processed frames")
        text, rows = wait_for(busy_table, 60, "both workers to have processed frames")
        assert proc.poll() is None, "the run ended before status saw it"
        assert text.splitlines()[0].startswith(f"{name}  pid {proc.pid}  chain checksum")
        assert set(rows) == {"supervisor", "dispatcher", "publisher", "worker 0", "worker 1"}
        children = {c.pid for c in psutil.Process(proc.pid).children()}
        # Metrics are off (port 0): exactly dispatcher, publisher and two workers.
        assert len(children) == 4
        assert int(rows["supervisor"][1]) == proc.pid
        for role in ("dispatcher", "publisher", "worker 0", "worker 1"):
            pid, state = int(rows[role][1]), rows[role][2]
            assert pid in children, role
            assert state in ("idle", "busy"), (role, state)
            rss_mib = float(rows[role][6])
            assert rss_mib > 5  # a Python process with numpy: tens of MiB
        frames = {role: int(r[3]) for role, r in rows.items()}
        # The dispatcher has taken at least what the workers handled; far from all 300 yet.
        assert frames["dispatcher"] >= frames["worker 0"] + frames["worker 1"] - 2
        assert frames["dispatcher"] < 300
        busy = float(rows["worker 0"][4])
        assert 0.0 <= busy <= 100.0
        assert "scan_0001" in text  # the per-stream lines
        proc.send_signal(signal.SIGTERM)  # drain and stop; the source would go on for 30 s
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err


def test_status_of_an_unknown_run():
    r = run_cli("status", "no-such-run", timeout=30)
    assert r.returncode == 1
    assert "no running pipeline named 'no-such-run'" in r.stdout
