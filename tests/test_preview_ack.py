"""PreviewTap: big copies go at the pace of the reader that takes them.

The writer is this process's tap; readers attach to it through /proc/<pid>/fd as a view
does, or run in a child process that dies while reading.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from shmpipe.api.kernel import ArraySpec
from shmpipe.shm.preview import BIG_BYTES, PreviewTap
from shmpipe.shm.tapwriter import TapWriter
from tests.conftest import wait_for

FALLBACK_S = 0.25
SPECS = [
    ArraySpec("k.sum", (), "float64"),
    ArraySpec("k.profile", (1000,), "float32"),  # large (copied while wanted), not big
    ArraySpec("k.image", (512, 1024), "uint16"),  # 1 MiB: big
]
PARTS = [ArraySpec("m0", (512, 512), "uint16"), ArraySpec("m1", (512, 512), "uint16")]
LAYOUT = ((0, "<u2", (512, 512)), (1, "<u2", (512, 512)))


class Writer:
    """A tap and a publisher stand-in that commits one frame per ``publish``."""

    def __init__(self, max_hz: float = 1e6) -> None:
        self.tap = TapWriter.create(
            SPECS, PARTS, {"name": "ack-test"}, max_hz=max_hz, history=10, fallback_s=FALLBACK_S
        )
        self.results = {s.name: np.zeros((2, *s.shape), s.dtype) for s in SPECS}
        self.inputs = np.zeros((2, 2, 512, 512), "uint16")
        self.tap.bind_results(
            lambda off, dt, shape: self.results[off], {s.name: s.name for s in SPECS}
        )
        self.mid = 0
        self.copy_times: list[float] = []

    def info(self) -> dict:
        return {"pid": os.getpid(), "preview_fd": self.tap.fd, "name": "ack-test"}

    def publish(self) -> int:
        self.mid += 1
        slot = self.mid % 2
        self.results["k.image"][slot] = self.mid
        self.inputs[slot] = self.mid
        copies = self.tap.copy_cost()[0]
        self.tap.note("scan", self.mid, slot, LAYOUT)
        self.tap.commit(
            lambda slot, name: self.results[name][slot],
            lambda slot, off, dt, shape: self.inputs[slot, off],
        )
        if self.tap.copy_cost()[0] > copies:
            self.copy_times.append(time.monotonic())
        return self.mid

    def publish_until(self, copies: int, timeout: float = 20.0) -> None:
        """Publish frames back to back until the tap has made ``copies`` copies."""
        wait_for(
            lambda: self.publish() and self.tap.copy_cost()[0] >= copies,
            timeout,
            f"{copies} tap copies",
            interval=0.001,
        )

    def close(self) -> None:
        self.tap.close()


@pytest.fixture
def writer():
    w = Writer()
    yield w
    w.close()


def _intervals(times: list[float]) -> np.ndarray:
    """Times between copies, as the writer saw them (timed after each copy here, before
    it in the writer: a few milliseconds of slack)."""
    return np.diff(np.array(times)) + 0.01


def test_big_means_at_least_big_bytes():
    assert SPECS[2].nbytes >= BIG_BYTES > SPECS[1].nbytes
    assert sum(p.nbytes for p in PARTS) >= BIG_BYTES


def test_a_reader_that_never_takes_a_copy_gets_one_per_fallback_interval(writer):
    reader = PreviewTap.attach(writer.info())
    try:
        reader.want(["k.image"], raw=True)  # wants, and then never reads
        writer.publish_until(4)
        # The first copy went at once (nothing to take before it); each later one waited
        # for the fallback interval, while frames were committed back to back.
        assert (_intervals(writer.copy_times) >= FALLBACK_S).all(), writer.copy_times
        assert writer.tap.copy_waits() > 0
        assert writer.tap.commits() > writer.tap.copy_cost()[0]
    finally:
        reader.close()


def test_a_reader_that_takes_every_copy_gets_one_per_commit(writer):
    reader = PreviewTap.attach(writer.info())
    try:
        reader.want(["k.image"], raw=True)
        for _ in range(20):
            mid = writer.publish()
            _, got, _, value = reader.apply("k.image", lambda image: int(image[0, 0]))
            assert got == value == mid  # a copy of this very frame, taken in place
            assert reader.raw().message_id == mid
        copies, _ = writer.tap.copy_cost()
        assert copies == writer.tap.commits() == 20 and writer.tap.copy_waits() == 0
    finally:
        reader.close()


def test_copies_taken_by_a_reader_are_bounded_by_max_hz():
    w = Writer(max_hz=40.0)
    reader = PreviewTap.attach(w.info())
    try:
        reader.want(["k.image"])
        taken = 0
        deadline = time.monotonic() + 20.0
        while taken < 6 and time.monotonic() < deadline:
            g = reader.generation()
            w.publish()
            if reader.generation() != g:
                assert reader.apply("k.image", lambda image: int(image[0, 0])) is not None
                taken += 1
        assert taken == 6
        # Taken at once, so never waiting for the reader: max_hz is the only limit (on
        # average; two copies at least half a period apart).
        assert w.tap.copy_waits() == 0
        assert (_intervals(w.copy_times) >= 0.5 / 40.0).all(), w.copy_times
        # The first one after a pause may come half a period early, none after it.
        assert (w.copy_times[-1] - w.copy_times[0]) + 0.01 >= 4.5 / 40.0, w.copy_times
    finally:
        reader.close()
        w.close()


def test_a_reader_of_small_and_large_outputs_is_not_held_back(writer):
    """Outputs under BIG_BYTES (a profile: what the Tango device reads) are copied at
    max_hz whether or not anyone acknowledges them."""
    reader = PreviewTap.attach(writer.info())
    try:
        reader.want(["k.profile"])
        for _ in range(10):
            writer.publish()
        assert writer.tap.copy_cost()[0] == 10 and writer.tap.copy_waits() == 0
        _, mid, _, arrays = reader.latest(["k.profile", "k.sum"])
        assert mid == writer.mid and set(arrays) == {"k.profile", "k.sum"}
    finally:
        reader.close()


def test_a_second_reader_that_never_takes_a_copy_does_not_slow_the_first(writer):
    first, second = PreviewTap.attach(writer.info()), PreviewTap.attach(writer.info())
    try:
        second.want(["k.image"], raw=True)  # and never reads
        first.want(["k.image"])
        for _ in range(10):
            mid = writer.publish()
            assert first.apply("k.image", lambda image: int(image[0, 0]))[3] == mid
        assert writer.tap.copy_waits() == 0
    finally:
        first.close()
        second.close()


def _die_reading(info: dict, ready) -> None:
    """A reader that takes one frame, then hangs while reading the next in place."""
    reader = PreviewTap.attach(info)
    reader.apply("k.image", lambda image: None)

    def hang(image):
        ready.set()
        while True:
            time.sleep(1)  # until SIGKILL

    reader.apply("k.image", hang)


def test_a_reader_that_died_while_reading_does_not_stop_the_copies(writer):
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    writer.tap.want(["k.image"])
    writer.publish()
    child = ctx.Process(target=_die_reading, args=(writer.info(), ready))
    child.start()
    try:
        assert ready.wait(20), "the reader never started reading"
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        before = writer.tap.copy_cost()[0]
        # Its hold (at most 1 s) lapses and its acknowledgement never comes: copies go on,
        # at the fallback interval.
        writer.publish_until(before + 3)
        assert (_intervals(writer.copy_times[-3:]) >= FALLBACK_S).all()
        # A new reader that takes every copy gets one per commit again.
        reader = PreviewTap.attach(writer.info())
        try:
            reader.apply("k.image", lambda image: None)
            for _ in range(5):
                mid = writer.publish()
                assert reader.apply("k.image", lambda image: int(image[0, 0]))[3] == mid
        finally:
            reader.close()
    finally:
        if child.is_alive():
            child.kill()
            child.join()


def test_frames_at_max_hz_with_jitter_are_all_copied(monkeypatch):
    """A 20 Hz source on a 20 Hz tap, each commit up to a tenth of a period early or late
    (a clock under the test's control): every frame is copied, not every other one; and
    frames twice as fast are copied at 20 Hz."""
    import shmpipe.shm.preview as preview

    now = [1000.0]
    monkeypatch.setattr(preview.time, "monotonic", lambda: now[0])
    w = Writer(max_hz=20.0)
    reader = PreviewTap.attach(w.info())
    try:
        reader.want(["k.image"])
        for k in range(40):
            now[0] = 1000.0 + k * 0.05 + (0.005 if k % 2 else -0.005)
            w.publish()
            reader.apply("k.image", lambda image: None)
        assert w.tap.copy_cost()[0] == 40
        for k in range(80):
            now[0] = 1003.0 + k * 0.025
            w.publish()
            reader.apply("k.image", lambda image: None)
        assert w.tap.copy_cost()[0] - 40 in (40, 41)  # 2 s at 20 Hz (+1: after a pause)
    finally:
        reader.close()
        w.close()
