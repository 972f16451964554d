"""The run as a user drives it: SIGTERM/Ctrl-C drains, a second Ctrl-C stops, SIGKILL of the
whole group leaves nothing behind, and two pipelines side by side do not collide."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from shmpipe.engine.supervisor import HUMAN_REPEAT_S
from shmpipe.observe.runs import live_runs
from shmpipe.observe.status import attach_tables
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.shm.layout import (
    P_PID,
)
from tests.conftest import run_cli, wait_for
from tests.faults import published  # noqa: F401 - also used by test_asapo_pipeline
from tests.view_helpers import free_port

SMALL = ["--set", "source.module_shape=[48, 64]", "--progress", "off"]


def start(name: str, *args: str, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shmpipe", "run", "--set", f"run.name={name}", *SMALL, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def frames_in(stderr: str) -> int:
    return int(re.search(r"(\d+) frames in, (\d+) out", stderr).group(1))


def test_sigterm_drains_in_flight_frames_and_exits_143(tmp_path):
    out = tmp_path / "drain.h5"
    proc = start(
        "drain",
        "--frames",
        "100000",
        "--set",
        "source.rate=60",
        "--sink",
        "hdf5",
        "--output",
        str(out),
        "--workers",
        "2",
    )
    wait_for(lambda: published("drain") >= 10, what="10 published frames")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped early by SIGTERM" in err
    n = frames_in(err)
    data = read_stream(str(out), "scan_0001")
    assert data["message_id"].tolist() == list(range(1, n + 1))  # everything pulled is published


def test_second_ctrl_c_stops_at_once(tmp_path):
    proc = start(
        "twice",
        "--frames",
        "100000",
        "--workers",
        "2",
        "--set",
        'kernels.slow.kind="tests.plugins:Sleepy"',
        "--set",
        "kernels.slow.ms=4000",
    )
    wait_for(lambda: any(r["name"] == "twice" for r in live_runs()), what="the run to start")
    wait_for(lambda: _busy_workers("twice") >= 1, what="a busy worker")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    # Two signals sent before the first is handled merge into one: wait for its answer.
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "no new messages" in line:
            break
    # A person's second Ctrl-C comes a moment later; one closer to the first counts as the
    # same interrupt delivered twice. The pause is the behaviour under test, not a wait.
    time.sleep(max(0.0, HUMAN_REPEAT_S - (time.monotonic() - t0)) + 0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    err = "".join(lines) + err
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 3.5  # did not wait for the 4 s frame in flight
    assert "stopped at once" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_child_then_its_group_drains(tmp_path, sig):
    """What `timeout` does (the child, then its whole group): one interrupt, not two."""
    out = tmp_path / "group.h5"
    name = f"group-{sig.name}"
    proc = start(
        name,
        "--frames",
        "100000",
        "--workers",
        "2",
        "--set",
        'kernels.slow.kind="tests.plugins:Sleepy"',
        "--set",
        "kernels.slow.ms=300",
        "--sink",
        "hdf5",
        "--output",
        str(out),
        "--set",
        f"metrics.port={free_port()}",
        new_session=True,
    )
    wait_for(lambda: published(name) >= 2, what="2 published frames")
    wait_for(lambda: _busy_workers(name) >= 1, what="a frame in flight")
    proc.send_signal(sig)
    os.killpg(proc.pid, sig)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "stopped at once" not in err
    assert "metrics process died" not in err  # it is not in the group the signal went to
    n = frames_in(err)
    data = read_stream(str(out), "scan_0001")
    # Every frame taken in, the ones in flight at the signal included, was written.
    assert data["message_id"].tolist() == list(range(1, n + 1))


def test_exit_status_tells_complete_from_frame_errors(tmp_path):
    ok = run_cli("run", *SMALL, "--frames", "6", "--workers", "1")
    assert ok.returncode == 0, ok.stderr
    failing = run_cli(
        "run",
        *SMALL,
        "--frames",
        "6",
        "--workers",
        "1",
        "--set",
        'run.on_error="skip"',
        "--set",
        'kernels.bad.kind="tests.plugins:FailOn"',
        "--set",
        "kernels.bad.ids=[1,2,3,4,5,6]",
    )
    assert failing.returncode == 3, failing.stderr
    assert "6 of 6 frames became error records" in failing.stderr


def test_run_help_lists_the_exit_codes():
    r = run_cli("run", "--help")
    assert r.returncode == 0
    for code in ("0 ", "1 ", "2 ", "3 ", "130", "143"):
        assert f"\n  {code}" in r.stdout, code


def _busy_workers(name: str) -> int:
    from shmpipe.shm.layout import (
        P_STATE,
        PROC_FIRST_WORKER,
        PS_BUSY,
    )

    for info in live_runs():
        if info["name"] == name:
            _, procs, m = attach_tables(info)
            n = int((procs[PROC_FIRST_WORKER:, P_STATE] == PS_BUSY).sum())
            del procs
            m.close()
            return n
    return 0


def test_sigkill_of_whole_group_then_clean_and_rerun(tmp_path):
    proc = start(
        "killed",
        "--frames",
        "100000",
        "--set",
        "source.rate=100",
        "--workers",
        "2",
        new_session=True,
    )
    wait_for(lambda: published("killed") >= 5, what="5 published frames")
    info = next(r for r in live_runs() if r["name"] == "killed")
    _, procs, m = attach_tables(info)
    pids = [int(p) for p in procs[:, P_PID] if p > 0]
    del procs
    m.close()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_for(
        lambda: (
            not any(
                psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                for p in pids
            )
        ),
        what="children to die",
    )
    r = run_cli("clean")
    assert r.returncode == 0
    assert f"removed the record of dead run 'killed' (pid {proc.pid})" in r.stdout
    again = run_cli("run", "--set", "run.name=killed", "--frames", "5", *SMALL)
    assert again.returncode == 0, again.stderr
    assert "5 frames in, 5 out" in again.stderr


def test_next_run_removes_what_a_killed_run_left(tmp_path):
    proc = start("left", "--frames", "100000", "--set", "source.rate=100", new_session=True)
    wait_for(lambda: published("left") >= 3, what="3 published frames")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    r = run_cli("run", "--frames", "3", *SMALL)
    assert r.returncode == 0, r.stderr
    assert "removed the record of dead run 'left'" in r.stderr


def test_two_pipelines_side_by_side(tmp_path):
    a = start("side-a", "--frames", "30", "--sink", "hdf5", "--output", str(tmp_path / "a.h5"))
    b = start("side-b", "--frames", "30", "--sink", "hdf5", "--output", str(tmp_path / "b.h5"))
    for p in (a, b):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for f in ("a.h5", "b.h5"):
        assert read_stream(str(tmp_path / f), "scan_0001")["message_id"].tolist() == list(
            range(1, 31)
        )


def test_same_run_name_twice_is_a_config_error():
    a = start("dup", "--frames", "100000", "--set", "source.rate=50")
    try:
        wait_for(lambda: any(r["name"] == "dup" for r in live_runs()), what="first run")
        r = run_cli("run", "--set", "run.name=dup", "--frames", "2", *SMALL)
        assert r.returncode == 2
        assert "run.name: run name 'dup' is in use" in r.stderr
    finally:
        a.send_signal(signal.SIGTERM)
        a.communicate(timeout=60)


@pytest.mark.parametrize("slots", [10**7])
def test_not_enough_shared_memory_refuses_to_start(slots):
    r = run_cli("run", "--set", f"ring.slots={slots}", "--frames", "1", *SMALL)
    assert r.returncode == 2
    assert "cannot start" in r.stderr and "MiB of shared memory but only" in r.stderr
    assert "lower ring.slots" in r.stderr


def test_sigterm_during_start_up_exits_143_and_leaves_nothing():
    proc = start(
        "early",
        "--frames",
        "5",
        "--set",
        'kernels.k.kind="tests.plugins:HangingSetup"',
        "--set",
        "run.setup_timeout_s=60",
    )
    for line in proc.stderr:
        if "setting up the kernels" in line:  # the preflight child is up and busy
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM during start-up" in err
    # (the no_leaks fixture checks that the preflight child did not live on)


def test_a_ctrl_c_during_the_clean_up_is_recorded_not_raised(tmp_path, monkeypatch):
    """Ctrl-C pressed while a finished run cleans up: it neither interrupts the clean-up (a
    KeyboardInterrupt there left the shared memory behind and once hung the exit in a join)
    nor turns the run's exit code into "stopped early"; the caller's handlers are put back
    afterwards (the autouse check sees /dev/shm as it was)."""
    from shmpipe.config import load_config
    from shmpipe.engine.sideprocs import SideProcesses
    from shmpipe.engine.supervisor import Pipeline
    from tests.faults import config

    stop_all = SideProcesses.stop_all
    interrupts = []

    def stop_and_interrupt(self):
        interrupts.append(os.getpid())
        os.kill(os.getpid(), signal.SIGINT)  # handled in this thread before the next line
        stop_all(self)

    monkeypatch.setattr(SideProcesses, "stop_all", stop_and_interrupt)
    raw = config(tmp_path, {"checksum": {}}, frames=6, workers=1, name="clean-up")
    before = signal.getsignal(signal.SIGINT)
    try:
        summary = Pipeline(load_config(raw=raw)).run()
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C interrupted the run's clean-up")
    assert len(interrupts) >= 2  # once as the processes stop, once as the run cleans up
    assert summary.exit_code == 0 and summary.frames_out == 6, summary.error
    assert signal.getsignal(signal.SIGINT) is before
    assert read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")["message_id"].size == 6
