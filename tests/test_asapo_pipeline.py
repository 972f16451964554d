"""The pipeline against the ASAPO-compatible service, through the real clients only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from shmpipe.asapo.process import AsapoProcess
from shmpipe.config import load_config
from shmpipe.engine.supervisor import EXIT_CONFIG_ERROR, EXIT_FRAME_ERRORS, EXIT_OK, Pipeline
from shmpipe.plugins.kernels import frame_digest
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, SimSource
from shmpipe.plugins.sources.stream_naming import next_stream
from tests.producer import produce as run_producer

asapo_consumer = pytest.importorskip("asapo_consumer")

SHAPE = [32, 48]
BEAMTIME = "bt_test"


@pytest.fixture
def asapo(tmp_path):
    with AsapoProcess(tmp_path / "asapo-data") as service:
        yield service


def produce(
    endpoint: str, frames: int, streams: list[str], *, rate: float = 0.0, finish: bool = True
) -> subprocess.Popen:
    return run_producer(endpoint, BEAMTIME, frames, streams, SHAPE, rate=rate, finish=finish)


def produced(endpoint: str, frames: int, streams: list[str], **kw) -> None:
    p = produce(endpoint, frames, streams, **kw)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err


def pool_digests() -> list[bytes]:
    sim = SimSource(SimParams(module_shape=SHAPE, modules=12, pool=2))
    sim.open()
    return [frame_digest(sim.frame_parts(i)) for i in range(2)]


def config(asapo: AsapoProcess, tmp_path: Path, group: str = "g1", **source) -> dict:
    return {
        "run": {"workers": 2, "progress": "off", "on_error": "skip"},
        "source": {
            "kind": "asapo",
            "endpoint": asapo.server_name,
            "beamtime": BEAMTIME,
            "stream": "scan_0001",
            "group_id": group,
            "part_shape": SHAPE,
            "timeout_ms": 200,
            "until": "finished",
            "resend_delay_ms": 800,
            **source,
        },
        "kernels": {"checksum": {}},
        "sinks": [
            {"kind": "hdf5", "output": str(tmp_path / "out_{stream}_{run}.h5")},
            {
                "kind": "asapo",
                "endpoint": asapo.server_name,
                "beamtime": BEAMTIME,
                "data_source": "checksums",
                "outputs": ["checksum.digest"],
            },
        ],
    }


def run(raw: dict, name: str = "asapo-run"):
    raw = {**raw, "run": {**raw["run"], "name": name}}
    return Pipeline(load_config(raw=raw)).run()


def outputs(
    asapo: AsapoProcess, stream: str, data_source: str = "checksums", token: str = ""
) -> dict:
    """Every record of an output stream, read back by id with the real consumer."""
    c = asapo_consumer.create_consumer(
        asapo.server_name, "", False, BEAMTIME, data_source, token, 1000
    )
    info = c.get_stream_info(stream)
    got = {}
    for i in range(1, int(info["lastId"]) + 1):
        try:
            data, meta = c.get_by_id(i, meta_only=False, stream=stream)
        except asapo_consumer.AsapoEndOfStreamError:
            break
        except asapo_consumer.AsapoStreamFinishedError:
            break
        got[i] = (bytes(np.asarray(data).view(np.uint8)), meta)
    return got


def test_datasets_through_pipeline_to_hdf5_and_asapo_with_lineage(asapo, tmp_path):
    produced(asapo.server_name, 12, ["scan_0001", "scan_0002"])
    summary = run(config(asapo, tmp_path))
    assert summary.exit_code == EXIT_OK, summary.error
    assert summary.frames_out == 24
    digests = pool_digests()
    for stream, nxt in (("scan_0001", "scan_0002"), ("scan_0002", "")):
        data = read_stream(str(tmp_path / f"out_{stream}_asapo-run.h5"), stream)
        assert data["message_id"].tolist() == list(range(1, 13))
        assert data["attrs"]["next_stream"] == nxt  # followed through the finished flag
        for i, d in enumerate(data["checksum.digest"]):
            assert bytes(d) == digests[i % 2]  # 12 parts copied into the slot intact
        out = outputs(asapo, stream)
        assert sorted(out) == list(range(1, 13))
        payload, meta = out[5]
        assert payload == digests[(5 - 1) % 2]
        lineage = meta["meta"]["lineage"]
        assert lineage["input_ids"] == [5] and lineage["input_stream"] == stream
        assert lineage["input_names"] == [f"{stream}/frame_000005_m01"]
        assert lineage["kernel_chain"] == ["checksum"] and len(lineage["config_hash"]) == 16
        assert meta["name"] == f"checksums/{stream}/frame_000005_m01"
    c = asapo_consumer.create_consumer(asapo.server_name, "", False, BEAMTIME, "checksums", "", 500)
    with pytest.raises(asapo_consumer.AsapoStreamFinishedError) as fin:
        c.get_by_id(13, meta_only=True, stream="scan_0001")
    assert fin.value.next_stream == "scan_0002"  # outputs finished like their inputs


def test_follow_streams_by_naming_scheme(asapo, tmp_path):
    produced(asapo.server_name, 4, ["scan_0007", "scan_0009", "other_0001"], finish=False)
    raw = config(asapo, tmp_path, stream="scan_0007", follow="basename", idle_timeout_s=2.0)
    summary = run(raw)
    assert summary.exit_code == EXIT_OK, summary.error
    assert summary.frames_out == 8  # scan_0007 then scan_0009; other_0001 is not a successor
    first = read_stream(str(tmp_path / "out_scan_0007_asapo-run.h5"), "scan_0007")
    assert first["message_id"].tolist() == [1, 2, 3, 4]
    assert first["attrs"]["next_stream"] == "scan_0009"  # finished when its successor appeared
    last = read_stream(str(tmp_path / "out_scan_0009_asapo-run.h5"), "scan_0009")
    assert last["message_id"].tolist() == [1, 2, 3, 4]
    assert "finished" not in last["attrs"]  # no flag and no successor: it may still grow


@pytest.mark.parametrize(
    ("scheme", "current", "names", "expected"),
    [
        ("numeric", "9", ["8", "10", "11", "x"], "10"),
        ("basename", "scan_0009", ["scan_0010", "scan_0100", "run_0010"], "scan_0010"),
        ("date", "20261121_100000", ["20261121_110000", "20261120_230000"], "20261121_110000"),
        ("date", "2026-11-21T10:00:00", ["2026-11-21T09:00:00"], None),
        ("numeric", "scan", ["1"], None),
    ],
)
def test_stream_naming_schemes(scheme, current, names, expected):
    assert next_stream(scheme, current, names) == expected


def test_partial_dataset_error_record_or_processed(asapo, tmp_path):
    import asapo_producer

    prod = asapo_producer.create_producer(
        asapo.server_name, "processed", BEAMTIME, "auto", "detector", "", 1, 5000
    )
    prod.set_log_level("none")
    part = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    for mid, count in ((1, 12), (2, 11), (3, 12)):
        for m in range(1, count + 1):
            prod.send(
                mid,
                f"f{mid}_m{m}",
                part.reshape(-1).view(np.uint8),
                user_meta=json.dumps({"m": m}),
                dataset=(m, 12),
                stream="scan_0001",
            )
    prod.wait_requests_finished(5000)
    prod.send_stream_finished_flag("scan_0001", 3)
    prod.wait_requests_finished(5000)
    summary = run(config(asapo, tmp_path, group="strict", timeout_ms=300))
    assert summary.exit_code == EXIT_FRAME_ERRORS, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001_asapo-run.h5"), "scan_0001")
    assert data["message_id"].tolist() == [1, 3]
    assert data["errors"]["message_id"].tolist() == [2]
    assert (
        b"incomplete dataset: 11 of 12 parts (missing substreams [12])"
        in data["errors"]["error"][0]
    )
    summary = run(
        config(asapo, tmp_path, group="lenient", timeout_ms=300, partial="process"), name="lenient"
    )
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001_lenient.h5"), "scan_0001")
    assert data["message_id"].tolist() == [1, 2, 3]


def _restart_mid_run(asapo: AsapoProcess, pause_s: float = 0.0) -> tuple[threading.Thread, list]:
    """Restart the service (down for ``pause_s`` more) once 15 frames are published; an
    exception is kept in the returned list, and stops the run (SIGINT) so it can be seen."""
    from tests.test_lifecycle import published, wait_for

    failed: list[BaseException] = []
    pause = threading.Event()

    def restart():
        try:
            wait_for(lambda: published("asapo-run") >= 15, what="15 published frames")
            asapo.stop()  # frames are still being produced and consumed
            pause.wait(pause_s)  # a service down for a while, not a timing assumption
            asapo.start()
        except BaseException as exc:
            # A service that did not come back would keep the run waiting for it for ever
            # (as it should at a beamline): stop the run, and say why.
            failed.append(exc)
            os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=restart, daemon=True)
    t.start()
    return t, failed


def _check_restarted_run(asapo, tmp_path, producer, restarter, summary) -> None:
    thread, failed = restarter
    thread.join(timeout=60)
    if failed:
        producer.kill()
        producer.communicate()
    assert not failed, f"{failed[0]!r}; the service printed:\n{asapo.output()[-4000:]}"
    assert not thread.is_alive()
    out, err = producer.communicate(timeout=120)
    assert producer.returncode == 0, out + err
    assert summary.exit_code == EXIT_OK, summary.error
    ids = read_stream(str(tmp_path / "out_scan_0001_asapo-run.h5"), "scan_0001")["message_id"]
    # A message whose acknowledgement the restart interrupted comes back later (resend), so the
    # rows need not be in id order; none may be missing and none written twice.
    assert sorted(ids.tolist()) == list(range(1, 61))
    assert sorted(outputs(asapo, "scan_0001")) == list(range(1, 61))


def test_service_restarted_mid_run_loses_nothing(asapo, tmp_path):
    producer = produce(asapo.server_name, 60, ["scan_0001"], rate=30.0)
    raw = config(asapo, tmp_path, group="restart", timeout_ms=300)
    restarter = _restart_mid_run(asapo)
    summary = run(raw)  # in the main thread: the supervisor installs signal handlers
    _check_restarted_run(asapo, tmp_path, producer, restarter, summary)


def test_service_down_longer_than_the_output_timeout_loses_nothing(asapo, tmp_path):
    """The ASAPO output's sends time out while the service is down: they are sent again
    once it is back, and the inputs acknowledged only then."""
    producer = produce(asapo.server_name, 60, ["scan_0001"], rate=30.0)
    raw = config(asapo, tmp_path, group="outage", timeout_ms=300)
    raw["sinks"][1].update(timeout_ms=500, retry_max_s=1.0)
    restarter = _restart_mid_run(asapo, pause_s=3.0)
    summary = run(raw)
    _check_restarted_run(asapo, tmp_path, producer, restarter, summary)


def _run_cli(cfg_path: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shmpipe",
            "run",
            "--config",
            str(cfg_path),
            "--set",
            f"run.name={name}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _write_toml(path: Path, raw: dict) -> Path:
    from shmpipe.config import to_toml

    path.write_text(to_toml(load_config(raw=raw).effective()))
    return path


def _killed_then_rerun(cfg: Path, name: str, after: int) -> None:
    """Run ``cfg`` as ``NAME-1``, SIGKILL its whole group once ``after`` frames are
    published, then run it again as ``NAME-2`` to its end (exit 0)."""
    from tests.test_lifecycle import published, wait_for

    first = _run_cli(cfg, f"{name}-1")
    wait_for(lambda: published(f"{name}-1") >= after, what=f"{after} published frames")
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate(timeout=30)
    second = _run_cli(cfg, f"{name}-2")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err


def test_pipeline_sigkilled_and_restarted_no_loss_no_duplicate(asapo, tmp_path):
    produced(asapo.server_name, 40, ["scan_0001"])
    raw = config(asapo, tmp_path, group="crash")
    raw["kernels"]["slow"] = {"kind": "tests.plugins:Sleepy", "ms": 40.0}
    _killed_then_rerun(_write_toml(tmp_path / "crash.toml", raw), "crash", after=8)
    out = outputs(asapo, "scan_0001")
    assert sorted(out) == list(range(1, 41))  # nothing lost, each id once in the output
    done_first = set()
    f1 = tmp_path / "out_scan_0001_crash-1.h5"
    if f1.exists():
        try:
            done_first = set(read_stream(str(f1), "scan_0001")["message_id"].tolist())
        except OSError:
            pass  # a file killed mid-write may be unreadable; the ASAPO output is the record
    again = set(
        read_stream(str(tmp_path / "out_scan_0001_crash-2.h5"), "scan_0001")["message_id"].tolist()
    )
    assert done_first | again == set(range(1, 41))


def test_two_instances_share_a_group_exactly_once(asapo, tmp_path):
    # Each ends once the stream is finished and drained: an idle timeout could end one before
    # the other had started on a loaded machine, and the broker would give it nothing.
    raw = config(asapo, tmp_path, group="shared")
    cfg = _write_toml(tmp_path / "shared.toml", raw)
    a, b = _run_cli(cfg, "node-a"), _run_cli(cfg, "node-b")
    from shmpipe.observe.runs import live_runs
    from tests.test_lifecycle import wait_for

    wait_for(lambda: {"node-a", "node-b"} <= {r["name"] for r in live_runs()}, what="both")
    produced(asapo.server_name, 60, ["scan_0001"], rate=60.0)
    for p in (a, b):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ids = {}
    for node in ("node-a", "node-b"):
        path = tmp_path / f"out_scan_0001_{node}.h5"
        ids[node] = (
            read_stream(str(path), "scan_0001")["message_id"].tolist() if path.exists() else []
        )
    assert not set(ids["node-a"]) & set(ids["node-b"])
    assert sorted(ids["node-a"] + ids["node-b"]) == list(range(1, 61))
    assert ids["node-a"] and ids["node-b"]  # the broker split the stream between them


def test_wrong_token_is_a_configuration_error(tmp_path):
    with AsapoProcess(tmp_path / "secure", tokens=["right"]) as service:
        raw = config(service, tmp_path, token="wrong")
        raw["sinks"] = [{"kind": "null"}]
        from shmpipe.engine.supervisor import StartupError

        with pytest.raises(StartupError, match="refused beamtime 'bt_test'"):
            run(raw)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "shmpipe",
                "run",
                "--config",
                str(_write_toml(tmp_path / "bad.toml", raw)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == EXIT_CONFIG_ERROR
        assert "check source.token" in r.stderr


def test_has_filesystem_reads_payload_files_straight_into_slots(asapo, tmp_path):
    produced(asapo.server_name, 6, ["scan_0001"])
    raw = config(
        asapo, tmp_path, group="fs", has_filesystem=True, source_path=str(asapo.data_dir / BEAMTIME)
    )
    summary = run(raw)
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(tmp_path / "out_scan_0001_asapo-run.h5"), "scan_0001")
    digests = pool_digests()
    assert data["message_id"].tolist() == list(range(1, 7))
    assert [bytes(d) for d in data["checksum.digest"]] == [digests[i % 2] for i in range(6)]


def test_quarantined_frame_is_handed_back_once_then_recorded(asapo, tmp_path):
    produced(asapo.server_name, 8, ["scan_0001"])
    raw = config(asapo, tmp_path, group="poison", nack_delay_ms=200, retry_quarantined=1)
    raw["run"]["max_attempts"] = 1
    raw["kernels"]["crash"] = {"kind": "tests.plugins:Crash", "ids": [3], "mode": "abort"}
    summary = run(raw)
    assert summary.exit_code == EXIT_FRAME_ERRORS, summary.error
    assert summary.frames_in == 9  # message 3 came back once after the negative ack
    assert summary.worker_restarts == 2 and summary.quarantined == 2
    data = read_stream(str(tmp_path / "out_scan_0001_asapo-run.h5"), "scan_0001")
    assert sorted(data["message_id"].tolist()) == [1, 2, 4, 5, 6, 7, 8]
    assert data["errors"]["message_id"].tolist() == [3]  # recorded once, on its last try
    assert data["errors"]["quarantined"].tolist() == [True]


def _profile_config(asapo: AsapoProcess, tmp_path: Path, group: str, **sink) -> dict:
    raw = config(asapo, tmp_path, group=group)
    raw["kernels"] = {"profile": {"kind": "tests.plugins:Profile", "scale": sink.pop("scale", 1.0)}}
    raw["sinks"] = [
        {"kind": "hdf5", "output": str(tmp_path / "prof_{stream}_{run}.h5")},
        {
            "kind": "asapo",
            "endpoint": asapo.server_name,
            "beamtime": BEAMTIME,
            "data_source": "azint",
            "outputs": ["profile.radial", "profile.intensity", "profile.sigma", "profile.total"],
            **sink,
        },
    ]
    return raw


def test_reader_gives_the_asapo_consumers_records_and_the_files_arrays(asapo, tmp_path):
    from shmpipe import results

    produced(asapo.server_name, 6, ["scan_0001"])
    summary = run(_profile_config(asapo, tmp_path, "r1"), name="prof-1")
    assert summary.exit_code == EXIT_OK, summary.error
    assert any(r.startswith(f"ASAPO {asapo.server_name} {BEAMTIME}/azint") for r in summary.outputs)
    r = results.load_asapo(asapo.server_name, BEAMTIME, "azint", "scan_0001")
    raw = outputs(asapo, "scan_0001", "azint")  # what the consumer gets, record by record
    assert r.message_id.tolist() == sorted(raw) == list(range(1, 7))
    for row, mid in enumerate(r.message_id):
        payload, meta = raw[mid]
        for a in meta["meta"]["arrays"]:
            n = int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize
            sent = np.frombuffer(payload[a["offset"] : a["offset"] + n], a["dtype"])
            mine = r.axes[a["name"]] if a["name"] in r.axes else r.arrays[a["name"]][row]
            np.testing.assert_array_equal(mine.reshape(-1), sent)
    f = results.load(str(tmp_path / "prof_scan_0001_prof-1.h5"))
    for name in ("profile.intensity", "profile.sigma", "profile.total"):
        np.testing.assert_array_equal(r[name], f[name])  # the same rows from either sink
    np.testing.assert_array_equal(r.axis("profile.intensity"), f.axis("profile.intensity"))
    assert r.units == f.units and r.errors_of == f.errors_of
    assert r.result_hash and r.runs[0]["run_name"] == "prof-1"
    shown = subprocess.run(
        [sys.executable, "-m", "shmpipe", "results", "--asapo", asapo.server_name,
         "--beamtime", BEAMTIME, "--data-source", "azint"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "stream scan_0001: 6 rows, ids 1..6, 0 errors, finished" in shown.stdout


def test_asapo_sink_refuses_a_stream_made_with_another_configuration(asapo, tmp_path):
    from shmpipe import results

    produced(asapo.server_name, 4, ["scan_0001"])
    assert run(_profile_config(asapo, tmp_path, "c1"), name="conf-1").exit_code == EXIT_OK
    other = run(_profile_config(asapo, tmp_path, "c2", scale=2.0), name="conf-2")
    assert other.exit_code != EXIT_OK
    assert "another result-shaping configuration" in other.error
    assert "allow_other_config" in other.error
    before = results.load_asapo(asapo.server_name, BEAMTIME, "azint", "scan_0001")
    assert len({r["result_hash"] for r in before.runs}) == 1  # nothing of conf-2 got in
    allowed = _profile_config(asapo, tmp_path, "c3", scale=2.0, allow_other_config=True)
    assert run(allowed, name="conf-3").exit_code == EXIT_OK


def test_output_refused_for_good_fails_the_run_instead_of_retrying(tmp_path):
    """Sends the service refuses (a token not valid for the beamtime) are not sent again:
    the run fails, naming the output, and the inputs stay unacknowledged."""
    import asapo_producer

    tokens = {"beamline": [BEAMTIME], "elsewhere": ["another_beamtime"]}
    with AsapoProcess(tmp_path / "asapo-data", tokens=tokens) as asapo:
        prod = asapo_producer.create_producer(
            asapo.server_name, "processed", BEAMTIME, "auto", "detector", "beamline", 1, 5000
        )
        prod.set_log_level("none")
        part = np.zeros(SHAPE, dtype=np.uint16).reshape(-1).view(np.uint8)
        for mid in (1, 2):
            for m in range(1, 13):
                prod.send(mid, f"f{mid}_m{m}", part, dataset=(m, 12), stream="scan_0001")
        prod.wait_requests_finished(5000)
        prod.send_stream_finished_flag("scan_0001", 2)
        prod.wait_requests_finished(5000)
        raw = config(asapo, tmp_path, group="refused", token="beamline")
        raw["sinks"][1].update(token="elsewhere", allow_other_config=True, retry_max_s=0.5)
        summary = run(raw)
        assert summary.exit_code != EXIT_OK
        assert "ASAPO output checksums: " in summary.error and "refused" in summary.error
        raw["sinks"][1]["token"] = "beamline"  # corrected: the same group gets both again
        again = run(raw, name="again")
        assert again.exit_code == EXIT_OK, again.error
        data = read_stream(str(tmp_path / "out_scan_0001_again.h5"), "scan_0001")
        assert sorted(data["message_id"].tolist()) == [1, 2]
        assert sorted(outputs(asapo, "scan_0001", token="beamline")) == [1, 2]


def test_source_reads_on_with_a_fresh_client_after_a_failed_request(asapo, tmp_path):
    """A client that saw a failed request is not used again (it can be left with a bad
    pooled receiver connection): the next try gets a new one, and no message is lost."""
    from shmpipe.api.message import Message
    from shmpipe.plugins.sources.asapo import AsapoSource, AsapoSourceParams
    from tests.test_lifecycle import wait_for

    produced(asapo.server_name, 3, ["scan_0001"])
    params = AsapoSourceParams(
        endpoint=asapo.server_name,
        beamtime=BEAMTIME,
        stream="scan_0001",
        group_id="fresh-client",
        part_shape=SHAPE,
        timeout_ms=300,
        until="finished",
    )
    source = AsapoSource(params)
    source.open()
    try:
        first = wait_for(lambda: source.next(0.5), what="message 1")
        assert isinstance(first, Message) and first.message_id == 1 and len(first.parts) == 12
        client = source._consumer  # noqa: SLF001 - which client object reads
        asapo.stop()
        assert source.next(0.5) is None  # unavailable: a retry is scheduled
        assert source._consumer is not client  # noqa: SLF001
        asapo.start()
        ids = []
        while len(ids) < 2:
            item = wait_for(lambda: source.next(0.5), timeout=30, what="messages 2 and 3")
            assert isinstance(item, Message), item
            ids.append(item.message_id)
        assert sorted(ids) == [2, 3]
    finally:
        source.close()


def test_a_message_held_long_in_a_killed_pipeline_is_redelivered(asapo, tmp_path):
    """A backlog held unacknowledged for many resend delays still comes back after a crash.

    With one slow worker the whole stream waits in the ring, unacknowledged, for many times
    ``source.resend_delay_ms``; the broker redelivers each id every delay, and with a bounded
    ``resend_attempts`` gives up on it: a pipeline SIGKILLed after that would lose them all.
    The default (0: unlimited) keeps redelivering until a run acknowledges the result.
    """
    produced(asapo.server_name, 14, ["scan_0001"])
    raw = config(asapo, tmp_path, group="backlog", resend_delay_ms=100)
    raw["run"]["workers"] = 1
    raw["kernels"]["slow"] = {"kind": "tests.plugins:Sleepy", "ms": 250.0}
    _killed_then_rerun(_write_toml(tmp_path / "backlog.toml", raw), "backlog", after=3)
    assert sorted(outputs(asapo, "scan_0001")) == list(range(1, 15))
