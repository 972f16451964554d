"""``shmpipe status NAME``: the printed table of a running pipeline."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import psutil

from shmpipe.observe.runs import live_runs
from shmpipe.observe.snapshot import RunTotals, read_processes, ring_holders, ring_occupancy
from shmpipe.observe.status import attach_tables, process_rows
from shmpipe.shm.layout import (
    N_COLUMNS,
    P_COLUMNS,
    P_FRAMES,
    P_PID,
    P_RESTARTS,
    P_STATE,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
    PS_BUSY,
    PS_DEAD,
    STATE,
    SlotState,
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
        assert "  state running  " in text.splitlines()[0]  # the supervisor's run state
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


def test_process_rows_are_read_through_the_snapshot_reader_with_role_names():
    procs = np.zeros((4, P_COLUMNS), dtype="<i8")
    procs[PROC_DISPATCHER, [P_PID, P_FRAMES, P_STATE]] = (101, 7, PS_BUSY)
    procs[PROC_FIRST_WORKER + 1, [P_PID, P_FRAMES, P_RESTARTS, P_STATE]] = (104, 3, 2, PS_DEAD)
    procs[PROC_PUBLISHER, P_STATE] = 99  # a value no state has
    rows = process_rows(procs, supervisor_pid=0)
    assert [r.role for r in rows] == ["dispatcher", "publisher", "worker 0", "worker 1"]
    assert [r.state for r in rows] == ["busy", "?", "starting", "dead"]
    assert (rows[0].pid, rows[0].frames) == (101, 7)
    assert (rows[3].pid, rows[3].frames, rows[3].restarts) == (104, 3, 2)
    assert [r.role for r in rows] == [f.role for f in read_processes(procs)]


def test_the_ring_is_counted_per_state_and_per_declared_holder():
    """``shmpipe status`` and the totals read who holds a slot from ``SLOT_STATES``."""
    table = np.zeros((8, N_COLUMNS), dtype="<i8")
    S = SlotState
    table[:, STATE] = [S.FREE, S.FILLING, S.FILLED, S.ASSIGNED, S.CLAIMED, S.CLAIMED, S.DONE,
                       S.PUBLISHING]  # fmt: skip
    assert ring_occupancy(table) == {
        "free": 1, "filling": 1, "filled": 1, "assigned": 1, "claimed": 2, "done": 1,
        "publishing": 1,
    }  # fmt: skip
    assert ring_holders(table) == {"dispatcher": 2, "worker": 3, "publisher": 2}
    procs = np.zeros((4, P_COLUMNS), dtype="<i8")
    assert RunTotals.read(procs, table).ring_used == 7  # every slot but the free one
