"""The engine end to end, in real processes: data integrity, ordering, errors, worker deaths."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from shmpipe.config import load_config
from shmpipe.engine.run_state import RunState
from shmpipe.engine.supervisor import EXIT_FAILED, EXIT_FRAME_ERRORS, EXIT_OK, Pipeline
from shmpipe.plugins.kernels import frame_digest
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, SimSource
from shmpipe.shm.layout import (
    P_FRAMES,
    P_HANDOVERS,
    P_PID,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
)
from tests.conftest import SMALL_SIM


def run(raw: dict, *overrides: str):
    cfg = load_config(raw=raw, overrides=list(overrides))
    pipeline = Pipeline(cfg)
    return pipeline, pipeline.run()


def sim_pool(source_table: dict) -> list[list[np.ndarray]]:
    params = SimParams(**{k: v for k, v in source_table.items() if k != "kind"})
    src = SimSource(params)
    src.open()
    return [src.frame_parts(i) for i in range(params.pool)]


def hdf5_config(tmp_path, kernels: dict, workers: int = 2, **run) -> dict:
    return {
        "run": {"workers": workers, "progress": "off", **run},
        "source": dict(SMALL_SIM),
        "kernels": kernels,
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "out_{stream}.h5")}],
    }


def test_checksum_and_sum_match_direct_computation(tmp_path):
    raw = hdf5_config(
        tmp_path,
        {
            "checksum": {"kind": "checksum"},
            "sum": {"kind": "tests.plugins:Sum"},
            "null": {"kind": "null"},
        },
    )
    _, summary = run(raw)
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    n = SMALL_SIM["frames"]
    assert data["message_id"].tolist() == list(range(1, n + 1))  # every frame once, in order
    pool = sim_pool(SMALL_SIM)
    for i, mid in enumerate(data["message_id"]):
        parts = pool[(mid - 1) % len(pool)]
        assert bytes(data["checksum.digest"][i]) == frame_digest(parts)
        assert data["sum.total"][i] == sum(float(p.sum(dtype=np.float64)) for p in parts)
        assert data["sum.parts"][i] == 12
    assert summary.frames_in == summary.frames_out == n
    assert data["attrs"]["finished"]


def test_multiple_streams_each_finished_in_order(tmp_path):
    raw = hdf5_config(tmp_path, {"checksum": {}})
    raw["source"].update(streams=3, frames=7)
    _, summary = run(raw)
    assert summary.exit_code == EXIT_OK, summary.error
    names = ["scan_0001", "scan_0002", "scan_0003"]
    for i, name in enumerate(names):
        data = read_stream(str(tmp_path / f"out_{name}.h5"), name)
        assert data["message_id"].tolist() == list(range(1, 8))
        assert data["attrs"]["finished"]
        assert data["attrs"]["next_stream"] == (names[i + 1] if i + 1 < len(names) else "")


@pytest.mark.parametrize("ordered", [True, False])
def test_ordered_and_unordered_publishing(tmp_path, ordered):
    raw = hdf5_config(
        tmp_path,
        {"jitter": {"kind": "tests.plugins:Jitter", "slow_ms": 20}},
        workers=3,
        ordered=ordered,
    )
    raw["source"]["frames"] = 30
    _, summary = run(raw)
    assert summary.exit_code == EXIT_OK, summary.error
    ids = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")["message_id"].tolist()
    assert sorted(ids) == list(range(1, 31)) and len(set(ids)) == 30
    if ordered:
        assert ids == sorted(ids)


def test_kernel_exception_fail_fast_names_message_stream_and_kernel(tmp_path):
    raw = hdf5_config(
        tmp_path, {"checksum": {}, "picky": {"kind": "tests.plugins:FailOn", "ids": [5]}}
    )
    pipeline, summary = run(raw)
    assert summary.exit_code == EXIT_FAILED
    assert pipeline.state == RunState.FAILED
    assert "message 5" in summary.error and "scan_0001" in summary.error
    assert "'picky'" in summary.error and "ValueError: bad frame 5 on purpose" in summary.error
    assert "Traceback" in summary.error
    data = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    # Ordered publishing: everything before the bad frame is committed, nothing after it.
    assert data["message_id"].tolist() == [1, 2, 3, 4]
    assert data["errors"]["message_id"].tolist() == [5]


def test_kernel_exception_skip_records_error_and_goes_on(tmp_path):
    raw = hdf5_config(
        tmp_path, {"picky": {"kind": "tests.plugins:FailOn", "ids": [5, 17]}}, on_error="skip"
    )
    _, summary = run(raw)
    assert summary.exit_code == EXIT_FRAME_ERRORS, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    expected = [i for i in range(1, 41) if i not in (5, 17)]
    assert data["message_id"].tolist() == expected
    errors = data["errors"]
    assert errors["message_id"].tolist() == [5, 17]
    assert [k.decode() for k in errors["kernel"]] == ["picky", "picky"]
    assert b"bad frame 17 on purpose" in errors["error"][1]
    assert summary.errors == 2


def test_payload_larger_than_slot_is_an_error_record(tmp_path):
    raw = hdf5_config(tmp_path, {"checksum": {}}, on_error="skip")
    raw["ring"] = {"slot_bytes": 4096}
    raw["source"]["frames"] = 5
    _, summary = run(raw)
    assert summary.exit_code == EXIT_FRAME_ERRORS, summary.error
    errors = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")["errors"]
    assert errors["message_id"].tolist() == [1, 2, 3, 4, 5]
    assert all(b"does not fit a slot of 4096 bytes" in e for e in errors["error"])


def test_worker_killed_while_computing_repeatedly(tmp_path):
    crash_ids = [3, 8, 9, 15, 22, 30]
    raw = hdf5_config(
        tmp_path,
        {
            "checksum": {},
            "crash": {"kind": "tests.plugins:Crash", "ids": crash_ids, "once_dir": str(tmp_path)},
        },
    )
    _, summary = run(raw)
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    assert data["message_id"].tolist() == list(range(1, 41))  # none lost, none twice
    assert summary.worker_restarts == len(crash_ids)
    retried = data["attempt"][np.isin(data["message_id"], crash_ids)]
    assert (retried == 1).all() and data["attempt"].sum() == len(crash_ids)
    pool = sim_pool(SMALL_SIM)
    for i, mid in enumerate(data["message_id"]):
        assert bytes(data["checksum.digest"][i]) == frame_digest(pool[(mid - 1) % len(pool)])


def test_worker_killed_while_waiting_repeatedly(tmp_path):
    """A killer thread SIGKILLs workers of a paced run, mostly while they wait for work, six
    times (each after the previous one's replacement took its seat), then stops the run as
    SIGTERM does: however long the replacements take on a loaded machine, every kill happens
    and every frame taken is published once."""
    import os
    import signal

    from tests.faults import run_guarded

    raw = hdf5_config(tmp_path, {"checksum": {}})
    raw["source"].update(frames=100_000, rate=150.0)
    cfg = load_config(raw=raw)
    pipeline = Pipeline(cfg)
    kills: list[int] = []
    stop = threading.Event()

    def killer():
        next_at = 5
        while not stop.is_set():
            p = getattr(pipeline, "p", None)
            if p is None:
                stop.wait(0.01)
                continue
            out = int(p.ring.procs[PROC_PUBLISHER, P_FRAMES])
            if out >= next_at and len(kills) == 6:
                # the run's own handler only: elsewhere SIGTERM would stop pytest
                if getattr(signal.getsignal(signal.SIGTERM), "__name__", "") == "_on_signal":
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            elif out >= next_at:
                seat = len(kills) % cfg.run.workers
                pid = int(p.ring.procs[PROC_FIRST_WORKER + seat, P_PID])
                # The row names a killed worker until its replacement has started (a kill of
                # that dying process would "succeed" again): wait for the replacement.
                if pid > 0 and pid not in kills and pipeline.workers[seat].pid == pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        kills.append(pid)
                        next_at = out + 8
                    except ProcessLookupError:
                        pass
            stop.wait(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        summary, hung = run_guarded(pipeline, 120.0)
    finally:
        stop.set()
        t.join()
    assert not hung
    assert summary.exit_code == 128 + signal.SIGTERM, summary.error
    assert summary.errors == 0 and len(kills) == 6
    assert summary.worker_restarts >= 5  # the last kill may land as the run stops
    data = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    assert data["message_id"].tolist() == list(range(1, summary.frames_in + 1))


def test_poison_frame_is_quarantined_after_max_attempts(tmp_path):
    raw = hdf5_config(
        tmp_path,
        {"checksum": {}, "crash": {"kind": "tests.plugins:Crash", "ids": [7], "mode": "abort"}},
        on_error="skip",
        max_attempts=2,
    )
    _, summary = run(raw)
    assert summary.exit_code == EXIT_FRAME_ERRORS, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    assert data["message_id"].tolist() == [i for i in range(1, 41) if i != 7]
    err = data["errors"]
    assert err["message_id"].tolist() == [7] and err["quarantined"].tolist() == [True]
    assert err["kernel"][0] == b"crash" and b"SIGABRT" in err["error"][0]
    assert summary.worker_restarts == 2 and summary.quarantined == 1


def test_kernel_found_by_entry_point_and_dotted_path(tmp_path):
    raw = hdf5_config(
        tmp_path,
        {"a": {"kind": "checksum"}, "b": {"kind": "shmpipe.plugins.kernels:ChecksumKernel"}},
    )
    raw["source"]["frames"] = 3
    _, summary = run(raw)
    assert summary.exit_code == EXIT_OK
    data = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    assert (data["a.digest"] == data["b.digest"]).all()


# -- small messages: a larger ring and batched hand-over -------------------------------------
def test_small_messages_travel_in_batches_each_once_in_order(tmp_path):
    raw = hdf5_config(tmp_path, {"checksum": {"kind": "checksum"}})
    raw["source"] = {"kind": "sim", "payload_bytes": 1024, "frames": 3000, "pool": 5}
    _, summary = run(raw)
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    assert data["message_id"].tolist() == list(range(1, 3001))
    pool = sim_pool(raw["source"])
    for i, mid in enumerate(data["message_id"]):
        assert bytes(data["checksum.digest"][i]) == frame_digest(pool[(mid - 1) % 5])
    assert summary.slots == 256  # ring.slots = 0 and 1 KB slots: the small-slot ring
    handovers = int(summary.timings["procs"][PROC_DISPATCHER, P_HANDOVERS])
    assert 0 < handovers < 3000 / 2, "messages were handed to the workers one by one"


def _geometry(workers: int, payload: int, slots: int = 0):
    from types import SimpleNamespace

    from shmpipe.engine.startup import ring_geometry

    raw = {"run": {"workers": workers}, "ring": {"slots": slots}}
    return ring_geometry(
        load_config(raw=raw),
        SimpleNamespace(max_payload_bytes=payload),
        SimpleNamespace(result_bytes=4096),
    )


def test_ring_size_follows_the_slot_size_unless_set():
    assert _geometry(4, 1024).slots == 256  # small slots: many, within 64 MiB
    assert _geometry(4, 19_271_680).slots == 10  # LAMBDA 9M frames: 2 x workers + 2
    mid = _geometry(2, 4 * 2**20)
    assert 2 * 2 + 2 < mid.slots < 256 and mid.slots * mid.input_stride <= 64 * 2**20
    assert _geometry(4, 1024, slots=12).slots == 12  # ring.slots wins


def test_a_kernel_cannot_write_into_the_input_parts(tmp_path):
    raw = hdf5_config(tmp_path, {"w": {"kind": "tests.plugins:WritesParts"}}, on_error="skip")
    raw["source"] = dict(SMALL_SIM, frames=3)
    _, summary = run(raw)
    assert summary.exit_code == EXIT_FRAME_ERRORS and summary.errors == 3
    errors = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")["errors"]
    assert all(b"read-only" in e for e in errors["error"])


def test_run_state_goes_through_each_state_once_in_order(tmp_path, caplog):
    raw = hdf5_config(tmp_path, {"checksum": {"kind": "checksum"}})
    with caplog.at_level("INFO", logger="shmpipe.supervisor"):
        pipeline, summary = run(raw)
    assert summary.exit_code == EXIT_OK, summary.error
    moves = [
        r.getMessage().split(": ", 1)[1].split(" (")[0]
        for r in caplog.records
        if r.name == "shmpipe.supervisor" and " -> " in r.getMessage()
    ]
    assert moves == [
        "starting -> running",
        "running -> draining",
        "draining -> stopping",
        "stopping -> finished",
    ]
    assert pipeline.state == RunState.FINISHED
