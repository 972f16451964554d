"""Fault injection and bad input: no frame lost or silently dropped, no crash, no hang.

The CI versions are short; ``pytest --soak`` runs the long ones (``@pytest.mark.soak``).
``scripts/reliability_report.py`` runs these tests and prints the figures of their fault
scenarios (``tests.faults``). Cases covered elsewhere: a payload bigger than a slot
(test_engine), not enough shared memory (test_lifecycle), SIGKILL of the whole group then a
clean start (test_lifecycle) and, with ASAPO, a resume with nothing lost and the service
restarted mid-run (test_asapo_pipeline; here only with ``--soak``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from shmpipe.config import load_config, to_toml
from shmpipe.engine.supervisor import EXIT_FAILED, EXIT_FRAME_ERRORS, EXIT_OK, Pipeline
from shmpipe.plugins.kernels import frame_digest
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, SimSource, sim_geometry
from shmpipe.shm.layout import (
    P_HANDOVERS,
    PROC_DISPATCHER,
)
from tests import faults
from tests.conftest import SMALL_SIM, run_cli


def _digests_match(data: dict) -> None:
    sim = SimSource(SimParams(**{k: v for k, v in faults.SMALL.items() if k != "kind"}))
    sim.open()
    pool = [frame_digest(sim.frame_parts(i)) for i in range(faults.SMALL["pool"])]
    for i, mid in enumerate(data["message_id"]):
        assert bytes(data["checksum.digest"][i]) == pool[(mid - 1) % len(pool)]


# -- worker SIGKILL at random ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("frames", "every", "rate"),
    [
        pytest.param(240, 20, 400.0, id="short"),
        pytest.param(2000, 100, 4000.0, id="batched"),
        pytest.param(
            20000, 50, 400.0, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(1800)]
        ),
    ],
)
def test_random_worker_sigkill_loses_and_duplicates_nothing(tmp_path, frames, every, rate):
    f = faults.random_sigkill(
        tmp_path, frames=frames, every=every, rate=rate, deadline_s=120 + frames / 20
    )
    handovers = f.details["summary"].timings["procs"][PROC_DISPATCHER, P_HANDOVERS]
    if rate > 1000:
        assert handovers < frames * 0.9, "frames were not handed over in batches"
    assert f.exit_code == EXIT_OK, f.details["summary"].error
    # The kills did happen, mid-run. The killer waits for each replacement before the next
    # kill, so on a loaded machine (slow restarts) fewer of the planned kills fit in the run.
    assert f.faults >= frames // every // 4
    assert (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    data = f.details["data"]
    assert data["message_id"].tolist() == list(range(1, frames + 1))  # ordered, once each
    assert f.details["summary"].worker_restarts >= f.faults - 1  # the last may land at the end
    _digests_match(data)


# -- worker hang: the watchdog --------------------------------------------------------------
@pytest.mark.parametrize("mode", ["hang", "sigstop"])
def test_hung_worker_is_killed_by_the_watchdog_and_the_frame_retried(tmp_path, mode):
    f = faults.crash_kernel(tmp_path, mode, [4], once=True, frames=12, watchdog_s=1.5)
    assert f.exit_code == EXIT_OK, f.details["summary"].error
    assert (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    data = f.details["data"]
    assert data["message_id"].tolist() == list(range(1, 13))
    assert data["attempt"][3] == 1 and data["attempt"].sum() == 1  # retried once, then done
    assert f.details["summary"].worker_restarts == 1
    assert 1.5 <= f.longest_recovery_s  # the watchdog waited its time, no more than needed


def test_worker_stopped_between_frames_is_replaced_by_the_watchdog(tmp_path):
    f = faults.stopped_worker(tmp_path, frames=40, rate=60.0, watchdog_s=1.0, deadline_s=90)
    assert f.exit_code == EXIT_OK, f.details["summary"].error
    assert f.faults == 1 and (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    assert f.details["data"]["message_id"].tolist() == list(range(1, 41))
    assert f.details["summary"].worker_restarts == 1
    assert f.longest_recovery_s >= 1.0


def test_without_watchdog_a_hang_is_caught_by_the_suite_guard(tmp_path):
    """The suite's hang count can fail: with the watchdog off, a looping kernel hangs the
    run until the guard stops it (exit 130)."""
    f = faults.crash_kernel(
        tmp_path, "hang", [2], once=False, frames=4, deadline_s=4.0, watchdog=False
    )
    assert f.hangs == 1 and f.exit_code == 130


def test_frame_that_hangs_every_time_is_quarantined(tmp_path):
    f = faults.crash_kernel(
        tmp_path, "sigstop", [3], once=False, frames=8, watchdog_s=1.0, max_attempts=2
    )
    assert f.exit_code == EXIT_FRAME_ERRORS, f.details["summary"].error
    assert (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    data = f.details["data"]
    assert data["message_id"].tolist() == [1, 2, 4, 5, 6, 7, 8]
    err = data["errors"]
    assert err["message_id"].tolist() == [3] and err["quarantined"].tolist() == [True]
    assert b"SIGKILL" in err["error"][0] and err["kernel"][0] == b"crash"


# -- poison frames --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["raise", "abort", "segfault"])
def test_poison_frame_is_an_error_record_and_every_other_frame_published(tmp_path, mode):
    f = faults.crash_kernel(tmp_path, mode, [6], once=False, frames=15, max_attempts=2)
    assert f.exit_code == EXIT_FRAME_ERRORS, f.details["summary"].error
    assert (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    data = f.details["data"]
    assert data["message_id"].tolist() == [i for i in range(1, 16) if i != 6]
    err = data["errors"]
    assert err["message_id"].tolist() == [6]
    assert err["name"][0] == b"scan_0001/frame_000006"  # names its stream and message
    assert err["kernel"][0] == (b"crash" if mode != "raise" else b"crash")
    cause = {"raise": b"ValueError: bad frame 6", "abort": b"SIGABRT", "segfault": b"SIGSEGV"}
    assert cause[mode] in err["error"][0]
    # An exception is deterministic: recorded at once. A death is retried, then quarantined.
    assert err["quarantined"].tolist() == [mode != "raise"]
    assert f.details["summary"].worker_restarts == (0 if mode == "raise" else 2)
    _digests_match(data)


# -- dispatcher or publisher death: tests/test_replacement.py ---------------------------------


# -- SIGTERM under load ---------------------------------------------------------------------
def test_sigterm_under_load_drains_in_bounded_time_and_exits_143(tmp_path):
    f = faults.sigterm_under_load(tmp_path, sleep_ms=30.0)
    assert f.exit_code == 143, f.details["stderr"]  # drained, but stopped early
    assert f.details["frames_in"] >= 10
    assert (f.lost, f.duplicates, f.hangs) == (0, 0, 0)  # everything pulled is published
    assert f.details["ids"] == list(range(1, f.details["frames_in"] + 1))
    assert f.details["drain_s"] < 30  # within run.drain_timeout_s (a full ring: ~6 frames)


# -- resources ------------------------------------------------------------------------------
def test_kernel_setup_that_hangs_refuses_to_start_within_setup_timeout():
    r = run_cli(
        "run", "--frames", "3", "--progress", "off",
        "--set", f"source.module_shape={SMALL_SIM['module_shape']}",
        "--set", 'kernels.stuck.kind="tests.plugins:HangingSetup"',
        "--set", "run.setup_timeout_s=2",
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "did not finish within run.setup_timeout_s = 2.0 s" in r.stderr


# -- bad input ------------------------------------------------------------------------------
def _lambda_chain(tmp_path, compressed: bool, float_parts: bool = False) -> dict:
    geo = tmp_path / "geometry.json"
    sim_geometry(SimParams(module_shape=[48, 64])).to_file(geo)
    kernels: dict = {}
    image = "stitch.image"
    if compressed:
        kernels["decompress"] = {"kind": "lambda_decompress", "geometry": str(geo)}
    if float_parts:
        image = "parts"  # stitching takes detector counts; a float stream is integrated as parts
    else:
        kernels["stitch"] = {
            "kind": "lambda_stitch",
            "geometry": str(geo),
            "input": "decompress.modules" if compressed else "parts",
        }
    kernels["integrate"] = {
        "kind": "azimuthal_integrate",
        "input": image,
        "geometry": str(geo),
        "dist": 0.1,
        "poni1": 0.006,
        "poni2": 0.005,
        "wavelength": 1e-10,
        "npt": 50,
        "normalization_key": "monitor",
    }
    kernels["stats"] = {"kind": "frame_stats", "input": image}
    return kernels


def _bad_input_run(tmp_path, cases, *, compressed=False, dtype="uint16", on_error="skip"):
    raw = {
        "run": {"workers": 2, "progress": "off", "on_error": on_error},
        "source": {
            "kind": "tests.plugins:BadInputSource",
            "cases": cases,
            "compressed": compressed,
            "dtype": dtype,
        },
        "kernels": _lambda_chain(tmp_path, compressed, float_parts=dtype == "float32"),
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "out.h5")}],
    }
    if not compressed:
        summary = Pipeline(load_config(raw=raw)).run()
        return summary, read_stream(str(tmp_path / "out.h5"), "scan_0001")
    # bitshuffle (OpenMP) has run in this process (test_native_*): a fork of it that calls
    # bitshuffle again hangs in libgomp, so the compressed chain runs as a command, as users do.
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(load_config(raw=raw).effective()))
    r = run_cli("run", "--config", str(path))
    summary = SimpleNamespace(exit_code=r.returncode, error=r.stderr)
    return summary, read_stream(str(tmp_path / "out.h5"), "scan_0001")


RAW_CASES = {
    "wrong_size": (b"source", b"part 3 is uint16 [47, 64], the source declared uint16 [48, 64]"),
    "wrong_dtype": (b"source", b"part 0 is float64 [48, 64], the source declared uint16"),
    "truncated": (b"source", b"part 1 is uint8 [3072], the source declared uint16 [48, 64]"),
    "missing_module": (b"source", b"11 parts, the source declared 12"),
    "no_monitor": (b"integrate", b"frame meta has no 'monitor' (normalization_key)"),
}
COMPRESSED_CASES = {
    "wrong_size": (b"decompress", b"part 3: bitshuffle-LZ4 payload"),  # of N bytes, or: is corrupt
    "wrong_dtype": (b"decompress", b"part 0: bitshuffle-LZ4 payload of"),
    "truncated": (b"decompress", b"part 1: bitshuffle-LZ4 payload of"),
    "corrupt": (b"decompress", b"part 6: bitshuffle-LZ4 payload of"),
    "missing_module": (b"decompress", b"11 parts, expected 12"),
    "no_monitor": (b"integrate", b"frame meta has no 'monitor' (normalization_key)"),
}


@pytest.mark.parametrize("compressed", [False, True], ids=["raw", "bslz4"])
def test_bad_input_is_an_error_record_with_message_id_and_reason(tmp_path, compressed):
    expected = COMPRESSED_CASES if compressed else RAW_CASES
    cases = ["good", *[c for name in expected for c in (name, "good")]]
    summary, data = _bad_input_run(tmp_path, cases, compressed=compressed)
    assert summary.exit_code == EXIT_FRAME_ERRORS, summary.error
    good = [i for i, c in enumerate(cases, start=1) if c == "good"]
    assert data["message_id"].tolist() == good  # every good frame published, in order
    err = data["errors"]
    assert err["message_id"].tolist() == [i for i, c in enumerate(cases, 1) if c != "good"]
    for mid, kernel, error, name in zip(
        err["message_id"], err["kernel"], err["error"], err["name"], strict=True
    ):
        case = cases[mid - 1]
        assert name == f"scan_0001/{case}_{mid}".encode()
        assert (kernel, expected[case][1] in error) == (expected[case][0], True), error
    assert not err["quarantined"].any()  # no worker died on any of them


def test_bad_input_fail_fast_stops_with_the_reason(tmp_path):
    cases = ["good", "good", "corrupt", "good"]
    summary, data = _bad_input_run(tmp_path, cases, compressed=True, on_error="fail")
    assert summary.exit_code == EXIT_FAILED
    assert "message 3" in summary.error and "'decompress'" in summary.error
    assert "part 6: bitshuffle-LZ4 payload of" in summary.error
    assert data["message_id"].tolist() == [1, 2]


def test_nan_and_inf_pixels_are_ignored_as_masked(tmp_path):
    summary, data = _bad_input_run(tmp_path, ["good", "nan", "inf", "good"], dtype="float32")
    assert summary.exit_code == EXIT_OK, summary.error
    assert data["message_id"].tolist() == [1, 2, 3, 4] and len(data["errors"]["message_id"]) == 0
    full = 12 * 48 * 64
    # One pixel of module 2 and one row of module 4 are non-finite: left out of the statistics.
    assert data["stats.n_valid"].tolist() == [full, full - 65, full - 65, full]
    assert np.isfinite(data["stats.sum"]).all() and np.isfinite(data["stats.max"]).all()
    assert np.isfinite(data["integrate.intensity"]).all()
    assert data["integrate.count"][1].sum() < data["integrate.count"][0].sum()  # masked


# -- the results file survives a SIGKILL of the whole group ---------------------------------
@pytest.mark.parametrize(
    ("kills", "frames"),
    [
        pytest.param(3, 200, id="short"),
        pytest.param(20, 1200, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(1200)]),
    ],
)
def test_group_sigkill_while_writing_hdf5_then_resume_every_id_once(tmp_path, kills, frames):
    f = faults.group_sigkill_resume(tmp_path, kills=kills, frames=frames, seed=kills)
    # after each kill the file opened with its committed rows intact (checked inside)
    assert f.faults >= kills - 1  # the kills landed mid-run (the last may meet the end)
    assert f.exit_code == EXIT_OK
    assert (f.lost, f.duplicates) == (0, 0)
    assert f.details["ids"] == list(range(1, frames + 1))
    print("committed rows after each kill:", f.details["rows_after_kill"])


# -- long run -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frames", "error_every"),
    [
        pytest.param(2000, 400, id="short"),
        pytest.param(100_000, 5000, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(3600)]),
    ],
)
def test_long_run_memory_and_file_descriptors_stay_flat(tmp_path, frames, error_every):
    f = faults.long_run(
        tmp_path, frames=frames, error_every=error_every, deadline_s=120 + frames / 20
    )
    assert f.exit_code == EXIT_FRAME_ERRORS, f.details["summary"].error
    assert (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    d = f.details
    assert len(d["samples"]) == 2 and len(d["samples"][0]) >= 4  # supervisor, 2 workers, ...
    assert d["growth"] < 0.10, d["samples"]
    assert d["fd_growth"] <= 0, d["samples"]
    assert d["errors"] == d["expected_errors"]  # the error table grows with the errors only


# -- ASAPO ----------------------------------------------------------------------------------
@pytest.fixture
def asapo(tmp_path):
    pytest.importorskip("asapo_consumer")
    from shmpipe.asapo.process import AsapoProcess

    with AsapoProcess(tmp_path / "asapo-data") as service:
        yield service


def test_asapo_stalled_connection_retries_and_loses_nothing(asapo, tmp_path):
    f = faults.asapo_stall(asapo, tmp_path, frames=40, stall_s=2.0)
    assert f.details["producer"][0] == 0, f.details["producer"][1]
    assert f.exit_code == EXIT_OK, f.details["summary"].error
    assert f.faults == 1 and (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    assert f.details["data"]["message_id"].tolist() == list(range(1, 41))


@pytest.mark.soak  # in CI: test_asapo_pipeline.py::test_service_restarted_mid_run_...
def test_asapo_service_restarted_mid_run_loses_nothing(asapo, tmp_path):
    f = faults.asapo_restart(asapo, tmp_path, frames=40)
    assert f.exit_code == EXIT_OK, f.details["summary"].error
    assert f.faults == 1 and (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    assert f.details["data"]["message_id"].tolist() == list(range(1, 41))


@pytest.mark.soak  # in CI: test_asapo_pipeline.py::test_pipeline_sigkilled_and_restarted_...
def test_asapo_whole_group_sigkilled_then_restarted_loses_nothing(asapo, tmp_path):
    f = faults.asapo_group_kill(asapo, tmp_path, frames=30)
    assert f.exit_code == EXIT_OK, f.details["stderr"]
    assert (f.lost, f.duplicates, f.hangs) == (0, 0, 0)
    assert f.details["output_ids"] == list(range(1, 31))
    assert f.details["shm_left"] == []
    assert "removed the record of dead run 'gk-1'" in f.details["stderr"]


def test_asapo_unknown_stream_is_named_and_the_run_ends_at_idle_timeout(asapo, tmp_path):
    from shmpipe.config import to_toml
    from tests.conftest import run_cli

    raw = faults.asapo_config(
        asapo.server_name, tmp_path, "unknown", "unknown", stream="scna_0001", idle_timeout_s=1.5
    )
    path = tmp_path / "unknown.toml"
    path.write_text(to_toml(load_config(raw=raw).effective()))
    r = run_cli("run", "--config", str(path))
    assert r.returncode == EXIT_OK, r.stderr
    assert "stream 'scna_0001' does not exist (yet)" in r.stderr
    assert "waiting for it for at most 1.5 s" in r.stderr and "0 frames in" in r.stderr


def test_asapo_user_meta_not_json_never_reaches_the_pipeline(asapo, tmp_path):
    """Meta that is not a JSON object cannot be sent with the real clients: the producer
    refuses a string that is not JSON, the service any JSON that is not an object. So a
    consumer (and the pipeline) never sees it; the source also treats non-object meta as
    empty (``AsapoSource._message``)."""
    import json

    import asapo_producer

    prod = asapo_producer.create_producer(
        asapo.server_name, "processed", faults.BEAMTIME, "auto", "detector", "", 1, 5000
    )
    prod.set_log_level("none")
    refused = []
    part = np.zeros(faults.ASAPO_SHAPE, np.uint16).reshape(-1).view(np.uint8)

    def send(mid: int, meta: str) -> None:
        prod.send(
            mid,
            f"f{mid}",
            part,
            user_meta=meta,
            stream="scan_0001",
            callback=lambda payload, err: err is not None and refused.append(mid),
        )
        prod.wait_requests_finished(5000)

    send(1, "{}")
    with pytest.raises(asapo_producer.AsapoWrongInputError, match="user_meta as json"):
        send(2, "not json {")
    send(3, "[1, 2]")
    send(4, json.dumps({"a": 1}))
    assert refused == [3]
    prod.send_stream_finished_flag("scan_0001", 4)
    prod.wait_requests_finished(5000)
    raw = faults.asapo_config(asapo.server_name, tmp_path, "meta", "meta", dataset=False, parts=1)
    summary = Pipeline(load_config(raw=raw)).run()
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001_meta.h5"), "scan_0001")
    assert data["message_id"].tolist() == [1, 4]


# -- the HDF5 sink after a crash ------------------------------------------------------------
def test_hdf5_reopened_after_a_crash_drops_uncommitted_rows_and_errors(tmp_path):
    from shmpipe.api.kernel import ArraySpec
    from shmpipe.api.sink import ErrorRecord, Record, RunInfo
    from shmpipe.plugins.sinks.hdf5 import HDF5Params, HDF5Sink

    cfg = load_config(raw={"source": {"kind": "sim"}, "kernels": {"k": {"kind": "checksum"}}})
    info = RunInfo("r", cfg.effective(), "h", ["k"], [ArraySpec("k.v", (), "float64")])
    path = str(tmp_path / "crash.h5")

    def record(mid: int) -> Record:
        return Record("s", mid, f"m{mid}", {}, {"k.v": np.float64(mid)}, 0.0)

    def error(mid: int) -> ErrorRecord:
        return ErrorRecord("s", mid, f"m{mid}", "k", f"bad {mid}")

    sink = HDF5Sink(HDF5Params(output=path))
    sink.open(info)
    for mid in (1, 2):
        sink.write(record(mid))
    sink.write_error(error(3))
    sink.commit()
    sink.write(record(4))  # written, never committed (so never acknowledged) ...
    sink.write_error(error(5))
    for fs in sink._files.values():
        for entry in fs.entries.values():
            entry.write_pending()  # ... its row reaches the file ...
        fs.f.flush()
        fs.f.close()  # ... when the process dies
    again = HDF5Sink(HDF5Params(output=path))
    again.open(info)
    for mid in (4, 6):  # the redelivery, and a new frame
        again.write(record(mid))
    again.write_error(error(5))
    again.write(record(2))  # a duplicate of a committed row: ignored
    again.close()
    data = read_stream(path, "s")
    assert data["message_id"].tolist() == [1, 2, 4, 6]
    assert data["k.v"].tolist() == [1.0, 2.0, 4.0, 6.0]
    assert data["errors"]["message_id"].tolist() == [3, 5]
    assert data["errors"]["error"].tolist() == [b"bad 3", b"bad 5"]


def test_id_set_keeps_runs_not_ids():
    from shmpipe.plugins.sinks.hdf5 import IdSet

    ids = IdSet(range(1, 50_001))
    assert ids.runs == 1 and 1 in ids and 50_000 in ids and 50_001 not in ids
    for i in (50_003, 50_002, 50_001, 0):
        ids.add(i)
    assert ids.runs == 1 and 0 in ids and 50_003 in ids
