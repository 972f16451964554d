"""TapFeed: what a view reads from a local pipeline's preview tap."""

from __future__ import annotations

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.shm.preview import W_HOLD
from shmpipe.shm.tapwriter import TapWriter
from shmpipe.view.feed import IN_PLACE_TRIES, TapFeed

SPECS = [ArraySpec("k.sum", (), "float64"), ArraySpec("k.image", (16, 24), "float32")]


def _tap_and_publisher():
    tap = TapWriter.create(SPECS, None, {"name": "feed-test"}, max_hz=1e6, history=10)
    results = {s.name: np.zeros((2, *s.shape), s.dtype) for s in SPECS}
    tap.bind_results(lambda off, dt, shape: results[off], {s.name: s.name for s in SPECS})
    frames = iter(range(1, 1000))

    def publish() -> int:
        mid = next(frames)
        results["k.image"][mid % 2] = mid
        tap.note("scan", mid, mid % 2, None)
        tap.commit(lambda slot, name: results[name][slot], None)
        return mid

    tap.want(["k.image"])
    feed = TapFeed(tap, np.zeros((2, 8), np.int64), np.zeros((3, 8), np.int64), 1)
    return tap, feed, publish


def test_the_writer_skips_its_copies_while_a_reader_reads_in_place():
    tap, feed, publish = _tap_and_publisher()
    try:
        first = publish()

        def slow_reader(image):
            publish()  # frames committed while the image is read do not overwrite it
            return float(image.min()), float(image.max())

        _, mid, _, (lo, hi) = feed.apply("k.image", slow_reader)
        assert mid == first and lo == hi == first
        # Released: the next commit is written.
        latest = publish()
        assert feed.apply("k.image", lambda image: float(image[0, 0]))[1:4:2] == (latest, latest)
    finally:
        feed.close()


def test_a_reader_overtaken_while_reading_in_place_reads_a_copy():
    """The block is overwritten during every in-place read all the same (another reader
    released the hold): the feed gives up reading in place after a few tries and answers
    from a consistent copy."""
    tap, feed, publish = _tap_and_publisher()
    try:
        publish()
        calls = []

        def overtaken(image):
            calls.append(float(image[0, 0]))
            tap.words[W_HOLD] = 0  # as another reader finishing does
            publish()
            return float(image.min()), float(image.max())

        stream, mid, _, (lo, hi) = feed.apply("k.image", overtaken)
        assert stream == "scan" and lo == hi == mid  # one whole frame, the one named
        assert len(calls) == IN_PLACE_TRIES + 1  # not the tap's 20 tries in place
    finally:
        feed.close()


def test_lavue_gets_each_frame_once_and_transposed():
    """The view asked again for the same frame (a new generation whose image could not be
    copied yet answers the last frame) sends nothing; a new frame goes out once, (x, y)."""
    import json

    import zmq

    from shmpipe.view.server import ViewOptions, ViewState
    from tests.view_helpers import free_port

    tap, feed, publish = _tap_and_publisher()
    port = free_port()
    state = ViewState(feed, ViewOptions(image="k.image", zmq=f"tcp://127.0.0.1:{port}"))
    from shmpipe.view.lavue import LavuePublisher

    state.lavue = LavuePublisher(state.options.zmq)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"shmpipe")
    sub.connect(f"tcp://127.0.0.1:{port}")
    try:
        # A PUB socket drops what is sent before the subscription arrives: new frames
        # until one is seen.
        while not sub.poll(50):
            publish()
            state._to_lavue()
        while sub.poll(300):
            sub.recv_multipart()
        state._to_lavue()  # the same frame again
        second = publish()
        state._to_lavue()
        state._to_lavue()
        got = []
        while sub.poll(300):
            got.append(sub.recv_multipart())
    finally:
        sub.close(linger=0)
        state.lavue.close()
        ctx.term()
        feed.close()
    assert [json.loads(m[2])["name"] for m in got] == [f"feed-test/scan/{second}"]
    meta = json.loads(got[0][2])
    assert meta["shape"] == [24, 16]  # (x, y) of the 16 x 24 image
    image = np.frombuffer(got[0][1], meta["dtype"]).reshape(meta["shape"])
    assert (image == second).all()
