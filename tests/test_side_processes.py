"""Side processes: declared once, started with the ring, restarted when they die, and never
able to stop the pipeline."""

from __future__ import annotations

import os

from shmpipe.api.sideprocess import SideProcess
from shmpipe.config import load_config
from shmpipe.engine import sideprocs
from shmpipe.engine.supervisor import EXIT_OK, Pipeline
from shmpipe.shm.layout import P_FRAMES, PROC_PUBLISHER


def _dies_at_once(p, resource, supervisor_pid: int) -> None:
    assert p.ring.procs[PROC_PUBLISHER, P_FRAMES] >= 0  # it can read the tables
    os._exit(7)


class _Failing:
    calls = 0

    @classmethod
    def prepare(cls, config):
        cls.calls += 1
        if cls.calls > 1:
            raise OSError("port taken")
        return None


DIES = SideProcess("dies", enabled=lambda config: True, target=_dies_at_once)
DISABLED = SideProcess("disabled", enabled=lambda config: False, target=_dies_at_once)
REFUSES = SideProcess(
    "refuses", enabled=lambda config: True, target=_dies_at_once, prepare=_Failing.prepare
)


def test_a_dying_side_process_is_restarted_and_the_run_completes(monkeypatch):
    monkeypatch.setattr(
        sideprocs,
        "DECLARED",
        (f"{__name__}:DIES", f"{__name__}:DISABLED", f"{__name__}:REFUSES"),
    )
    cfg = load_config(
        raw={
            "source": {"kind": "sim", "module_shape": [8, 8], "modules": 1, "frames": 60,
                       "rate": 20},
            "kernels": {"c": {"kind": "checksum"}},
            "run": {"workers": 1, "progress": "off", "name": "side-test"},
        }
    )  # fmt: skip
    summary = Pipeline(cfg).run()
    assert summary.exit_code == EXIT_OK
    assert summary.frames_out == 60
    # 3 s of run: "dies" is restarted after 1 s and again after 2 s more; "refuses" fails
    # to prepare again (logged, retried later); "disabled" never ran.
    assert summary.side_restarts["dies"] >= 1
    assert summary.side_restarts["refuses"] == 0 and _Failing.calls >= 2
    assert "disabled" not in summary.side_restarts
