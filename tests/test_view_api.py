"""The live view's HTTP API, WebSocket and lavue feed against a running sim pipeline."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import struct
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from shmpipe.plugins.sinks.hdf5 import read_stream
from tests.conftest import wait_for
from tests.view_helpers import RunningView, free_port, reference_indices

zmq = pytest.importorskip("zmq")

IMAGE_QUERIES = [
    # (query, factor the view must use, scale)
    ("width=50&scale=sqrt&vmin=0&vmax=200&cmap=gray", 4, "sqrt"),
    ("width=97&scale=linear&cmap=viridis", 2, "linear"),  # contrast from percentiles
    ("width=1000&scale=log&vmin=5&vmax=150&x0=10&y0=20&x1=110&y1=120", 1, "log"),  # zoom
]

BAD_REQUESTS = [
    "/api/image/stitch.image.png?scale=cubic",
    "/api/image/stitch.image.png?width=0",
    "/api/image/stitch.image.png?width=wide",
    "/api/image/stitch.image.png?vmin=5&vmax=1",
    "/api/image/stitch.image.png?vmin=nan",
    "/api/image/stitch.image.png?cmap=rainbow",
    "/api/image/stitch.image.png?binning=median",
    "/api/image/stitch.image.png?x0=1&y0=1",
    "/api/image/stitch.image.png?x0=500&y0=500&x1=600&y1=600",
    "/api/image/stitch.image.png?colour=red",
    "/api/image/stitch.image.png?module=1",
    "/api/image/raw.png?module=99",
    "/api/image/integrate.intensity.png",
    "/api/pixel/stitch.image?x=1",
    "/api/pixel/stitch.image?x=9999&y=0",
    "/api/trace/stats.sum?last=0",
    "/api/trace/stats.sum?last=many",
    "/api/trace/stitch.image",
    "/api/profile/stats.sum",
]


def _png_indices(body: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(body))
    assert img.mode == "P"
    return np.asarray(img)


def _lavue_receive(sub, deadline_s: float = 30.0):
    """Receive one image as lavue 3.16's ZMQSource.getData decodes it: the last part
    b"JSON" names the encoding, three parts remain (topic, array, metadata), the array is
    ``frombuffer(dtype).reshape(shape)``, transposed and transposed back (taken as sent)."""
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    assert poller.poll(deadline_s * 1000), "no image from the lavue publisher"
    message = sub.recv_multipart()
    encoding = None
    if message[-1] == b"JSON":
        encoding = "JSON"
        message.pop()
    assert encoding == "JSON" and len(message) == 3
    topic, array, meta = message
    meta = json.loads(meta.decode())
    image = np.transpose(np.frombuffer(array, dtype=meta["dtype"]).reshape(meta["shape"]))
    return topic, np.transpose(image), meta


def _lavue_file_source(rows, index: int) -> np.ndarray:
    """What lavue 3.16's NeXus file source hands its display for frame ``index`` of a
    (frames, rows, columns) dataset: ``np.transpose(node[index, :, :])``, (x, y)."""
    return np.transpose(rows["stitch.image"][index])


def test_view_api_against_a_running_pipeline(tmp_path):
    zmq_port = free_port()
    rv = RunningView(tmp_path, "view-api", zmq_port=zmq_port, rate=10.0)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"shmpipe")
    sub.connect(f"tcp://127.0.0.1:{zmq_port}")
    images, profiles = [], []
    try:
        # Status names the run, and the message id advances.
        code, status = rv.get_json("/api/status")
        assert code == 200
        assert status["run"] == "view-api" and status["stream"] == "scan_0001"
        for key in ("frames_in", "frames_out", "rate", "ring_slots", "workers", "errors"):
            assert key in status
        first = status["message_id"]
        wait_for(
            lambda: rv.get_json("/api/status")[1]["message_id"] > first + 3,
            timeout=30,
            what="the message id to advance",
        )
        wait_for(lambda: rv.get_json("/api/status")[1]["rate"] > 0, timeout=10, what="a rate")

        # Outputs come from the chain's declarations.
        code, doc = rv.get_json("/api/outputs")
        outs = doc["outputs"]
        assert outs["raw"]["kind"] == "image" and outs["raw"]["modules"] == 12
        assert outs["stitch.image"]["kind"] == "image"
        assert outs["stitch.image"]["shape"] == [228, 194]
        assert outs["integrate.intensity"]["kind"] == "profile"
        assert outs["integrate.intensity"]["axis"] == "integrate.radial"
        assert outs["integrate.intensity"]["errors"] == "integrate.sigma"
        assert outs["integrate.radial"]["kind"] == "axis"
        assert outs["stats.sum"]["kind"] == "trace" and outs["stats.sum"]["unit"] == "counts"

        for query, factor, scale in IMAGE_QUERIES:
            code, body, headers = rv.get(f"/api/image/stitch.image.png?{query}")
            assert code == 200, body
            assert headers["Content-Type"] == "image/png"
            assert int(headers["X-Factor"]) == factor
            images.append((query, factor, scale, body, headers))
        code, body = rv.get_json("/api/profile/integrate.intensity")
        assert code == 200 and body["unit"] == "" and body["x_unit"] == "q_nm^-1"
        profiles.append(body)

        code, body, headers = rv.get("/api/image/raw.png?module=3&width=64")
        assert code == 200 and headers["X-Shape"] == "48,64"
        assert _png_indices(body).shape == (48, 64)
        # The raw frame is laid out with the chain's geometry file, as the stitched image:
        # at full resolution and with every value above vmax, module pixels show the top
        # colour and the gaps (NaN) the bottom one, exactly where the geometry puts them.
        code, body, headers = rv.get("/api/image/raw.png?width=194&vmin=-1&vmax=0")
        assert code == 200 and headers["X-Shape"] == "228,194", headers["X-Shape"]
        from native_kernels.geometry import DetectorGeometry

        modules = DetectorGeometry.from_file(tmp_path / "geometry.json").valid_mask()
        idx = _png_indices(body)
        np.testing.assert_array_equal(idx == 255, modules)
        assert (idx[~modules] == 0).all()

        code, px = rv.get_json("/api/pixel/stitch.image?x=5&y=7")
        assert code == 200 and isinstance(px["value"], float) and px["message_id"] >= first

        code, trace = rv.get_json("/api/trace/stats.sum?last=5")
        assert code == 200 and len(trace["message_id"]) == 5
        assert np.all(np.diff(trace["message_id"]) == 1)
        assert set(trace["stream"]) == {"scan_0001"}

        for path in BAD_REQUESTS:
            code, body = rv.get_json(path)
            assert code == 400, (path, code, body)
            assert body["error"], path
        assert rv.get_json("/api/image/nothing.png")[0] == 404
        assert rv.get_json("/api/profile/integrate.nothing")[0] == 404
        code, _, _ = rv.get("/")
        assert code == 200

        lavue = []  # (message id, image as lavue decodes it)
        for _ in range(6):
            topic, image, meta = _lavue_receive(sub)
            assert topic == b"shmpipe" and image.dtype == np.float32
            assert meta["name"].startswith("view-api/scan_0001/")
            lavue.append((int(meta["name"].rsplit("/", 1)[1]), image))

        # Nothing can change the pipeline: the API answers reads only.
        req = urllib.request.Request(rv.url + "/api/status", method="POST", data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 405
    finally:
        sub.close(linger=0)
        ctx.term()
        stderr = rv.stop()
    assert rv.proc.returncode == rv.clean_exit, stderr

    # What the view showed is what the HDF5 file holds for the same message ids.
    rows = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    at = {int(m): i for i, m in enumerate(rows["message_id"])}
    assert sorted(at) == list(range(1, len(at) + 1))  # nothing lost
    for query, factor, scale, body, headers in images:
        frame = rows["stitch.image"][at[int(headers["X-Message-Id"])]].astype(np.float64)
        x0, y0, x1, y1 = map(int, headers["X-Region"].split(","))
        vmin, vmax = float(headers["X-Vmin"]), float(headers["X-Vmax"])
        if "vmin" not in query:
            # Contrast from the 0.5 and 99.5 percentiles of the binned frame.
            ref = reference_indices(frame, factor, 0.0, 1.0, "linear")  # shape only
            h, w = frame.shape
            blocks = np.full((ref.shape[0] * factor, ref.shape[1] * factor), np.nan)
            blocks[:h, :w] = frame
            binned = np.nanmean(
                blocks.reshape(ref.shape[0], factor, ref.shape[1], factor), axis=(1, 3)
            )
            lo, hi = np.percentile(binned, [0.5, 99.5])
            assert (vmin, vmax) == pytest.approx((lo, hi))
        expected = reference_indices(frame[y0:y1, x0:x1], factor, vmin, vmax, scale)
        got = _png_indices(body)
        assert got.shape == expected.shape
        # Summation order may differ from numpy's by an ulp: at most one level, rarely.
        diff = np.abs(got.astype(int) - expected.astype(int))
        assert diff.max() <= 1 and np.count_nonzero(diff) <= got.size // 1000 + 1, query
    for p in profiles:
        i = at[p["message_id"]]
        np.testing.assert_allclose(p["y"], rows["integrate.intensity"][i])
        np.testing.assert_allclose(p["sigma"], rows["integrate.sigma"][i])
        np.testing.assert_allclose(p["x"], rows["integrate.radial"])  # the axis, stored once
    idx = [at[m] for m in trace["message_id"]]
    np.testing.assert_array_equal(trace["values"], rows["stats.sum"][idx])
    # lavue gets (x, y): the same orientation as its own file source shows the stitched
    # image (landscape for a LAMBDA 9M), the same pixels, and each frame once.
    ids = [mid for mid, _ in lavue]
    assert len(set(ids)) == len(ids) and ids == sorted(ids), ids
    for mid, image in lavue:
        shown_from_file = _lavue_file_source(rows, at[mid])
        assert image.shape == shown_from_file.shape == (194, 228)
        np.testing.assert_array_equal(image, shown_from_file)


def test_view_killed_or_stalled_the_pipeline_goes_on_and_loses_nothing(tmp_path):
    from websockets.sync.client import connect

    rv = RunningView(tmp_path, "view-kill", rate=40.0)
    stack = contextlib.ExitStack()
    try:
        first_pid = rv.info()["view_pid"]
        # A browser that subscribes and then stops reading.
        stalled = stack.enter_context(connect(f"ws://127.0.0.1:{rv.port}/ws"))
        stalled.send(json.dumps({"image": {"name": "raw", "width": 4096}}))
        before = rv.get_json("/api/status")[1]["frames_out"]
        os.kill(first_pid, signal.SIGKILL)
        wait_for(
            lambda: rv.info().get("view_pid") not in (None, first_pid),
            timeout=30,
            what="a new view process",
        )

        def answering():
            try:
                return rv.get_json("/api/status")[1]
            except OSError:
                return None

        after = wait_for(answering, timeout=30, what="the new view to answer")
        assert after["frames_out"] > before
        # The new view pushes frames to a reading client.
        with connect(f"ws://127.0.0.1:{rv.port}/ws") as live:
            live.send(json.dumps({"image": {"name": "stitch.image", "width": 64}}))
            mids = set()
            deadline = time.monotonic() + 30
            while len(mids) < 2 and time.monotonic() < deadline:
                msg = live.recv(timeout=10)
                n = struct.unpack(">I", msg[:4])[0]
                header = json.loads(msg[4 : 4 + n])
                if "message_id" in header:
                    assert msg[4 + n : 4 + n + 8] == b"\x89PNG\r\n\x1a\n"
                    mids.add(header["message_id"])
            assert len(mids) >= 2
        _stale_while_the_source_is_stopped(rv)
    finally:
        stack.close()
        stderr = rv.stop()
    assert rv.proc.returncode == rv.clean_exit, stderr
    assert "the view process ended" in stderr and "view process restarted" in stderr
    rows = read_stream(str(tmp_path / "out_scan_0001.h5"), "scan_0001")
    ids = sorted(int(m) for m in rows["message_id"])
    assert ids == list(range(1, len(ids) + 1))
    assert f"{len(ids)} frames in, {len(ids)} out, 0 errors" in stderr


def _stale_while_the_source_is_stopped(rv: RunningView) -> None:
    """The dispatcher stopped (no frame comes in): the status turns stale, with the message
    id kept, after the view's 5 s; resumed, it is fresh again and the id advances."""
    from shmpipe.observe.status import attach_tables
    from shmpipe.shm.layout import P_PID, PROC_DISPATCHER

    table, procs, m = attach_tables(rv.info())
    dispatcher = int(procs[PROC_DISPATCHER, P_PID])
    del table, procs
    m.close()
    os.kill(dispatcher, signal.SIGSTOP)
    try:
        stale = wait_for(
            lambda: (s := rv.get_json("/api/status")[1])["stale"] and s,
            timeout=30,
            what="the status to turn stale",
        )
        assert rv.get_json("/api/status")[1]["message_id"] == stale["message_id"]
    finally:
        os.kill(dispatcher, signal.SIGCONT)
    wait_for(
        lambda: (
            not (s := rv.get_json("/api/status")[1])["stale"]
            and s["message_id"] != stale["message_id"]
        ),
        timeout=30,
        what="fresh frames after the source resumed",
    )


def test_view_config_is_checked_before_anything_starts():
    from shmpipe.config import ConfigError, load_config

    for key, value, words in [
        ("view.port", "70000", "TCP port"),
        ("view.max_hz", "0", "more than 0"),
        ("view.history", "0", "at least 1"),
        ("view.nice", "20", "0..19"),
        ("view.zmq", '"localhost:5555"', "ZeroMQ address"),
        ("view.colour", '"red"', "view.colour"),
        ("view.geometry", '"/no/such/geometry.json"', "cannot read geometry file"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_config(overrides=[f"{key}={value}"])
    with pytest.raises(ConfigError, match="view.tap"):
        load_config(overrides=["view.port=8080", "view.tap=false"])


def test_shmpipe_view_attaches_to_a_running_pipeline(tmp_path):
    """A run without view.port; ``shmpipe view NAME`` serves its page from its own process."""
    import subprocess
    import sys

    from tests.view_helpers import free_port, small_lambda_config

    cfg = small_lambda_config(tmp_path, "view-attach", port=0, rate=20.0)
    run = subprocess.Popen(
        [sys.executable, "-m", "shmpipe", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    port = free_port()
    view = None
    try:
        from shmpipe.observe.runs import live_runs

        wait_for(lambda: any(r["name"] == "view-attach" for r in live_runs()), what="the run")
        missing = run_view_cli("nobody-runs-this", free_port())
        assert missing.returncode == 1 and "no running pipeline named" in missing.stderr
        view = subprocess.Popen(
            [sys.executable, "-m", "shmpipe", "view", "view-attach", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        url = f"http://127.0.0.1:{port}"

        def status():
            if view.poll() is not None:
                raise AssertionError(view.communicate()[1])
            try:
                with urllib.request.urlopen(url + "/api/status", timeout=10) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        first = wait_for(lambda: (s := status()) and s["message_id"] and s, what="the view")
        assert first["run"] == "view-attach" and first["workers"] == 2
        wait_for(lambda: status()["message_id"] > first["message_id"], what="a newer frame")
        with urllib.request.urlopen(url + "/api/image/stitch.image.png?width=64", timeout=10) as r:
            assert r.status == 200 and r.headers["X-Shape"] == "228,194"
    finally:
        if view is not None:
            view.terminate()
            view.communicate(timeout=30)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=90)
    assert view.returncode == 0
    assert run.returncode == 130, err  # stopped by Ctrl-C, drained


def run_view_cli(name: str, port: int):
    from tests.conftest import run_cli

    return run_cli("view", name, "--port", str(port), timeout=60)
