"""``shmpipe view --asapo``: one view of what two pipeline instances on one group published."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from shmpipe.plugins.sinks.hdf5 import read_stream
from tests.conftest import wait_for
from tests.test_asapo_pipeline import (
    BEAMTIME,
    SHAPE,
    _run_cli,
    _write_toml,
    asapo,  # noqa: F401 - the fixture
    config,
    produce,
)
from tests.view_helpers import free_port

pytest.importorskip("asapo_consumer")


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers
    except OSError:
        return None, b"", {}


def test_one_view_shows_what_every_node_of_a_group_published(asapo, tmp_path):  # noqa: F811
    # Each node ends once the stream is finished and drained (an idle timeout could end one
    # before the other had started, on a loaded machine).
    raw = config(asapo, tmp_path, group="shared")
    raw["kernels"] = {"stats": {"kind": "frame_stats", "input": "parts"}}
    raw["sinks"] = [
        {
            "kind": "asapo",
            "endpoint": asapo.server_name,
            "beamtime": BEAMTIME,
            "data_source": "stats",
        },
        {"kind": "hdf5", "output": str(tmp_path / "out_{stream}_{run}.h5")},
    ]
    cfg = _write_toml(tmp_path / "shared.toml", raw)
    # The detector's layout for the raw view: the simulator's 12 modules of SHAPE.
    from shmpipe.plugins.sources.sim import SimParams, sim_geometry

    layout = sim_geometry(SimParams(module_shape=SHAPE, modules=12))
    geometry_file = tmp_path / "geometry.json"
    layout.to_file(geometry_file)
    nodes = [_run_cli(cfg, "node-a"), _run_cli(cfg, "node-b")]
    port = free_port()
    view = producer = None
    try:
        from shmpipe.observe.runs import live_runs

        wait_for(lambda: {"node-a", "node-b"} <= {r["name"] for r in live_runs()}, what="both")
        producer = produce(asapo.server_name, 60, ["scan_0001"], rate=20.0)
        view = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shmpipe",
                "view",
                "--port",
                str(port),
                "--asapo",
                asapo.server_name,
                "--beamtime",
                BEAMTIME,
                "--data-source",
                "stats",
                "--raw-data-source",
                "detector",
                "--raw-part-shape",
                ",".join(map(str, SHAPE)),
                "--geometry",
                str(geometry_file),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"

        def view_up():
            if view.poll() is not None:
                raise AssertionError(f"the view stopped: {view.communicate()[1]}")
            return _get(url + "/api/status")[0] == 200

        wait_for(view_up, timeout=60, what="the view")
        out, err = producer.communicate(timeout=120)
        assert producer.returncode == 0, out + err

        def all_60():
            code, body, _ = _get(url + "/api/trace/stats.sum?last=1000")
            return code == 200 and json.loads(body)["message_id"] == list(range(1, 61))

        wait_for(all_60, timeout=60, what="all 60 records in the view's history")
        status = json.loads(_get(url + "/api/status")[1])
        seen_nodes = status["nodes"]
        assert status["frames_out"] == 60 and status["stream"] == "scan_0001"
        outs = json.loads(_get(url + "/api/outputs")[1])["outputs"]
        assert outs["stats.sum"]["kind"] == "trace", json.dumps(outs)
        assert outs["stats.sum"]["unit"] == "counts"
        code, _, headers = _get(url + "/api/image/raw.png?width=64")
        assert code == 200 and int(headers["X-Message-Id"]) >= 1  # get_last of the detector
        assert headers["X-Shape"] == ",".join(map(str, layout.shape))  # placed by --geometry
        assert _get(url + "/api/image/raw.png?module=0")[2]["X-Shape"] == ",".join(map(str, SHAPE))
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.communicate()
        if view is not None:
            view.terminate()
            view.communicate(timeout=30)
        for p in nodes:
            try:
                p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
    for p in nodes:
        assert p.returncode == 0
    # The view names every node that published (the broker decides how the group splits).
    published = {
        node
        for node in ("node-a", "node-b")
        if (tmp_path / f"out_scan_0001_{node}.h5").exists()
        and len(read_stream(str(tmp_path / f"out_scan_0001_{node}.h5"), "scan_0001")["message_id"])
    }
    assert published and seen_nodes == sorted(published)
