"""The dispatcher's fast paths: seat choice and the streaming copy into slots."""

from __future__ import annotations

import numpy as np
import pytest

from shmpipe.engine.scheduler import Scheduler
from shmpipe.shm.layout import (
    ASSIGNED,
    CLAIMED,
    FREE,
    OWNER,
    P_STATE,
    PROC_FIRST_WORKER,
    PS_DEAD,
    STATE,
)
from shmpipe.shm.ring import (
    RingGeometry,
    SlotRing,
)


@pytest.fixture
def ring():
    r = SlotRing(RingGeometry(slots=8, header_bytes=4096, payload_bytes=4096, result_bytes=0,
                              processes=PROC_FIRST_WORKER + 3))  # fmt: skip
    yield r
    r.close()


def test_least_loaded_seat_counts_assigned_and_claimed(ring):
    t = ring.table
    t[:, STATE] = FREE
    t[:3, STATE], t[:3, OWNER] = ASSIGNED, 0
    t[3:5, STATE], t[3:5, OWNER] = CLAIMED, 1
    t[5, STATE], t[5, OWNER] = FREE, 2  # free slots do not count, whatever the old owner
    assert {Scheduler(ring).least_loaded_seat(3) for _ in range(6)} == {2}
    t[5, STATE] = CLAIMED
    t[6:8, STATE], t[6:8, OWNER] = ASSIGNED, 2
    assert {Scheduler(ring).least_loaded_seat(3) for _ in range(6)} == {1}  # 2 vs 3 and 3


def test_least_loaded_seat_ties_rotate_and_skip_dead_and_excluded(ring):
    sched = Scheduler(ring)
    ring.table[:, STATE] = FREE
    assert sorted(sched.least_loaded_seat(3) for _ in range(3)) == [0, 1, 2]
    ring.procs[PROC_FIRST_WORKER + 1, P_STATE] = PS_DEAD
    assert {sched.least_loaded_seat(3) for _ in range(6)} == {0, 2}
    assert {sched.least_loaded_seat(3, exclude=0) for _ in range(6)} == {2}
    ring.procs[PROC_FIRST_WORKER + 2, P_STATE] = PS_DEAD
    assert sched.least_loaded_seat(3, exclude=0) == 0  # nobody else alive: the excluded seat


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 4096 + 13, (1 << 20) + 7])
def test_stream_copy_matches_numpy(n):
    streamcopy = pytest.importorskip("shmpipe.shm.streamcopy")
    if not streamcopy.AVAILABLE:
        pytest.skip("streaming stores need x86-64")
    rng = np.random.default_rng(n)
    src = rng.integers(0, 256, n, dtype=np.uint8)
    buf = np.zeros(n + 192, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64
    dest = buf[off : off + n]
    assert streamcopy.stream_copy(dest, src)
    assert np.array_equal(dest, src)
    assert not buf[:off].any() and not buf[off + n :].any()  # nothing written outside


def test_stream_copy_refuses_unaligned_destinations():
    streamcopy = pytest.importorskip("shmpipe.shm.streamcopy")
    buf = np.zeros(300, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64 + 1
    assert not streamcopy.stream_copy(buf[off : off + 128], np.ones(128, dtype=np.uint8))
    assert not buf.any()


def test_assign_many_spreads_a_batch_one_write_per_seat(ring):
    from shmpipe.shm.channel import ASSIGN, RecordPipe
    from shmpipe.shm.layout import (
        TICKET,
    )

    t = ring.table
    t[:, STATE] = FREE
    t[0, STATE], t[0, OWNER] = CLAIMED, 0  # seat 0 already holds one
    ring.procs[PROC_FIRST_WORKER + 2, P_STATE] = PS_DEAD
    inboxes = [RecordPipe() for _ in range(3)]
    try:
        Scheduler(ring).assign_many([1, 2, 3, 4, 5], inboxes)
        got = [inbox.recv(0) for inbox in inboxes]
        assert len(got[2]) == 0  # a dead seat gets nothing
        assert sorted(len(g) for g in got[:2]) == [2, 3]  # balanced, counting the claimed one
        assert len(got[1]) == 3
        for seat, records in enumerate(got[:2]):
            for kind, slot, ticket, _ in records.tolist():
                assert kind == ASSIGN
                assert (t[slot, STATE], t[slot, OWNER], t[slot, TICKET]) == (
                    ASSIGNED,
                    seat,
                    ticket,
                )
    finally:
        for inbox in inboxes:
            inbox.close()


def test_copy_parts_small_parts_byte_for_byte():
    from shmpipe.api.message import PART_ALIGN, Message, part_layout
    from shmpipe.shm.slotio import copy_parts

    structured = np.zeros((2, 3), dtype=[("a", "<i4"), ("b", "<f8")])
    structured["a"] = 7
    parts = [
        np.arange(12, dtype=">u2").reshape(3, 4),  # big-endian
        np.arange(5, dtype=np.float64),
        np.array(3.5),  # 0-d
        structured,
        np.arange(40, dtype=np.int32).reshape(5, 8)[:, ::2],  # not contiguous
        np.zeros(0, dtype=np.uint8),  # empty
    ]
    layout = part_layout(parts)
    buf = np.full(layout.nbytes + PART_ALIGN, 0xAB, np.uint8)
    copy_parts(Message("s", 1, parts=parts), buf)
    for (offset, dtype, shape), p in zip(layout.entries, parts, strict=True):
        # (a structured dtype travels as raw bytes of its size: "|V12")
        assert offset % PART_ALIGN == 0 and shape == p.shape
        assert np.dtype(dtype) == p.dtype or np.dtype(dtype).str == f"|V{p.dtype.itemsize}"
        assert bytes(buf[offset : offset + p.nbytes]) == np.ascontiguousarray(p).tobytes()
    assert (buf[layout.nbytes :] == 0xAB).all()  # nothing written past the parts


def test_slot_header_round_trip_and_refusals():
    from shmpipe.api.message import Message, StreamFinished
    from shmpipe.shm.slotio import HeaderError, UnstorableHeader, decode_header, encode_header

    buf = memoryview(bytearray(4096))
    parts = [np.zeros((2, 3), np.uint16), np.ones(5, np.float32)]
    msg = Message("scan_1", 7, "f7", parts, {"a": 1}, {"energy": 12.0}, 3.5)
    h = decode_header(buf, encode_header(msg, buf))
    assert (h.stream, h.message_id, h.name, h.meta, h.scan, h.timestamp) == (
        "scan_1", 7, "f7", {"a": 1}, {"energy": 12.0}, 3.5
    )  # fmt: skip
    assert [(dt, shape) for _, dt, shape in h.parts] == [("<u2", (2, 3)), ("<f4", (5,))]
    assert h.error is None and not h.finished
    end = StreamFinished("scan_1", "scan_2", 7)
    h = decode_header(buf, encode_header(Message("scan_1", 0), buf, finished=end))
    assert (h.finished, h.next_stream, h.last_id) == (True, "scan_2", 7)
    with pytest.raises(UnstorableHeader):
        encode_header(Message("s", 1, meta={"x": "y" * 5000}), buf)
    buf[:4] = b"\x00\x01\x02\x03"
    with pytest.raises(HeaderError):
        decode_header(buf, 4)
