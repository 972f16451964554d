"""The Tango device of a running sim pipeline (no Tango database: nodb mode), through a real
DeviceProxy: attributes, change events, per-frame look-ups against the HDF5 rows, live ROIs,
bad requests, and the device process killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import psutil
import pytest

from native_kernels import stitch
from shmpipe.observe.runs import registry_dir
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, SimSource, sim_geometry
from tests.conftest import REPO, wait_for

tango = pytest.importorskip(
    "tango", reason="pytango is not installed (pip install 'shmpipe[tango]')"
)

RUN = "tango-test"
DEVICE = "test/shmpipe/1"
CONFIGURED_ROI = [0, 10, 0, 10]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp, port: int) -> str:
    geo = tmp / "geometry.json"
    sim_geometry(SimParams(module_shape=[48, 64])).to_file(geo)
    return f"""
[run]
name = "{RUN}"
workers = 2
progress = "off"
[source]
kind = "sim"
module_shape = [48, 64]
frames = 0
rate = 40.0
pool = 3
[kernels.stitch]
kind = "lambda_stitch"
geometry = "{geo}"
[kernels.integrate]
kind = "azimuthal_integrate"
geometry = "{geo}"
dist = 0.1
poni1 = 0.006
poni2 = 0.005
wavelength = 1e-10
npt = 200
unit = "q_nm^-1"
[kernels.stats]
kind = "frame_stats"
rois = [{CONFIGURED_ROI}]
max_rois = 4
threshold = 100
[[sinks]]
kind = "hdf5"
output = "{tmp / "out.h5"}"
[view]
history = 100
[tango]
device = "{DEVICE}"
nodb = true
port = {port}
event_hz = 10
"""


class Pipeline:
    """A ``shmpipe run`` process with its device; the tests share one."""

    def __init__(self, tmp, run_args=None, run: str = RUN) -> None:
        """``run_args(port)``: the ``shmpipe run`` options (default: this module's config)."""
        self.tmp, self.run = tmp, run
        self.port = _free_port()
        if run_args is None:
            path = tmp / "run.toml"
            path.write_text(_config(tmp, self.port))
            args = ["--config", str(path)]
        else:
            args = run_args(self.port)
        self.log = open(tmp / "run.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmpipe", "run", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self.url = f"tango://127.0.0.1:{self.port}/{DEVICE}#dbase=no"
        self.proxy = wait_for(self._connect, 90, "the Tango device to answer")

    def _connect(self):
        assert self.proc.poll() is None, (self.tmp / "run.log").read_text()
        try:
            p = tango.DeviceProxy(self.url)
            p.ping()
            return p if p.LastAnalyzedFrame > 0 else None
        except tango.DevFailed:
            return None

    def info(self) -> dict:
        return json.loads((registry_dir() / f"{self.run}.json").read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
        return code


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    p = Pipeline(tmp_path_factory.mktemp("tango"))
    yield p
    p.stop()
    left = [c for c in psutil.Process().children(recursive=True) if c.is_running()]
    assert not [c for c in left if c.status() != psutil.STATUS_ZOMBIE], left


@pytest.fixture(autouse=True)
def no_leaks():
    """Overrides conftest's per-test check: the shared pipeline lives across these tests
    (its own fixture stops it; the module's last test checks it leaves nothing)."""
    yield


def _advances(proxy, attr: str):
    first = proxy.read_attribute(attr).value
    wait_for(lambda: proxy.read_attribute(attr).value > first, 30, f"{attr} to advance")


def test_attributes_advance(pipeline):
    p = pipeline.proxy
    assert p.state() == tango.DevState.RUNNING
    assert "running" in p.status()
    for attr in ("LastAnalyzedFrame", "FramesIn", "FramesOut"):
        _advances(p, attr)
    assert p.Errors == 0 and p.Backlog >= 0
    assert p.CurrentStream == "scan_0001"
    wait_for(lambda: 20 < p.FrameRate < 60, 30, "FrameRate near the source's 40/s")
    assert 0.0 <= p.HitRate <= 1.0
    # One attribute per small output, generated from the declarations, with their units.
    names = set(p.get_attribute_list())
    assert {"stats_sum", "stats_max", "stats_roi_sums", "stats_roi_version"} <= names
    assert "stitch_image" not in names  # an image is not a per-frame scalar or short vector
    assert p.get_attribute_config("stats_sum").unit == "counts"
    sums = p.stats_roi_sums
    assert len(sums) == 4 and np.isnan(sums[1:]).all()
    profile, axis = p.LatestProfile, p.LatestProfileAxis
    assert len(profile) == len(axis) == 200 and np.all(np.diff(axis) > 0)
    assert p.get_attribute_config("LatestProfileAxis").unit == "q_nm^-1"


def test_subscriber_receives_change_events(pipeline):
    p = pipeline.proxy
    got: list[int] = []
    lock = threading.Lock()

    def on_event(ev):
        if not ev.err and ev.attr_value is not None:
            with lock:
                got.append(int(ev.attr_value.value))

    archived: list[float] = []

    def on_archive(ev):
        if not ev.err and ev.attr_value is not None:
            archived.append(float(ev.attr_value.value))

    eid = p.subscribe_event("LastAnalyzedFrame", tango.EventType.CHANGE_EVENT, on_event)
    aid = p.subscribe_event("stats_sum", tango.EventType.ARCHIVE_EVENT, on_archive)
    try:
        wait_for(lambda: len(got) >= 6, 30, "six change events")
        wait_for(lambda: len(archived) >= 3, 30, "archive events of a per-frame scalar")
    finally:
        p.unsubscribe_event(eid)
        p.unsubscribe_event(aid)
    with lock:
        values = list(got)
    assert values[1:] == sorted(values[1:]) and values[-1] > values[1]
    # Rate-limited: at 40 frames/s and event_hz = 10 each event skips frames.
    assert max(np.diff(values[1:])) > 1


def test_bad_requests_are_refused_and_the_pipeline_goes_on(pipeline):
    p = pipeline.proxy
    last = wait_for(lambda: max(0, p.LastAnalyzedFrame - 120), 30, "frame 1 to leave the history")
    last += 120
    cases = [
        (lambda: p.GetValueForFrame(["nope.sum", str(last)]), "shmpipe_UnknownOutput"),
        (lambda: p.GetValueForFrame(["stitch.image", str(last)]), "shmpipe_NotPerFrame"),
        (lambda: p.GetValueForFrame(["stats.sum", str(last + 10**6)]), "shmpipe_NotAnalysedYet"),
        (lambda: p.GetValueForFrame(["stats.sum", "1"]), "shmpipe_NotInHistory"),
        (lambda: p.GetValueForFrame(["stats.sum", str(last), "scan_9"]), "shmpipe_UnknownStream"),
        (lambda: p.GetValueForFrame(["stats.sum", "twelve"]), "shmpipe_BadArgument"),
        (lambda: p.GetValueForFrame(["stats.sum"]), "shmpipe_BadArgument"),
        (lambda: p.GetRoiForFrame([7, last]), "shmpipe_BadArgument"),
        (lambda: p.GetRoiForFrame([0]), "shmpipe_BadArgument"),
        (lambda: p.write_attribute("RoIs", [0, 10, 0]), "shmpipe_BadRoIs"),
        (lambda: p.write_attribute("RoIs", [0, 10, 0, 10_000]), "shmpipe_BadRoIs"),
        (lambda: p.write_attribute("RoIs", [5, 5, 0, 10]), "shmpipe_BadRoIs"),
        (lambda: p.write_attribute("RoIs", [0, 1, 0, 1] * 5), "shmpipe_BadRoIs"),
    ]
    assert p.GetValueForFrame(["stats.sum", str(last)])[0] > 0  # ...while a good one works
    for i, (call, reason) in enumerate(cases):
        with pytest.raises(tango.DevFailed) as err:
            call()
            pytest.fail(f"case {i} ({reason}) was accepted")
        assert err.value.args[0].reason == reason, err.value.args[0].desc
        assert err.value.args[0].desc  # says what is wrong
    # Wrong types never reach the device's code: Tango refuses them as DevFailed too.
    for call in (
        lambda: p.write_attribute("RoIs", ["a", "b", "c", "d"]),
        lambda: p.command_inout("GetRoiForFrame", "zero"),
    ):
        with pytest.raises((tango.DevFailed, TypeError, ValueError)):
            call()
    assert p.ParamsVersion == 0 and list(p.RoIs) == CONFIGURED_ROI  # nothing was applied
    _advances(p, "FramesOut")
    assert p.Errors == 0 and p.state() == tango.DevState.RUNNING


def test_device_killed_pipeline_goes_on_and_device_returns(pipeline):
    p = pipeline.proxy
    pid = pipeline.info()["tango_pid"]
    frames_before = p.FramesOut
    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(
        lambda: (pipeline.info().get("tango_pid") or pid) != pid and pipeline.info()["tango_pid"],
        30,
        "the supervisor to restart the device",
    )
    assert new_pid != pid and pipeline.proc.poll() is None
    proxy = wait_for(pipeline._connect, 60, "the restarted device to answer")
    assert proxy.FramesOut > frames_before  # the pipeline did not wait for the device
    assert proxy.Errors == 0
    pipeline.proxy = proxy


def test_rois_written_mid_run_and_lookups_equal_the_hdf5_rows(pipeline):
    p = pipeline.proxy
    new = [[5, 30, 10, 100], [0, 40, 0, 64], [100, 140, 150, 190]]
    before = p.LastAnalyzedFrame
    p.RoIs = [v for r in new for v in r]
    version = p.ParamsVersion
    assert version >= 1 and list(p.RoIs) == [v for r in new for v in r]
    wait_for(lambda: p.stats_roi_version == version, 30, "frames with the new ROIs")
    mids = [before - 3, before, before + 30]
    wait_for(lambda: p.LastAnalyzedFrame >= mids[-1], 30, "30 more frames")
    looked_up = {
        (out, mid): p.GetValueForFrame([out, str(mid)])
        for mid in mids
        for out in ("stats.sum", "stats.count_above", "stats.roi_sums", "stats.roi_version")
    }
    roi_cmd = {mid: p.GetRoiForFrame([1, mid]) for mid in mids[-1:]}
    max_cmd = {mid: p.GetMaxForFrame(mid) for mid in mids}
    p.StopAnalysis()  # a graceful drain, as SIGTERM
    # Stopped early, by the SIGTERM the command sends: drained, exit 143.
    assert pipeline.proc.wait(60) == 143, (pipeline.tmp / "run.log").read_text()
    rows = read_stream(str(pipeline.tmp / "out.h5"), "scan_0001")
    assert len(rows["errors"]["message_id"]) == 0
    index = {int(m): i for i, m in enumerate(rows["message_id"])}
    for (out, mid), value in looked_up.items():
        np.testing.assert_array_equal(value, np.ravel(rows[out][index[mid]]).astype(float))
    for mid, value in roi_cmd.items():
        assert value == rows["stats.roi_sums"][index[mid]][1]
    for mid, value in max_cmd.items():
        assert value == rows["stats.max"][index[mid]]
    # Every row's ROI sums are numpy's on its own image, with the ROIs of its recorded version;
    # the new version reaches only frames after the write, and then every frame.
    versions = rows["stats.roi_version"]
    assert set(versions) == {0, version}
    first_new = rows["message_id"][versions == version].min()
    assert first_new > before
    assert (versions[rows["message_id"] > first_new + 4] == version).all()
    for img, sums, v in zip(rows["stitch.image"], rows["stats.roi_sums"], versions, strict=True):
        rois = new if v == version else [CONFIGURED_ROI]
        want = [float(img[a:b, c:d].sum(dtype=np.float64)) for a, b, c, d in rois]
        np.testing.assert_allclose(sums, want + [np.nan] * (4 - len(want)), rtol=1e-12)
    assert not [e for e in os.listdir("/dev/shm") if RUN in e]


MAIN_RUN = "tango-main-job"


def _main_job_args(tmp):
    """examples/lambda9m_sim.toml as it is (compressed modules, decompress.modules into
    integrate and stats, ROIs mapped onto the modules), with small modules, room for 8 ROIs,
    an endless source and the device."""
    geo = tmp / "geometry.json"
    sim_geometry(SimParams(module_shape=[48, 64])).to_file(geo)
    sets = {
        "run.name": f'"{MAIN_RUN}"',
        "source.module_shape": "[48, 64]",
        "source.frames": "0",
        "source.rate": "40.0",
        "kernels.decompress.geometry": f'"{geo}"',
        "kernels.integrate.geometry": f'"{geo}"',
        "kernels.integrate.poni1": "0.006",
        "kernels.integrate.poni2": "0.005",
        "kernels.stats.geometry": f'"{geo}"',
        "kernels.stats.rois": "[[0, 48, 0, 64]]",
        "kernels.stats.max_rois": "8",
        "sinks.0.outputs": '["stats.roi_sums", "stats.roi_version"]',
        "tango.device": f'"{DEVICE}"',
        "tango.nodb": "true",
    }
    config = str(REPO / "examples" / "lambda9m_sim.toml")

    def args(port: int) -> list[str]:
        extra = [
            a for k, v in {**sets, "tango.port": str(port)}.items() for a in ("--set", f"{k}={v}")
        ]
        return [
            "--config",
            config,
            "--output",
            str(tmp / "main_{stream}.h5"),
            "--progress",
            "off",
        ] + extra

    return args


def test_rois_written_on_the_main_job_are_stitched_image_coordinates(tmp_path):
    """The main job has no 2-D image (stats reads decompress.modules): the device checks ROIs
    against the stitched image of the geometry, as the configured ones are, and the workers
    sum them over the modules."""
    geo = sim_geometry(SimParams(module_shape=[48, 64]))
    height, width = geo.shape
    pipeline = Pipeline(tmp_path, _main_job_args(tmp_path), run=MAIN_RUN)
    try:
        p = pipeline.proxy
        assert list(p.RoIs) == [0, 48, 0, 64]
        p.RoIs = [0, 48, 0, 64]  # the configured ROI, written back
        # Across modules and gaps: wider than a module, inside the stitched image.
        new = [[0, height, 0, width], [10, 60, 30, 140], [height - 5, height, width - 7, width]]
        p.RoIs = [v for r in new for v in r]
        version = p.ParamsVersion
        assert version == 2 and list(p.RoIs) == [v for r in new for v in r]
        for bad in ([0, height + 1, 0, 10], [0, 10, 0, width + 1], [0, 1, 0, 1] * 9):
            with pytest.raises(tango.DevFailed) as err:
                p.write_attribute("RoIs", bad)
            assert err.value.args[0].reason == "shmpipe_BadRoIs", err.value.args[0].desc
        wait_for(lambda: p.stats_roi_version == version, 30, "frames with the new ROIs")
        last_with_rois = p.LastAnalyzedFrame
        p.RoIs = []  # accepted: every ROI removed
        cleared = p.ParamsVersion
        assert cleared == version + 1 and list(p.RoIs) == []
        wait_for(lambda: p.stats_roi_version == cleared, 30, "frames without ROIs")
        p.StopAnalysis()
        assert pipeline.proc.wait(60) == 143, (tmp_path / "run.log").read_text()
    finally:
        pipeline.stop()
    rows = read_stream(str(tmp_path / "main_scan_0001.h5"), "scan_0001")
    sim = SimSource(SimParams(module_shape=[48, 64], compression="none"))
    sim.open()
    images = [stitch(sim.frame_parts(i), geo) for i in range(2)]  # the sim's pool of two
    versions = rows["stats.roi_version"]
    assert {version, cleared} <= set(versions)
    for mid, sums, v in zip(rows["message_id"], rows["stats.roi_sums"], versions, strict=True):
        img = images[(int(mid) - 1) % 2]
        rois = {0: [[0, 48, 0, 64]], 1: [[0, 48, 0, 64]], version: new, cleared: []}[int(v)]
        want = [float(img[a:b, c:d].sum(dtype=np.float64)) for a, b, c, d in rois]
        np.testing.assert_allclose(sums, want + [np.nan] * (8 - len(want)), rtol=1e-12)
    assert rows["message_id"][versions == version].max() >= last_with_rois
    assert not [e for e in os.listdir("/dev/shm") if MAIN_RUN in e]
