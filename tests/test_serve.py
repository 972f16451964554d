"""``shmpipe serve`` against the project's ASAPO service with the real clients: automatic start,
versioned reprocessing, the token, state that survives SIGKILL, the node's worker budget."""

from __future__ import annotations

import sqlite3
import time
import urllib.request
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from shmpipe.asapo.process import AsapoProcess
from tests.conftest import REPO, run_cli, wait_for
from tests.serve_helpers import (
    BEAMTIME,
    BEAMTIME_TOKEN,
    SHAPE,
    TOKEN,
    Serve,
    digest,
    pid_gone,
    pipeline_toml,
    service_toml,
)

asapo_consumer = pytest.importorskip("asapo_consumer")


@pytest.fixture
def asapo(tmp_path):
    with AsapoProcess(tmp_path / "asapo-data") as service:
        yield service


@pytest.fixture
def serves():
    started: list[Serve] = []
    yield started
    for s in started:
        s.stop()


def send(
    asapo, data_source: str, frames: int, streams=("scan_0001",), rate=0.0, beamtime=BEAMTIME
) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    r = subprocess.run(
        [
            sys.executable, str(REPO / "scripts" / "asapo_produce.py"),
            "--endpoint", asapo.server_name, "--beamtime", beamtime,
            "--data-source", data_source, "--frames", str(frames),
            "--streams", ",".join(streams), "--rate", str(rate),
            "--module-shape", ",".join(map(str, SHAPE)),
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def output_records(asapo, data_source: str, stream: str) -> dict[int, bytes]:
    """Every record of an output stream by id, read back with the real consumer."""
    c = asapo_consumer.create_consumer(
        asapo.server_name, "", False, BEAMTIME, data_source, "", 1000
    )
    try:
        last = int(c.get_stream_info(stream)["lastId"])
    except asapo_consumer.AsapoConsumerError:
        return {}
    got = {}
    for i in range(1, last + 1):
        try:
            data, _ = c.get_by_id(i, meta_only=False, stream=stream)
        except (asapo_consumer.AsapoEndOfStreamError, asapo_consumer.AsapoStreamFinishedError):
            break
        got[i] = bytes(np.asarray(data).view(np.uint8))
    return got


def recipe(tmp_path, asapo, name="azint", pattern="det*", out="azint", **set_) -> dict:
    return {
        "name": name,
        "config": str(pipeline_toml(tmp_path, asapo.server_name, out)),
        "match": {"beamtime": "bt_*", "data_source": pattern},
        "set": {"run.workers": 1, **set_},
    }


def test_new_data_source_gets_its_pipeline_and_reprocessing_is_versioned(asapo, tmp_path, serves):
    cfg = service_toml(tmp_path, asapo.server_name, [recipe(tmp_path, asapo)])
    serve = Serve(cfg).start()
    serves.append(serve)
    assert serve.runs() == []
    appeared = time.monotonic()  # the producer's start-up counts against the 10 s too
    send(asapo, "det1", 6)
    run = wait_for(lambda: next(iter(serve.runs()), None), 10, "the pipeline of det1")
    assert time.monotonic() - appeared < 10
    assert (run["recipe"], run["beamtime"], run["data_source"], run["version"]) == (
        "azint",
        BEAMTIME,
        "det1",
        0,
    )
    # The beamtime's token reaches the pipeline in a file only the service's user reads, never
    # on a command line that every user sees.
    pid = wait_for(lambda: serve.run(run["id"])["pid"], 30, "its pipeline's process")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert BEAMTIME_TOKEN.encode() not in f.read()
    config = tmp_path / "state" / "serve.sqlite.runs" / str(run["id"]) / "pipeline.toml"
    assert BEAMTIME_TOKEN in config.read_text() and config.stat().st_mode & 0o077 == 0
    # Every message processed once: six records in the output, ids 1-6, and six file rows.
    wait_for(lambda: len(output_records(asapo, "azint", "scan_0001")) == 6, 120, "6 outputs")
    original = tmp_path / "out" / "out_scan_0001.h5"
    wait_for(lambda: serve.run(run["id"])["frames_out"] == 6, 30, "6 frames published")
    with h5py.File(original, "r", swmr=True) as f:
        entry = f["scan_0001"]
        assert int(entry["rows"][0]) == 6  # committed rows: each message once
        assert entry["message_id"][:].tolist() == list(range(1, 7))
        assert entry["integrate.intensity"].shape[1] == 1000
    before_file = digest(original)
    before_asapo = output_records(asapo, "azint", "scan_0001")
    assert sorted(before_asapo) == list(range(1, 7))
    assert all(len(v) == 1000 * 8 for v in before_asapo.values())

    # A write without the token (or with a wrong one) is refused and changes nothing.
    request = {"recipe": "azint", "beamtime": BEAMTIME, "data_source": "det1",
               "set": {"kernels.integrate.npt": 500}}  # fmt: skip
    history = serve.runs()
    for token in (None, "wrong"):
        status, body = serve.request("POST", "/api/runs", request, token=token)
        assert status == 401, body
        status, body = serve.request("POST", f"/api/runs/{run['id']}/stop", {}, token=token)
        assert status == 401, body
        status, body = serve.request("POST", "/api/beamtimes", {"id": "bt_x"}, token=token)
        assert status == 401, body
    assert [r["id"] for r in serve.runs()] == [r["id"] for r in history]
    assert serve.request("GET", "/api/beamtimes")[1] == [BEAMTIME]
    # A bad request names the field.
    bad = {**request, "set": {"kernels.integrate.nptt": 500}}
    status, body = serve.request("POST", "/api/runs", bad, token=TOKEN)
    assert status == 400 and body["field"].startswith("set.kernels.integrate"), body
    status, body = serve.request("POST", "/api/runs", {**request, "streams": "x"}, token=TOKEN)
    assert (status, body["field"]) == (400, "streams"), body

    # Reprocessing: version 1, 500-point profiles, the originals untouched byte for byte.
    status, rerun = serve.request("POST", "/api/runs", request, token=TOKEN)
    assert status == 201, rerun
    assert rerun["version"] == 1 and rerun["overrides"] == {"kernels.integrate.npt": 500}
    done = wait_for(
        lambda: (r := serve.run(rerun["id"]))["state"] in ("finished", "failed") and r,
        180,
        "the reprocessing to finish",
    )
    assert done["state"] == "finished", done
    assert done["frames_out"] == 6 and done["errors"] == 0, done
    assert done["summary"].startswith("run azint.bt_serve.det1-r1: 6 frames in, 6 out"), done
    versioned = tmp_path / "out" / "out_scan_0001-r1.h5"
    with h5py.File(versioned, "r") as f:
        entry = f["scan_0001"]
        assert entry["message_id"][:].tolist() == list(range(1, 7))
        assert entry["integrate.intensity"].shape == (6, 500)
        config = f["scan_0001/process/configuration/data"][()].decode()
        assert "npt = 500" in config and "-r1" in f.attrs["run_name"]
        # The version and the overrides are in each output's provenance.
        assert 'provenance = { service = "shmpipe serve", recipe = "azint", version = 1' in config
        assert '"kernels.integrate.npt" = 500' in config
    c = asapo_consumer.create_consumer(asapo.server_name, "", False, BEAMTIME, "azint-r1", "", 1000)
    _, meta = c.get_by_id(3, meta_only=True, stream="scan_0001")
    lineage = meta["meta"]["lineage"]
    assert lineage["run"] == "azint.bt_serve.det1-r1"
    assert lineage["provenance"]["version"] == 1
    assert lineage["provenance"]["overrides"] == {"run.workers": 1, "kernels.integrate.npt": 500}
    again = output_records(asapo, "azint-r1", "scan_0001")
    assert sorted(again) == list(range(1, 7))
    assert all(len(v) == 500 * 8 for v in again.values())
    assert digest(original) == before_file
    assert output_records(asapo, "azint", "scan_0001") == before_asapo
    assert any("azint-r1" in o for o in done["outputs"]), done
    # Listed streams, one after the other: the next version, beside the others.
    status, listed = serve.request(
        "POST", "/api/runs", {**request, "streams": ["scan_0001"], "set": {}}, token=TOKEN
    )
    assert status == 201 and listed["version"] == 2, listed
    wait_for(lambda: serve.run(listed["id"])["state"] == "finished", 180, "version 2")
    assert sorted(output_records(asapo, "azint-r2", "scan_0001")) == list(range(1, 7))
    assert (tmp_path / "out" / "out_scan_0001-r2.h5").exists()
    status, recipes = serve.request("GET", "/api/recipes")
    assert status == 200 and [r["name"] for r in recipes] == ["azint"]

    # A beamtime added at run time is followed like those of the file.
    status, body = serve.request("POST", "/api/beamtimes", {"id": "bt_added"}, token=TOKEN)
    assert status == 201 and body["followed"] == ["bt_added", BEAMTIME], body
    send(asapo, "det7", 2, beamtime="bt_added")
    added = wait_for(
        lambda: next((r for r in serve.runs() if r["beamtime"] == "bt_added"), None), 10,
        "the pipeline of the added beamtime",
    )  # fmt: skip
    assert (added["recipe"], added["data_source"], added["version"]) == ("azint", "det7", 0)
    # Stopping a run on request: it drains and ends stopped, and is not started again.
    status, body = serve.request("POST", f"/api/runs/{added['id']}/stop", {}, token=TOKEN)
    assert status == 202 and body["stop_requested"], body
    stopped = wait_for(lambda: (r := serve.run(added["id"]))["state"] == "stopped" and r, 60, "")
    assert stopped["pid"] is None and stopped["exit_code"] in (0, 143, -15), stopped
    status, body = serve.request("POST", "/api/runs", {**request, "data_source": "azint"}, TOKEN)
    assert (status, body["field"]) == (400, "data_source"), body

    # The API describes itself; the metrics and shmpipe status show the runs.
    status, spec = serve.request("GET", "/openapi.json")
    assert status == 200 and {"/api/runs", "/api/runs/{id}/stop"} <= set(spec["paths"])
    with urllib.request.urlopen(serve.url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    assert 'shmpipe_serve_run_frames_out_total{name="azint.bt_serve.det1-r1"' in text
    assert "shmpipe_serve_max_workers 2" in text
    shown = run_cli("status", timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"service {serve.url}/" in shown.stdout and "azint.bt_serve.det1-r1" in shown.stdout

    running = [r for r in serve.runs() if r["state"] == "running"]
    assert serve.stop() == 0, serve.output()
    assert running and all(pid_gone(r["pid"]) for r in running)
    # Stopped with the service, they wait for its next start.
    db = sqlite3.connect(tmp_path / "state" / "serve.sqlite")
    states = dict(db.execute("SELECT id, state FROM runs").fetchall())
    db.close()
    assert {states[r["id"]] for r in running} == {"queued"}
    assert states[rerun["id"]] == "finished"


def test_check_reports_a_mistake_naming_key_and_file_before_anything_starts(tmp_path, asapo):
    cfg = service_toml(tmp_path, asapo.server_name, [recipe(tmp_path, asapo)])
    r = run_cli("serve", "--config", str(cfg), "--check")
    assert r.returncode == 0, r.stderr
    assert "recipe azint" in r.stderr
    text = cfg.read_text()
    cfg.write_text(text.replace("max_workers = 2", "max_worker = 2"))
    r = run_cli("serve", "--config", str(cfg), "--check")
    assert r.returncode == 2
    assert f"{cfg}: serve.max_worker: unknown key" in r.stderr
    cfg.write_text(text.replace('"run.workers" = 1', '"kernels.integrate.npt" = "x"'))
    r = run_cli("serve", "--config", str(cfg))
    assert r.returncode == 2
    assert "recipes[0].set" in r.stderr and "kernels.integrate.npt" in r.stderr, r.stderr
    assert not (tmp_path / "state").exists()  # nothing started


def test_pipeline_and_service_killed_mid_run_resume_with_nothing_lost_or_doubled(
    asapo, tmp_path, serves
):
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    frames = 40
    cfg = service_toml(tmp_path, asapo.server_name, [recipe(tmp_path, asapo)])
    serve = Serve(cfg).start()
    serves.append(serve)
    producer = subprocess.Popen(
        [
            sys.executable, str(REPO / "scripts" / "asapo_produce.py"),
            "--endpoint", asapo.server_name, "--beamtime", BEAMTIME, "--data-source", "det1",
            "--frames", str(frames), "--rate", "4", "--module-shape", ",".join(map(str, SHAPE)),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        run = wait_for(lambda: (r := serve.runs()) and r[0]["frames_out"] >= 2 and r[0], 90, "")
        # The pipeline dies: the service restarts it, and it resumes from its group.
        os.kill(run["pid"], signal.SIGKILL)
        wait_for(lambda: serve.run(run["id"])["restarts"] == 1, 30, "the pipeline's restart")
        run = wait_for(
            lambda: (r := serve.run(run["id"]))["state"] == "running"
            and r["frames_out"] > run["frames_out"] + 2 and r,
            90, "frames after the restart",
        )  # fmt: skip
        # The service dies: its pipeline goes on, and the restarted service adopts it.
        history = serve.runs()
        serve.kill()
        assert not pid_gone(run["pid"])
        serve.start()
        second = run_cli("serve", "--config", str(cfg), timeout=60)  # the same state: refused
        assert second.returncode == 2 and "in use by another shmpipe serve" in second.stderr
        after = serve.runs()
        keys = ("id", "recipe", "beamtime", "data_source", "version", "started", "restarts", "pid")
        assert [{k: r[k] for k in keys} for r in after] == [
            {k: r[k] for k in keys} for r in history
        ]
        assert producer.wait(timeout=120) == 0
    finally:
        producer.kill()
        producer.wait()
    wait_for(
        lambda: len(output_records(asapo, "azint", "scan_0001")) == frames, 120, "every output"
    )
    assert sorted(output_records(asapo, "azint", "scan_0001")) == list(range(1, frames + 1))
    # The run's counts go on from where the killed pipeline was last read (what it published
    # after that reading is known only to its outputs, checked above and below).
    with h5py.File(tmp_path / "out" / "out_scan_0001.h5", "r", swmr=True) as f:
        ids = f["scan_0001/message_id"][:].tolist()
    assert sorted(ids) == list(range(1, frames + 1))  # each once, none lost
    assert serve.stop() == 0
    assert pid_gone(run["pid"])  # the adopted pipeline drained and ended with the service


def test_runs_never_exceed_max_workers_and_wait_in_turn(asapo, tmp_path, serves):
    recipes = [
        recipe(tmp_path, asapo, name=n, out=f"azint_{n}", **{"source.idle_timeout_s": 2.0})
        for n in ("a", "b")
    ]
    extra = "max_restarts = 1\nrestart_backoff_s = 0.2"
    cfg = service_toml(tmp_path, asapo.server_name, recipes, max_workers=1, extra=extra)
    serve = Serve(cfg).start()
    serves.append(serve)
    send(asapo, "det1", 4)
    seen_queued = False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        node = serve.request("GET", "/api/node")[1]
        assert node["workers_in_use"] <= node["max_workers"] == 1, node
        runs = serve.runs()
        assert sum(r["state"] == "running" for r in runs) <= 1, runs
        seen_queued |= any(r["state"] == "queued" and r["queue_position"] == 1 for r in runs)
        if len(runs) == 2 and all(r["state"] == "finished" for r in runs):
            break
        time.sleep(0.2)  # polling interval of a bounded wait
    else:
        raise AssertionError(f"the two runs did not both finish: {serve.runs()}")
    assert seen_queued
    first, second = sorted(runs, key=lambda r: r["started"])
    assert second["started"] >= first["ended"]  # in turn, never side by side
    assert [r["frames_out"] for r in runs] == [4, 4]
    for n in ("a", "b"):
        assert sorted(output_records(asapo, f"azint_{n}", "scan_0001")) == [1, 2, 3, 4]

    # A geometry file that does not exist is refused with the request, naming the field.
    missing = {"kernels.integrate.geometry": str(tmp_path / "missing.json")}
    request = {"recipe": "a", "beamtime": BEAMTIME, "data_source": "det1", "set": missing}
    status, answer = serve.request("POST", "/api/runs", request, token=TOKEN)
    assert status == 400 and answer["field"] == "set.kernels.integrate.geometry", answer

    # A pipeline that cannot start is started again once (max_restarts = 1), then fails.
    broken = {"kernels.broken.kind": "tests.plugins:FailingSetup"}
    request = {"recipe": "a", "beamtime": BEAMTIME, "data_source": "det1", "set": broken}
    status, run = serve.request("POST", "/api/runs", request, token=TOKEN)
    assert status == 201, run
    failed = wait_for(
        lambda: (r := serve.run(run["id"]))["state"] in ("failed", "finished") and r, 120, ""
    )
    assert failed["state"] == "failed" and failed["restarts"] == 1, failed
    assert "gave up after 2 deaths in a row" in failed["message"], failed
    assert failed["exit_code"] == 2


def test_example_service_configuration_checks(tmp_path):
    example = (REPO / "examples" / "service.toml").read_text()
    lambda_toml = REPO / "examples" / "asapo_lambda.toml"
    cfg = tmp_path / "service.toml"
    cfg.write_text(example.replace('"asapo_lambda.toml"', f'"{lambda_toml}"'))
    r = run_cli("serve", "--config", str(cfg), "--check")
    assert r.returncode == 2 and "serve.token_file" in r.stderr, r.stderr
    (tmp_path / "serve.tokens").write_text("a-token\n")
    r = run_cli("serve", "--config", str(cfg), "--check")
    assert r.returncode == 0, r.stderr
    assert "recipe azint" in r.stderr and "is valid" in r.stderr
    assert not (tmp_path / "serve.sqlite").exists()


def test_the_service_docs_list_every_key():
    from shmpipe.serve.config import reference

    assert reference() in (REPO / "docs" / "service.md").read_text(), (
        "docs/service.md lacks the current table of the service's keys "
        "(shmpipe.serve.config.reference())"
    )


def test_an_unreachable_asapo_is_shown_not_silent(tmp_path, serves):
    from tests.view_helpers import free_port

    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    nowhere = SimpleNamespace(server_name=endpoint)
    cfg = service_toml(tmp_path, endpoint, [recipe(tmp_path, nowhere)])
    serve = Serve(cfg).start()
    serves.append(serve)
    problems = wait_for(lambda: serve.request("GET", "/api/node")[1]["problems"], 30, "problems")
    assert list(problems) == [BEAMTIME] and "Unavailable" in problems[BEAMTIME], problems
    assert serve.runs() == []
    assert serve.stop() == 0


@pytest.mark.parametrize(
    ("path", "version", "expected"),
    [
        ("out_{stream}.h5", 0, "out_{stream}.h5"),
        ("out_{stream}.h5", 1, "out_{stream}-r1.h5"),
        ("/data/p21/{run}.nxs", 12, "/data/p21/{run}-r12.nxs"),
        ("results/profiles", 2, "results/profiles-r2"),
        ("a.b/scan.tar.h5", 3, "a.b/scan.tar-r3.h5"),
    ],
)
def test_versioned_file_names_put_the_version_before_the_suffix(path, version, expected):
    from shmpipe.serve.plan import versioned_path

    assert versioned_path(path, version) == expected


def test_run_names_and_groups_of_versions():
    from shmpipe.serve.plan import group_id, run_name

    assert run_name("azint", "11012345", "lambda9m", 0) == "azint.11012345.lambda9m"
    assert run_name("azint", "bt/1", "det 2", 3) == "azint.bt_1.det_2-r3"  # a safe file name
    assert group_id("azint", 0) == group_id("azint", 0)  # the recipe's own: resumed
    assert group_id("azint", 1) != group_id("azint", 1)  # a reprocessing: always fresh


def test_a_state_file_of_an_earlier_version_keeps_its_runs(tmp_path):
    from shmpipe.serve.state import StateStore

    path = tmp_path / "serve.sqlite"
    old = sqlite3.connect(path)  # a runs table of fewer columns, as an older version wrote it
    old.execute(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, recipe TEXT NOT NULL, "
        "beamtime TEXT NOT NULL, data_source TEXT NOT NULL, version INTEGER NOT NULL, "
        "state TEXT NOT NULL, group_id TEXT NOT NULL, workers INTEGER NOT NULL, "
        "created REAL NOT NULL, frames_out INTEGER NOT NULL DEFAULT 0)"
    )
    old.execute(
        "INSERT INTO runs (recipe, beamtime, data_source, version, state, group_id, workers, "
        "created, frames_out) VALUES ('azint', 'bt1', 'det1', 2, 'finished', 'g', 1, 0, 17)"
    )
    old.commit()
    old.close()
    store = StateStore(path)
    (run,) = store.runs()
    assert (run["recipe"], run["version"], run["frames_out"]) == ("azint", 2, 17)
    assert run["restarts"] == 0 and run["overrides"] == {} and run["outputs"] == []
    assert store.next_version("azint", "bt1", "det1") == 3
    store.close()
