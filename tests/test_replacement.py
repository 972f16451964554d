"""Every process replaceable: the dispatcher and the publisher SIGKILLed mid-run, several
times each, with the sim, files and ASAPO sources; each is replaced, the run completes
(exit 0) and every message is once in the sink, its result computed from its own frame."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from shmpipe.child.exits import (
    CHILD_FAILED,
    CHILD_FINISHED,
    CHILD_RAISED,
    CHILD_REFUSED,
    ExitKind,
    classify_exit,
)
from shmpipe.config import load_config
from shmpipe.engine.exit_codes import EXIT_CONFIG_ERROR, EXIT_FAILED, EXIT_SIGTERM
from shmpipe.engine.supervisor import EXIT_OK, Pipeline
from shmpipe.observe.runs import live_runs
from shmpipe.observe.status import attach_tables
from shmpipe.plugins.kernels import frame_digest
from shmpipe.shm.layout import (
    P_FRAMES,
    P_PID,
    P_READY_NS,
    P_RESTARTS,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
)
from tests import faults
from tests.conftest import run_cli, wait_for
from tests.test_reliability import _digests_match


def _restarts(summary, role: str) -> int:
    return summary.dispatcher_restarts if role == "dispatcher" else summary.publisher_restarts


def _complete(f: faults.Figures, role: str, kills: int) -> None:
    """Exit 0, nothing lost or twice, and every kill (at least ``kills``) replaced."""
    summary = f.details["summary"]
    assert f.exit_code == EXIT_OK, summary.error
    assert f.faults >= kills
    kills = f.faults
    assert (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    assert _restarts(summary, role) == kills
    # The process table, which the metrics endpoint and `shmpipe status` read, counts them.
    row = PROC_DISPATCHER if role == "dispatcher" else PROC_PUBLISHER
    assert summary.timings["procs"][row, P_RESTARTS] == kills
    assert summary.errors == 0


@pytest.mark.parametrize("role", ["dispatcher", "publisher"])
def test_sim_source_role_killed_three_times_every_message_once(tmp_path, role):
    f = faults.process_death(tmp_path, role, "sim", kills=3, frames=120)
    _complete(f, role, 3)
    for data in f.details["data"].values():
        assert data["message_id"].tolist() == list(range(1, 61))  # in order, once each
        _digests_match(data)


@pytest.mark.parametrize("role", ["dispatcher", "publisher"])
def test_unordered_publishing_role_killed_three_times_every_message_once(tmp_path, role):
    """Unordered: the replacement publisher also knows which results beyond the first one
    not yet out were published already."""
    f = faults.process_death(tmp_path, role, "sim", kills=3, frames=120, ordered=False)
    _complete(f, role, 3)
    for data in f.details["data"].values():
        assert sorted(data["message_id"].tolist()) == list(range(1, 61))
        assert data["attrs"]["finished"]  # the marker waited for every frame before it


@pytest.mark.slow
@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("role", ["dispatcher", "publisher"])
def test_role_killed_twenty_times_every_message_once(tmp_path, role, ordered):
    f = faults.process_death(tmp_path, role, "sim", kills=20, frames=1800, ordered=ordered)
    _complete(f, role, 15)  # the run may end before the last few
    for data in f.details["data"].values():
        assert sorted(data["message_id"].tolist()) == list(range(1, 901))
        _digests_match(data)


@pytest.mark.parametrize("role", ["dispatcher", "publisher"])
def test_files_source_role_killed_three_times_every_message_once(tmp_path, role):
    f = faults.process_death(tmp_path, role, "files", kills=3, frames=120)
    _complete(f, role, 3)
    for k, name in enumerate(("run_a", "run_b")):
        data = f.details["data"][name]
        assert data["message_id"].tolist() == list(range(1, 61))
        frames = np.load(tmp_path / f"{name}.npy")
        for i, mid in enumerate(data["message_id"]):
            assert bytes(data["checksum.digest"][i]) == frame_digest([frames[mid - 1]])
        assert float(frames[0, 0, 0]) == 1000 * k


@pytest.fixture
def asapo(tmp_path):
    pytest.importorskip("asapo_consumer")
    from shmpipe.asapo.process import AsapoProcess

    with AsapoProcess(tmp_path / "asapo-data") as service:
        yield service


@pytest.mark.parametrize("role", ["dispatcher", "publisher"])
def test_asapo_source_role_killed_twice_every_message_once(asapo, tmp_path, role):
    """ASAPO: what the dead dispatcher took comes back by the group's resend; what the dead
    publisher wrote but did not acknowledge is refused by both sinks as a duplicate."""
    f = faults.process_death(tmp_path, role, "asapo", service=asapo, kills=2, frames=60)
    _complete(f, role, 2)
    assert sorted(f.details["data"]["scan_0001"]["message_id"].tolist()) == list(range(1, 61))
    assert f.details["output_ids"] == list(range(1, 61))


# -- the watchdog, on by default ------------------------------------------------------------
def test_worker_stopped_for_good_with_the_default_configuration(tmp_path, caplog):
    """SIGSTOP a worker and never continue it, with no watchdog setting: the adaptive
    watchdog (floor 10 s) kills it, its frames go to the other worker, every message is
    published once, and the log names the stalled and the stuck worker and its message."""
    caplog.set_level(logging.WARNING, logger="shmpipe")
    f = faults.stopped_worker(tmp_path, frames=40, rate=60.0, watchdog_s=None, deadline_s=90)
    summary = f.details["summary"]
    assert f.exit_code == EXIT_OK, summary.error
    assert f.faults == 1 and (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    assert f.details["data"]["message_id"].tolist() == list(range(1, 41))
    assert summary.worker_restarts == 1
    assert f.longest_recovery_s >= 10.0  # the floor: no measured frame comes near it
    text = caplog.text
    pid = f.details["stopped"][0]
    kill = re.search(
        rf"watchdog: worker 0 \(pid {pid}\) has been stopped for more than 10\.0 s holding "
        r"stream 'scan_0001' message (\d+)",
        text,
    )
    assert kill, text
    stall = re.search(r"stall: nothing published for \d+ s with frames in flight; (.*)", text)
    assert stall and f"worker 0 (pid {pid}): stream 'scan_0001' message" in stall.group(1)
    assert f"message {kill.group(1)}" in stall.group(1)


# -- process death in one room ---------------------------------------------------------------
def test_child_exit_statuses_are_classified_in_one_place():
    """A child's exit status has one meaning for every role (``child/exits.py``), apart
    from the run's own exit statuses (``engine/exit_codes.py``)."""
    kinds = {
        CHILD_FINISHED: ExitKind.FINISHED,
        CHILD_RAISED: ExitKind.RAISED,
        CHILD_FAILED: ExitKind.FAILED,
        CHILD_REFUSED: ExitKind.REFUSED,
        -signal.SIGKILL: ExitKind.DIED,
        -signal.SIGSEGV: ExitKind.DIED,
        7: ExitKind.DIED,
    }
    assert {code: classify_exit(code).kind for code in kinds} == kinds
    assert classify_exit(-9).cause == "killed by signal 9 (SIGKILL)"
    assert classify_exit(7).cause == "exit code 7"


@pytest.fixture
def recovery(tmp_path):
    """The recovery of a prepared run (real tables and pipes, no process forked yet), with
    ``run.max_restarts = 2``."""
    import multiprocessing as mp

    from shmpipe.engine.recovery import Recovery
    from shmpipe.engine.scheduler import Scheduler
    from shmpipe.engine.startup import prepare
    from shmpipe.engine.summary import RunSummary

    cfg = load_config(raw=faults.config(tmp_path, {"checksum": {}}, frames=4, max_restarts=2))
    p = prepare(mp.get_context("fork"), cfg)
    try:
        yield Recovery(p, Scheduler(p.ring), cfg, RunSummary("unit"))
    finally:
        for pipe in [*p.seats, p.done, p.dispatcher_inbox]:
            pipe.close()
        p.ring.close()
        p.live.close()


def test_every_role_s_exit_has_one_policy_and_one_restart_budget(recovery):
    """``Recovery.after_exit``: a finished dispatcher ends the input, a failed child fails the
    run with its reason, a refused source is a configuration error, and a death of any role
    is replaced until the deaths of all roles together pass ``run.max_restarts``."""
    from shmpipe.engine.recovery import RunFailed, Verdict

    ring = recovery.p.ring
    worker = PROC_FIRST_WORKER
    assert recovery.after_exit(PROC_DISPATCHER, 11, CHILD_FINISHED).verdict is Verdict.ENDED
    ring.set_exit_reason(worker, "worker 0: kernels declared different outputs")
    with pytest.raises(RunFailed, match="kernels declared different outputs") as failed:
        recovery.after_exit(worker, 12, CHILD_FAILED)
    assert failed.value.exit_code == EXIT_FAILED
    with pytest.raises(RunFailed) as refused:
        recovery.after_exit(PROC_DISPATCHER, 13, CHILD_REFUSED)
    assert refused.value.exit_code == EXIT_CONFIG_ERROR
    for proc in (PROC_DISPATCHER, PROC_PUBLISHER):
        assert recovery.after_exit(proc, 14, -signal.SIGKILL).verdict is Verdict.REPLACE
    with pytest.raises(RunFailed, match=r"processes died 3 times \(run.max_restarts = 2\); "
                       r"last: worker 0 \(exit code 1\)"):  # fmt: skip
        recovery.after_exit(worker, 15, CHILD_RAISED)  # a kernel that called exit(1)
    s = recovery.summary
    assert (s.dispatcher_restarts, s.publisher_restarts, s.worker_restarts) == (1, 1, 1)
    assert ring.procs[[PROC_DISPATCHER, PROC_PUBLISHER, worker], P_RESTARTS].tolist() == [1] * 3


def test_one_restart_budget_stops_a_run_whose_workers_keep_dying(tmp_path):
    """A frame that kills every worker taking it (``run.max_attempts`` not reached) spends
    ``run.max_restarts``, the one budget of every role: the run fails (exit 1) naming it."""
    crash = {"kind": "tests.plugins:Crash", "ids": [3], "mode": "sigkill"}
    raw = faults.config(
        tmp_path, {"checksum": {}, "crash": crash}, frames=10, max_attempts=10, max_restarts=2
    )
    summary, hung = faults.run_guarded(Pipeline(load_config(raw=raw)), 120)
    assert not hung
    assert summary.exit_code == EXIT_FAILED
    assert summary.worker_restarts == 3
    assert summary.error.startswith("processes died 3 times (run.max_restarts = 2); last: worker ")
    assert summary.error.endswith("(killed by signal 9 (SIGKILL))")


# -- what an operator sees ------------------------------------------------------------------
def test_restarts_and_a_stall_in_status_metrics_and_summary(tmp_path):
    """A CLI run whose dispatcher and publisher are SIGKILLed and whose worker is stopped:
    `shmpipe status` shows each role's restarts and STALLED, the metrics the same, and the
    summary counts the restarts."""
    from tests.test_metrics import free_port, scrape
    from tests.test_status import parse_table

    name, port = "replace-status", free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpipe", "run", "--set", f"run.name={name}",
         "--set", "source.module_shape=[48, 64]", "--set", "source.rate=40.0",
         "--set", f"metrics.port={port}", "--frames", "2000", "--workers", "2",
         "--progress", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stopped = 0
    try:
        _, procs, mapping = wait_for(lambda: _attached(name), 60, "the run to start")
        for role, row in (("dispatcher", PROC_DISPATCHER), ("publisher", PROC_PUBLISHER)):
            wait_for(lambda: procs[PROC_PUBLISHER, P_FRAMES] >= 10, 60, "frames published")
            old = int(procs[row, P_PID])
            os.kill(old, signal.SIGKILL)
            wait_for(
                lambda r=row, o=old: procs[r, P_PID] not in (0, o) and procs[r, P_READY_NS],
                60,
                f"a new {role}",
            )
        stopped = int(procs[PROC_FIRST_WORKER, P_PID])
        os.kill(stopped, signal.SIGSTOP)

        def stalled_status():
            r = run_cli("status", name, timeout=30)
            return r.stdout if "STALLED: nothing published for" in r.stdout else None

        rows = parse_table(wait_for(stalled_status, 60, "status to show the stall"))
        assert rows["dispatcher"][-1] == "1" and rows["publisher"][-1] == "1"
        m = scrape(port)
        assert m[("shmpipe_process_restarts_total", (("process", "dispatcher"),))] == 1
        assert m[("shmpipe_process_restarts_total", (("process", "publisher"),))] == 1
        assert m[("shmpipe_stalled_seconds", ())] >= 5.0
        os.kill(stopped, signal.SIGCONT)
        procs = None  # the views must go before the mapping closes
        mapping.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == EXIT_SIGTERM, err  # stopped by the SIGTERM above, drained
    assert "stall: nothing published for" in err and f"worker 0 (pid {stopped})" in err
    assert "1 dispatcher, 1 publisher" in err  # the summary line


def _attached(name: str):
    for info in live_runs():
        if info["name"] == name:
            try:
                return attach_tables(info)
            except OSError:
                return None
    return None


def test_adaptive_limit_is_the_floor_until_frames_are_measured_then_a_multiple_of_p99():
    from types import SimpleNamespace

    from shmpipe.config import load_config
    from shmpipe.engine.watchdog import Watchdog, chain_p99_s
    from shmpipe.shm.layout import KERNEL_BUCKETS_S, MAX_KERNELS, N_BUCKETS

    hist = np.zeros((3, MAX_KERNELS, N_BUCKETS), np.int64)
    ring = SimpleNamespace(timings=SimpleNamespace(kernel_hist=hist))
    run = load_config(raw={}).run  # the defaults: adaptive, floor 10 s, factor 20
    assert run.watchdog and run.watchdog_s == 0
    dog = Watchdog(run, ring)
    assert chain_p99_s(hist) == 0 and dog.limit_s() == run.watchdog_floor_s
    # Kernel 0: 990 frames up to 1 ms, 10 up to 2 ms (p99 in the 1 ms bucket) on two workers;
    # kernel 1: every frame up to 1 s. The chain's p99: the sum of both bounds.
    ms1, ms2, s1 = (KERNEL_BUCKETS_S.index(b) for b in (1e-3, 2e-3, 1.0))
    hist[1, 0, ms1], hist[2, 0, ms1], hist[2, 0, ms2] = 500, 490, 10
    hist[1, 1, s1] = 1000
    assert chain_p99_s(hist) == pytest.approx(1.001)
    assert dog.limit_s() == pytest.approx(20 * 1.001)
    hist[1, 1, s1] = 0  # fast frames only: never below the floor
    assert dog.limit_s() == run.watchdog_floor_s
    run.watchdog_s = 3.0  # a fixed limit wins
    assert dog.limit_s() == 3.0
