"""Reducers: their cost per frame in the publisher, against the budget at 1000 frames/s.

The publisher calls the reduce stage once per published frame (``ReduceStage.add``: the
exactly-once id check, the reducers' ``add``, a window written when complete) and once per
commit (``ReduceStage.commit``: the checkpoint replaced on disk). This measures both on the
publisher's own code path, with the commit every ``run.commit_every`` (64) frames, and
reports the cost per frame as a share of 1 ms: the publisher's whole time per frame at
1000 frames/s of the null chain (the goal: under 5 %). Run::

    PYTHONPATH=. python -m pytest bench/bench_reducers.py -s
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from bench.conftest import report
from shmpipe.api.kernel import ArraySpec
from shmpipe.api.sink import Record, RunInfo
from shmpipe.config import load_config
from shmpipe.reduce.stage import ReduceStage

COMMIT_EVERY = 64  # run.commit_every's default
BUDGET_S = 1e-3  # the publisher's time per frame at 1000 frames/s

SETS = {
    "mean of a 1000-bin profile, per stream and per 10": {
        "avg": {"kind": "mean", "input": "integrate.intensity"},
        "avg10": {"kind": "mean", "input": "integrate.intensity", "every": 10},
    },
    "sum of a 1000-bin profile per stream": {
        "total": {"kind": "sum", "input": "integrate.intensity"},
    },
    "histogram of 1000 values per stream": {
        "hist": {"kind": "histogram", "input": "integrate.intensity", "range": [0.0, 400.0]},
    },
    "map of a scalar on a 100 x 100 grid": {
        "m": {"kind": "map", "input": "stats.sum", "x_grid": [0, 99, 100], "y_grid": [0, 99, 100]},
    },
}


def _stage(tmp_path, reducers: dict) -> ReduceStage:
    raw = {
        "run": {"reducer_state": str(tmp_path / "state.ckpt")},
        "kernels": {"integrate": {"kind": "null"}, "stats": {"kind": "null"}},
        "reducers": reducers,
        "sinks": [{"kind": "null"}],
    }
    outputs = [
        ArraySpec("integrate.intensity", (1000,), "float32"),
        ArraySpec("stats.sum", (), "float64"),
    ]
    run = RunInfo("bench", {}, "", [], outputs=outputs, run_uid="bench", result_hash="h")
    stage = ReduceStage.create(load_config(raw=raw), run, [], logging.getLogger("bench"))
    assert stage is not None
    return stage


def _records(n: int) -> list[Record]:
    rng = np.random.default_rng(0)
    profiles = rng.normal(200.0, 20.0, (16, 1000)).astype(np.float32)
    return [
        Record(
            "scan_0001", i, f"f{i}", {"motor_x": (i - 1) % 100, "motor_y": (i - 1) // 100 % 100},
            {"integrate.intensity": profiles[i % 16], "stats.sum": np.float64(i)}, 0.0,
        )
        for i in range(1, n + 1)
    ]  # fmt: skip


def _per_frame_s(stage: ReduceStage, records: list[Record]) -> tuple[float, float]:
    """Wall and CPU seconds per frame (CPU time: what the publisher spends, also on a busy
    machine, where wall time counts the slices other processes had)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i, r in enumerate(records, 1):
        stage.add(r)
        if i % COMMIT_EVERY == 0:
            stage.commit()
    stage.commit()
    n = len(records)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


@pytest.mark.parametrize("name", list(SETS))
def test_reducer_cost_per_frame_in_the_publisher(benchmark, tmp_path, name):
    frames = 300 if benchmark.disabled else 20000
    _per_frame_s(_stage(tmp_path, SETS[name]), _records(200))  # compiled, warm
    (tmp_path / "state.ckpt").unlink()  # a fresh stage, not one continuing the warm-up's
    stage = _stage(tmp_path, SETS[name])
    records = _records(frames)
    wall, cpu = benchmark.pedantic(_per_frame_s, args=(stage, records), rounds=1)
    report(
        benchmark,
        f"reducers: {name}",
        frames=frames,
        cpu_us_per_frame=cpu * 1e6,
        wall_us_per_frame=wall * 1e6,
        share_at_1000_fps=cpu / BUDGET_S,
        goal=0.05,
        load=round(os.getloadavg()[0], 1),
    )
