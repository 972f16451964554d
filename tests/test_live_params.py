"""Live parameters: the shared block (seqlock), writer-side validation, the worker's follower,
and ROIs changed during a running pipeline."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading

import numpy as np
import pytest

from native_kernels.shmpipe_kernels import FrameStats
from shmpipe.api.kernel import ArraySpec, Frame, Kernel
from shmpipe.config import load_config
from shmpipe.engine import Pipeline
from shmpipe.engine.exit_codes import EXIT_SIGTERM
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, sim_geometry
from shmpipe.shm.layout import PROC_PUBLISHER
from shmpipe.shm.params import (
    SEQ,
    LiveParams,
    LiveParamsError,
    ParamsFollower,
    check_live_params,
)
from tests.conftest import wait_for


@pytest.fixture
def live():
    block = LiveParams(capacity=4096)
    yield block
    block.close()


def test_write_read_versions(live):
    assert live.read() == ({}, 0)
    assert live.version() == 0
    assert live.write({"stats": {"rois": [[0, 1, 0, 1]]}}) == 1
    assert live.update("other", {"x": 2}) == 2
    doc, version = live.read()
    assert version == live.version() == 2
    assert doc == {"stats": {"rois": [[0, 1, 0, 1]]}, "other": {"x": 2}}
    with pytest.raises(LiveParamsError, match="exceed"):
        live.write({"big": {"s": "x" * 5000}})
    assert live.read() == (doc, 2)  # a refused write changes nothing


def _hammer(live: LiveParams, n: int) -> None:
    for i in range(1, n + 1):
        live.write({"k": {"i": i, "pad": "x" * (i % 1500)}})


def test_reader_never_sees_a_half_written_block(live):
    n = 3000
    writer = mp.get_context("fork").Process(target=_hammer, args=(live, n))
    writer.start()
    seen = 0
    try:
        while seen < n:
            doc, version = live.read()
            if version:
                body = doc["k"]
                assert body["i"] == version  # document and version from the same write
                assert body["pad"] == "x" * (body["i"] % 1500)
                assert version >= seen
                seen = version
    finally:
        writer.join(30)
    assert writer.exitcode == 0


def test_half_written_block_is_reported_then_repaired(live):
    live.write({"a": {"v": 1}})
    live._words[SEQ] += 1  # a writer died between its first and last store
    with pytest.raises(LiveParamsError, match="half-written"):
        live.read(timeout=0.05)
    follower = ParamsFollower(live, [])
    follower.live.version()  # unchanged version: nothing to read
    live.write({"a": {"v": 2}})
    assert live.read() == ({"a": {"v": 2}}, 2)


class _Recorder(Kernel):
    def __init__(self, name):
        super().__init__(name, None)
        self.calls = []

    def on_params(self, params, version):
        self.calls.append((dict(params), version))


def test_follower_calls_only_kernels_whose_section_changed(live):
    a, b = _Recorder("a"), _Recorder("b")
    follower = ParamsFollower(live, [a, b])
    follower.poll()
    assert a.calls == b.calls == []
    live.write({"a": {"x": 1}})
    follower.poll()
    follower.poll()  # same version: nothing
    live.write({"a": {"x": 1}, "b": {"y": 2}})
    follower.poll()
    live.write({"b": {"y": 2}})  # a's section removed: it hears {} (back to its configuration)
    follower.poll()
    assert a.calls == [({"x": 1}, 1), ({}, 3)]
    assert b.calls == [({"y": 2}, 2)]
    assert ParamsFollower(None, [a]).poll() is None  # no block: nothing to follow


IMAGE = ArraySpec("image", (40, 50), "float32").qualified("stitch")


def _stats(max_rois=3, rois=()):
    k = FrameStats("stats", FrameStats.Params(rois=list(rois), max_rois=max_rois))
    return k


def _outputs(kernel):
    from shmpipe.api.kernel import SetupContext

    specs = kernel.setup(SetupContext(parts=None, available={IMAGE.name: IMAGE}))
    qualified = [s.qualified(kernel.name) for s in specs]
    return {s.name: s for s in qualified} | {IMAGE.name: IMAGE}


def test_rois_are_checked_where_they_are_written():
    k = _stats()
    outputs = _outputs(k)
    specs = list(outputs.values())
    ok = check_live_params([k], specs, "stats", {"rois": [[0, 10, 5, 20], [1, 2, 3, 4]]})
    assert ok == {"rois": [[0, 10, 5, 20], [1, 2, 3, 4]]}
    assert check_live_params([k], specs, "stats", {"rois": [0, 10, 5, 20.0]}) == {
        "rois": [[0, 10, 5, 20]]
    }  # a flat list (a Tango spectrum) and whole floats are fine
    assert check_live_params([k], specs, "stats", {"rois": []}) == {"rois": []}
    bad = {
        "no kernel 'nope'": ("nope", {"rois": []}),
        "unknown live parameter": ("stats", {"threshold": 3}),
        "4 numbers each": ("stats", {"rois": [0, 10, 5]}),
        "outside the image": ("stats", {"rois": [[0, 41, 0, 10]]}),
        "is empty": ("stats", {"rois": [[5, 5, 0, 10]]}),
        "whole pixels": ("stats", {"rois": [[0, 1.5, 0, 10]]}),
        "must be integers": ("stats", {"rois": [["a", 1, 0, 10]]}),
        "list of": ("stats", {"rois": "0 1 0 1"}),
        "max_rois = 3": ("stats", {"rois": [[0, 1, 0, 1]] * 4}),
        "must be a table": ("stats", [1, 2]),
    }
    for reason, (kernel, values) in bad.items():
        with pytest.raises(LiveParamsError, match=reason):
            check_live_params([k], specs, kernel, values)
    no_room = _stats(max_rois=0)
    with pytest.raises(LiveParamsError, match="set max_rois"):
        check_live_params([no_room], list(_outputs(no_room).values()), "stats", {"rois": []})


def test_stats_take_new_rois_and_record_the_version():
    k = _stats(max_rois=3, rois=[[0, 4, 0, 4]])
    specs = _outputs(k)
    img = np.arange(40 * 50, dtype=np.float32).reshape(40, 50)
    out = {
        s.name.split(".")[1]: np.zeros(s.shape, s.dtype)
        for s in specs.values()
        if s.name.startswith("stats.")
    }
    frame = Frame("s", 1, "f", {}, {}, [], {"stitch.image": img})
    k.process(frame, out)
    np.testing.assert_array_equal(out["roi_sums"], [img[:4, :4].sum(), np.nan, np.nan])
    assert out["roi_version"] == 0
    k.on_params({"rois": [[10, 20, 0, 50], [0, 40, 7, 8]]}, 5)
    k.process(frame, out)
    np.testing.assert_array_equal(out["roi_sums"], [img[10:20].sum(), img[:, 7].sum(), np.nan])
    assert out["roi_version"] == 5
    k.on_params({}, 6)  # section removed: the configured ROIs again
    k.process(frame, out)
    assert out["roi_sums"][0] == img[:4, :4].sum() and out["roi_version"] == 6


# -- a running pipeline ----------------------------------------------------------------------
def test_rois_changed_mid_run_apply_from_a_later_frame(tmp_path):
    sim = SimParams(module_shape=[48, 64], pool=3)
    geo = tmp_path / "geometry.json"
    sim_geometry(sim).to_file(geo)
    raw = {
        "run": {"workers": 2, "progress": "off", "name": "live-rois"},
        # Endless: the steering thread ends the run (SIGTERM, a graceful drain) once it has
        # seen what it needs, so a slow machine cannot end the run before the change lands.
        "source": {"kind": "sim", "module_shape": [48, 64], "frames": 0, "rate": 200.0, "pool": 3},
        "kernels": {
            "stitch": {"kind": "lambda_stitch", "geometry": str(geo)},
            "stats": {"kind": "frame_stats", "rois": [[0, 10, 0, 10]], "max_rois": 3},
        },
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "out.h5")}],
    }
    pipeline = Pipeline(load_config(raw=raw))
    new_rois = [[5, 40, 10, 100], [0, 48, 0, 64]]
    written = {}

    def steer():
        try:
            p = wait_for(lambda: getattr(pipeline, "p", None), 60, "the pipeline's plumbing")
            wait_for(lambda: p.ring.procs[PROC_PUBLISHER, 2] >= 10, 60, "10 frames published")
            written["published"] = int(p.ring.procs[PROC_PUBLISHER, 2])
            kernels = pipeline.config.kernel_instances()
            checked = check_live_params(kernels, p.layout.specs(), "stats", {"rois": new_rois})
            written["version"] = p.live.update("stats", checked)
            # The preview tap's history rows carry the version each frame was processed with.
            wait_for(
                lambda: (p.tap.history("stats.roi_version").values == 1).sum() >= 20,
                60,
                "20 rows with the new ROIs",
            )
            h = p.tap.history("stats.roi_version")
            written["tap"] = (h.version.tolist(), h.values.tolist())
        finally:
            if signal.getsignal(signal.SIGTERM) == pipeline._on_signal:
                os.kill(os.getpid(), signal.SIGTERM)  # the pipeline's handler: drain, finish

    t = threading.Thread(target=steer, daemon=True)
    t.start()
    summary = pipeline.run()
    t.join(10)
    # Stopped by the steering thread's SIGTERM: a drained, early stop.
    assert summary.exit_code == EXIT_SIGTERM and summary.frames_out > 30, summary.error
    rows = read_stream(str(tmp_path / "out.h5"), "scan_0001")
    assert written["version"] == 1
    tap_versions, tap_recorded = written["tap"]
    assert tap_versions == tap_recorded and set(tap_versions) == {0, 1}
    ids, versions = rows["message_id"], rows["stats.roi_version"]
    assert set(versions) == {0, 1}
    # Frames published before the write used the configured ROI; the new ROIs reach only later
    # frames, and from then on every frame (each worker takes them before its next frame).
    assert ids[versions == 1].min() > written["published"]
    assert (versions[ids > ids[versions == 1].min() + 4] == 1).all()
    for img, sums, v in zip(rows["stitch.image"], rows["stats.roi_sums"], versions, strict=True):
        rois = new_rois if v == 1 else [[0, 10, 0, 10]]
        want = [float(img[y0:y1, x0:x1].sum(dtype=np.float64)) for y0, y1, x0, x1 in rois]
        want += [np.nan] * (3 - len(want))
        np.testing.assert_allclose(sums, want, rtol=1e-12)
