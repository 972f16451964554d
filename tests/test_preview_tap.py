"""PreviewTap: a writer process and a reader process sharing the tap through /proc/<pid>/fd."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys

import numpy as np
import pytest

from shmpipe.api.kernel import ArraySpec
from shmpipe.observe.runs import live_runs
from shmpipe.shm.history import is_small
from shmpipe.shm.preview import PreviewTap
from shmpipe.shm.tapwriter import TapWriter
from tests.conftest import SMALL_SIM, wait_for

SLOTS = 4
SPECS = [
    ArraySpec("k.sum", (), "float64", unit="counts"),
    ArraySpec("k.radial", (16,), "float32", unit="q_nm^-1"),
    ArraySpec("k.intensity", (16,), "float32", axis="k.radial", errors="k.sigma"),
    ArraySpec("k.sigma", (16,), "float32"),
    ArraySpec("k.image", (32, 32), "uint16"),
]
PARTS = [ArraySpec("m0", (8, 8), "uint16"), ArraySpec("m1", (8, 8), "uint16")]


def _frame_value(mid: int) -> float:
    return float(mid) * 1.5


def _writer(conn, frames: int, history: int) -> None:
    """Publish ``frames`` fake frames through the tap, as the publisher does."""
    tap = TapWriter.create(SPECS, PARTS, {"name": "tap-test"}, max_hz=1e6, history=history)
    results = {s.name: np.zeros((SLOTS, *s.shape), s.dtype) for s in SPECS}
    inputs = np.zeros((SLOTS, 2, 8, 8), "uint16")
    tap.bind_results(lambda off, dt, shape: results[off], {s.name: s.name for s in SPECS})
    layout = ((0, "<u2", (8, 8)), (128, "<u2", (8, 8)))
    conn.send({"pid": os.getpid(), "preview_fd": tap.fd, "name": "tap-test"})
    conn.recv()  # the reader is attached
    for mid in range(1, frames + 1):
        slot = mid % SLOTS
        results["k.sum"][slot] = _frame_value(mid)
        results["k.radial"][slot] = np.arange(16)
        results["k.intensity"][slot] = mid
        results["k.image"][slot] = mid
        inputs[slot] = mid
        tap.note("scan1" if mid <= frames // 2 else "scan2", mid, slot, layout)
        if mid % 3 == 0 or mid == frames:
            tap.commit(
                lambda slot, name: results[name][slot],
                lambda slot, off, dt, shape: inputs[slot, off // 128],
            )
    conn.send("done")
    conn.recv()
    tap.close()


@pytest.fixture
def writer():
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_writer, args=(there, 50, 20))
    proc.start()
    try:
        yield here, proc
    finally:
        here.send("bye")
        proc.join(10)
        if proc.exitcode is None:
            proc.kill()
            proc.join()


def test_reader_in_another_process_sees_latest_raw_and_history(writer):
    conn, proc = writer
    tap = PreviewTap.attach(conn.recv())
    assert tap.latest() is None and tap.raw() is None  # (and both are now wanted)
    conn.send("go")
    assert conn.recv() == "done"
    assert list(tap.outputs()) == [s.name for s in SPECS]
    assert tap.outputs()["k.intensity"].axis == "k.radial"
    assert tap.small == ["k.sum", "k.radial", "k.intensity", "k.sigma"]
    stream, mid, t, arrays = tap.latest()
    assert (stream, mid) == ("scan2", 50)
    assert t > 0
    assert np.all(arrays["k.image"] == 50) and arrays["k.sum"] == _frame_value(50)
    raw = tap.raw()
    assert (raw.stream, raw.message_id) == ("scan2", 50)
    assert [p.shape for p in raw.parts] == [(8, 8), (8, 8)] and np.all(raw.parts[1] == 50)
    # The ring keeps the last 20 of 50 frames, oldest first.
    h = tap.history("k.sum")
    assert h.message_id.tolist() == list(range(31, 51))
    assert h.values.tolist() == [_frame_value(m) for m in range(31, 51)]
    assert set(h.stream) == {"scan2"}
    assert tap.history("k.sum", last=3).message_id.tolist() == [48, 49, 50]
    assert tap.history("k.intensity", last=1).values.shape == (1, 16)
    assert tap.lookup("k.sum", "scan2", 40) == _frame_value(40)
    assert tap.lookup("k.sum", "scan1", 40) is None
    assert tap.lookup("k.sum", "scan2", 5) is None  # overwritten
    with pytest.raises(KeyError, match="not in the history"):
        tap.history("k.image")
    assert tap.written() == 50
    tap.close()


def test_a_reader_racing_the_writer_never_sees_a_torn_frame():
    """Every image the reader gets is uniform: all pixels from the same frame, the same id."""
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_writer, args=(there, 3000, 100))
    proc.start()
    try:
        tap = PreviewTap.attach(here.recv())
        tap.want(["k.image"])
        here.send("go")
        seen = 0
        while not here.poll():
            got = tap.latest(tries=1000)
            if got is None:
                continue
            _, mid, _, arrays = got
            assert np.all(arrays["k.image"] == mid % 65536)
            assert np.all(arrays["k.intensity"] == mid)
            h = tap.history("k.sum", last=50)
            assert np.all(h.values == h.message_id * 1.5)
            assert np.all(np.diff(h.message_id) == 1)
            seen += 1
        assert here.recv() == "done"
        assert seen > 0
        tap.close()
    finally:
        here.send("bye")
        proc.join(10)


def test_small_outputs_are_scalars_and_short_numeric_vectors():
    assert is_small(ArraySpec("a", (), "float32"))
    assert is_small(ArraySpec("a", (64,), "int64"))
    assert not is_small(ArraySpec("a", (65,), "int64"))
    assert not is_small(ArraySpec("a", (4, 32), "float32"))
    assert not is_small(ArraySpec("a", (), "S16"))


def test_a_running_pipeline_publishes_into_its_tap():
    """The real publisher: history ids in order, latest outputs and raw parts of one frame."""
    name = "tap-pipeline"
    sim = SMALL_SIM | {"frames": 400, "rate": 100.0}
    args = [f"source.{k}={v}" for k, v in sim.items() if k != "kind"]
    cmd = [sys.executable, "-m", "shmpipe", "run", "--set", f"run.name={name}", "--workers", "1"]
    cmd += ["--progress", "off", "--set", "kernels.stats.kind=frame_stats"]
    cmd += ["--set", "kernels.stats.input=parts"]
    for a in args:
        cmd += ["--set", a.replace("'", '"')]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for(
            lambda: next((i for i in live_runs() if i["name"] == name), None),
            timeout=60,
            what="the run in the registry",
        )
        tap = PreviewTap.attach(info)
        wait_for(lambda: tap.written() >= 20, timeout=60, what="20 frames in the tap")
        h = tap.history("stats.sum")
        assert np.all(np.diff(h.message_id) == 1) and h.message_id[0] == 1
        got = wait_for(tap.raw, timeout=10, what="a raw frame")
        stream, mid, _, arrays = tap.latest()
        assert set(arrays) == set(tap.outputs())
        assert tap.run["name"] == name
        assert len(got.parts) == 12 and got.parts[0].shape == (48, 64)
        # The stored sum of a frame is the sum its raw parts give, when both are of one frame.
        if got.message_id == mid:
            total = sum(float(p.sum()) for p in got.parts)
            assert float(arrays["stats.sum"]) == pytest.approx(total)
        assert float(tap.lookup("stats.sum", stream, mid)) == float(arrays["stats.sum"])
        tap.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def _unwatched_writer(conn) -> None:
    tap = TapWriter.create(SPECS, PARTS, {"name": "tap-test"}, max_hz=1e6, history=10)
    results = {s.name: np.full((SLOTS, *s.shape), 7, s.dtype) for s in SPECS}
    tap.bind_results(lambda off, dt, shape: results[off], {s.name: s.name for s in SPECS})
    layout = ((0, "<u2", (8, 8)), (128, "<u2", (8, 8)))
    inputs = np.ones((SLOTS, 2, 8, 8), "uint16")
    conn.send({"pid": os.getpid(), "preview_fd": tap.fd, "name": "tap-test"})
    for mid in (1, 2):
        conn.recv()
        tap.note("s", mid, mid % SLOTS, layout)
        tap.commit(
            lambda slot, name: results[name][slot],
            lambda slot, off, dt, shape: inputs[slot, off // 128],
        )
        conn.send("done")
    conn.recv()
    tap.close()


def test_large_outputs_and_raw_are_copied_only_while_a_reader_wants_them():
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_unwatched_writer, args=(there,))
    proc.start()
    try:
        tap = PreviewTap.attach(here.recv())
        here.send("frame 1")
        assert here.recv() == "done"
        # Nobody watched frame 1: only its small outputs were copied.
        _, mid, _, arrays = tap.latest(["k.sum", "k.image"])  # ... and now k.image is wanted
        assert mid == 1 and "k.sum" in arrays and "k.image" not in arrays
        assert tap.raw() is None
        here.send("frame 2")
        assert here.recv() == "done"
        _, mid, _, arrays = tap.latest(["k.image"])
        assert mid == 2 and np.all(arrays["k.image"] == 7)
        assert tap.raw().message_id == 2
        tap.close()
    finally:
        here.send("bye")
        proc.join(10)
