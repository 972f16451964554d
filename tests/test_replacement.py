"""Every process replaceable: the dispatcher and the publisher SIGKILLed mid-run, several
times each, with the sim, files and ASAPO sources; each is replaced, the run completes
(exit 0) and every message is once in the sink, its result computed from its own frame."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest

from shmpipe.engine.supervisor import EXIT_OK
from shmpipe.plugins.kernels import frame_digest
from shmpipe.shm.layout import P_RESTARTS, PROC_DISPATCHER, PROC_PUBLISHER
from tests import faults
from tests.test_reliability import _digests_match


def _restarts(summary, role: str) -> int:
    return summary.dispatcher_restarts if role == "dispatcher" else summary.publisher_restarts


def _complete(f: faults.Figures, role: str, kills: int) -> None:
    summary = f.details["summary"]
    assert f.exit_code == EXIT_OK, summary.error
    assert f.faults == kills
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
    from tests.asapo_process import AsapoProcess

    service = AsapoProcess(tmp_path / "asapo-data")
    service.data_dir.mkdir()
    service.start()
    yield service
    service.stop()


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
