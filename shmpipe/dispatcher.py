"""Dispatcher: pulls messages from the source into FREE slots and hands them to workers.

Each payload is copied exactly once, into its slot; every later stage reads it in place. When
no slot is FREE the dispatcher stops pulling: the ring is the backpressure, and the source (an
ASAPO broker) keeps the data upstream. Messages that cannot become frames (too large for a
slot, rejected by the source) and stream-finished markers skip the workers and go straight to
the publisher, in order with the frames around them.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections import deque

import numpy as np

from shmpipe.channel import DONE, END, FREE, STOP
from shmpipe.message import (
    HeaderTooLarge,
    Message,
    StreamFinished,
    copy_parts,
    encode_header,
    layout_mismatch,
)
from shmpipe.plumbing import EXIT_CONFIG, EXIT_FATAL, Plumbing, become_child, now_ns, write_error
from shmpipe.ring import (
    ATTEMPT,
    CONTROL,
    ERROR,
    ERROR_LEN,
    FILLED,
    FILLING,
    FLAGS,
    HEADER_LEN,
    MSG_ID,
    OWNER,
    P_BYTES,
    P_FRAMES,
    P_MSG_ID,
    P_PID,
    P_READY_NS,
    P_STARTED_NS,
    P_STATE,
    PAYLOAD_LEN,
    PROC_DISPATCHER,
    PS_BUSY,
    PS_IDLE,
    SEQ,
    STATE,
    STREAM_ROW,
    T_FILL,
    TICKET,
)
from shmpipe.ring import DONE as S_DONE
from shmpipe.source import EndOfSource, SourceConfigError

STREAM_MIN_BYTES = 65536  # smaller parts: numpy copies them faster than a Numba call
POLL_EVERY = 16  # messages between looks at the inbox while FREE slots remain


class Dispatcher:
    """The dispatcher's state and loop (runs in its own process)."""

    def __init__(self, p: Plumbing) -> None:
        self.p = p
        self.ring = p.ring
        self.free: deque[int] = deque(range(p.ring.geometry.slots))
        self.seq = 0
        self.stopping = False
        self.stream_copy = None  # set by a background thread once the streaming copy loads
        threading.Thread(target=self._load_stream_copy, daemon=True).start()

    def _load_stream_copy(self) -> None:
        try:
            from shmpipe.streamcopy import stream_copy, warm

            warm()
        except Exception:  # noqa: BLE001 - no Numba, another CPU: numpy copies then
            return
        self.stream_copy = stream_copy

    def _copy(self, item: Message, payload: np.ndarray) -> None:
        """Copy the parts into the slot: streaming stores once loaded, numpy until then."""
        copy_parts(item, payload, self.stream_copy, STREAM_MIN_BYTES)

    def _poll_inbox(self, timeout: float) -> None:
        for kind, slot, _, _ in self.p.dispatcher_inbox.recv(timeout).tolist():
            if kind == FREE:
                self.free.append(slot)
            elif kind == STOP:
                self.stopping = True

    def _begin(self, slot: int) -> None:
        row = self.ring.table[slot]
        self.seq += 1
        row[STATE] = FILLING
        row[SEQ] = self.seq
        row[ATTEMPT] = 0
        row[FLAGS] = 0
        row[ERROR_LEN] = 0
        row[OWNER] = -1
        row[T_FILL] = now_ns()

    def _straight_to_publisher(self, slot: int) -> None:
        row = self.ring.table[slot]
        ticket = int(row[TICKET]) + 1
        row[TICKET] = ticket
        row[STATE] = S_DONE
        self.p.done.send(DONE, slot, ticket)

    def _fill(self, slot: int, item: Message | StreamFinished) -> None:
        ring, row = self.ring, self.ring.table[slot]
        self._begin(slot)
        # Per-stream counters for metrics: one dict lookup and two increments (shmpipe.streams).
        row[STREAM_ROW] = (
            ring.streams.count_in(item.stream, item.nbytes) if isinstance(item, Message) else -1
        )
        header = ring.header(slot)
        if isinstance(item, StreamFinished):
            control = Message(stream=item.stream, message_id=0, name="")
            row[HEADER_LEN] = encode_header(
                control,
                header,
                {
                    "control": "stream_finished",
                    "next_stream": item.next_stream,
                    "last_id": item.last_id,
                },
            )
            row[FLAGS] = CONTROL
            row[MSG_ID] = 0
            self._straight_to_publisher(slot)
            return
        row[MSG_ID] = item.message_id
        error = item.error
        nbytes = item.nbytes
        if error is None:
            mismatch = layout_mismatch(item.parts, self.p.parts)
            if mismatch is not None:
                error = f"wrong payload: {mismatch}"
        if error is None and nbytes > ring.geometry.payload_bytes:
            error = (
                f"payload of {nbytes} bytes does not fit a slot of {ring.geometry.payload_bytes} "
                "bytes (ring.slot_bytes)"
            )
        try:
            if error is not None:
                item = Message(
                    item.stream,
                    item.message_id,
                    item.name,
                    [],
                    item.meta,
                    item.scan,
                    item.timestamp,
                    error,
                )
            row[HEADER_LEN] = encode_header(item, header)
        except HeaderTooLarge as exc:
            error = str(exc)
            row[HEADER_LEN] = encode_header(
                Message(item.stream, item.message_id, item.name, error=error), header
            )
        if error is None:
            try:
                self._copy(item, ring.payload(slot))
            except Exception as exc:  # noqa: BLE001 - a part that cannot be read is its frame's error
                error = f"reading the payload failed: {type(exc).__name__}: {exc}"
        if error is not None:
            row[ERROR_LEN] = write_error(
                ring, slot, {"kernel": "source", "error": error, "traceback": ""}
            )
            row[FLAGS] = ERROR
            row[PAYLOAD_LEN] = 0
            self._straight_to_publisher(slot)
            return
        row[PAYLOAD_LEN] = nbytes
        row[STATE] = FILLED
        seat = ring.least_loaded_seat(self.p.workers)
        ring.assign(slot, seat, self.p.seats[seat])

    def run(self) -> None:
        p, procs = self.p, self.ring.procs[PROC_DISPATCHER]
        source = p.source
        source.open()
        procs[P_READY_NS] = now_ns()
        skipped = POLL_EVERY
        try:
            while True:
                # With slots to spare and messages flowing, look at the inbox only every
                # POLL_EVERY messages: a poll (and reading one FREE record at a time) per
                # message cost small messages about a third of the dispatcher's time.
                if len(self.free) < 2 or skipped >= POLL_EVERY:
                    skipped = 0
                    self._poll_inbox(0 if self.free else 0.2)
                if self.stopping:
                    break
                if not self.free:
                    procs[P_STATE] = PS_IDLE
                    continue
                procs[P_STATE] = PS_BUSY
                try:
                    item = source.next(timeout=0.2)
                except EndOfSource:
                    break
                if item is None:
                    skipped = POLL_EVERY  # the source is idle: time to look at the inbox
                    continue
                skipped += 1
                slot = self.free.popleft()
                self._fill(slot, item)
                if isinstance(item, Message):
                    procs[P_FRAMES] += 1
                    procs[P_BYTES] += item.nbytes
                    procs[P_MSG_ID] = item.message_id
        finally:
            # END tells the publisher how many sequence numbers exist, so it knows when it
            # has published everything; sent even on the way out of an exception.
            p.done.send(END, 0, 0, self.seq)
            source.close()
        procs[P_STATE] = PS_IDLE


def dispatcher_main(p: Plumbing) -> None:
    log = become_child("dispatcher")
    procs = p.ring.procs[PROC_DISPATCHER]
    procs[P_PID] = os.getpid()
    procs[P_STARTED_NS] = now_ns()
    try:
        Dispatcher(p).run()
    except SourceConfigError as exc:
        log.error("source: %s", exc)
        p.ring.set_note(PROC_DISPATCHER, f"source: {exc}")
        os._exit(EXIT_CONFIG)
    except Exception as exc:  # noqa: BLE001 - the supervisor stops the run with this note
        log.error("dispatcher failed: %s", exc)
        p.ring.set_note(
            PROC_DISPATCHER, f"dispatcher: {type(exc).__name__}: {exc}\n" + traceback.format_exc()
        )
        os._exit(EXIT_FATAL)
