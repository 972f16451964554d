"""Dispatcher: pulls messages from the source into FREE slots and hands them to workers.

Each payload is copied exactly once, into its slot; every later stage reads it in place. When
no slot is FREE the dispatcher stops pulling: the ring is the backpressure, and the source (an
ASAPO broker) keeps the data upstream. Messages that cannot become frames (too large for a
slot, rejected by the source) and stream-finished markers skip the workers and go straight to
the publisher, in order with the frames around them.
"""

from __future__ import annotations

import threading
from collections import deque

from shmpipe.api.message import (
    Message,
    PartLayout,
    StreamFinished,
    layout_mismatch,
    part_layout,
)
from shmpipe.api.source import EndOfSource, SourceConfigError
from shmpipe.child.plumbing import (
    Plumbing,
    now_ns,
)
from shmpipe.child.roles import run_role
from shmpipe.engine import protocol
from shmpipe.engine.scheduler import Scheduler
from shmpipe.shm.channel import END, FREED, READY, STOP
from shmpipe.shm.layout import (
    CONTROL,
    FLAGS,
    FREE,
    HEADER_LEN,
    MSG_ID,
    P_BYTES,
    P_END_SEQ,
    P_FRAMES,
    P_HANDOVERS,
    P_MSG_ID,
    P_READY_NS,
    P_STATE,
    PAYLOAD_LEN,
    PROC_DISPATCHER,
    PS_BUSY,
    PS_IDLE,
    STATE,
    STREAM_ROW,
    T_FILL,
)
from shmpipe.shm.slotio import UnstorableHeader, copy_parts, encode_header

STREAM_MIN_BYTES = 65536  # smaller parts: numpy copies them faster than a Numba call
POLL_EVERY = 16  # messages between looks at the inbox while FREE slots remain
MAX_BATCH = 32  # filled slots handed to the workers in one go, at most
FLUSH_AFTER_NS = 500_000  # ... and never held back longer than this


class Dispatcher:
    """The dispatcher's state and loop (runs in its own process)."""

    def __init__(self, p: Plumbing, resume_at: int | None = None) -> None:
        self.p = p
        self.ring = p.ring
        self.procs = p.ring.procs[PROC_DISPATCHER]
        self.resume_at = resume_at
        if resume_at is None:
            self.free: deque[int] = deque(range(p.ring.geometry.slots))
        else:
            # A replacement: the table says which slots are free; FREED records still in the
            # inbox (or re-sent by a replacement publisher) are checked against it.
            state = p.ring.table[:, STATE]
            self.free = deque(int(s) for s in (state == FREE).nonzero()[0])
        self._free_set = set(self.free)
        self._headers = p.ring.headers()
        self._payloads = [p.ring.payload(s) for s in range(p.ring.geometry.slots)]
        self._flat = [a.data.cast("B") for a in self._payloads]
        # Counted here and written to the process table at each hand-over and inbox poll:
        # three table stores per message were a tenth of a small message's time.
        self.frames = self.bytes = self.last_id = 0
        if resume_at is not None:
            # The stream table counts each message as it is read (the process row only at
            # each report): the frames in so far, and the rows of the streams already seen.
            self.frames = p.ring.streams.adopt()
            self.bytes = int(self.procs[P_BYTES])
        self._mismatches: dict[tuple, str | None] = {}
        self.seq = resume_at or 0
        self.scheduler = Scheduler(p.ring)
        self.stopping = False
        # Filled slots not yet handed to a worker. Small messages are handed over in batches
        # (one pipe write per seat, not per message: the write and the wake-up it causes were
        # a third of the dispatcher's time); a slot is held at most FLUSH_AFTER_NS, the
        # source's waits included, so large frames and slow streams go out one by one at once.
        self.pending: list[int] = []
        self.pending_since = 0
        slots, workers = p.ring.geometry.slots, p.workers
        self.batch = max(1, min(MAX_BATCH, slots // (4 * workers) * workers))
        if not p.source.bounded_wait:
            self.batch = 1
        self.stream_copy = None  # set by a background thread once the streaming copy loads
        threading.Thread(target=self._load_stream_copy, daemon=True).start()

    def _load_stream_copy(self) -> None:
        try:
            from shmpipe.shm.streamcopy import stream_copy, warm

            warm()
        except Exception:  # noqa: BLE001 - no Numba, another CPU: numpy copies then
            return
        self.stream_copy = stream_copy

    def _copy(self, item: Message, slot: int) -> None:
        """Copy the parts into the slot: streaming stores once loaded, numpy until then."""
        copy_parts(item, self._payloads[slot], self.stream_copy, STREAM_MIN_BYTES, self._flat[slot])

    def _poll_inbox(self, timeout: float) -> None:
        state = self.ring.table[:, STATE]
        for kind, slot, _, _ in self.p.dispatcher_inbox.recv(timeout).tolist():
            if kind == FREED:
                # A record is a wake-up, the table the truth: after a replacement a slot can
                # be announced twice (an old record, and the table or a re-sent one).
                if slot not in self._free_set and state[slot] == FREE:
                    self._free_set.add(slot)
                    self.free.append(slot)
            elif kind == STOP:
                self.stopping = True

    def _straight_to_publisher(self, slot: int) -> None:
        self.p.done.send(READY, slot, protocol.skip_to_done(self.ring.table[slot]))

    def _mismatch(self, layout: PartLayout, parts: list) -> str | None:
        """Why a part layout differs from the declared one, worked out once per layout."""
        try:
            return self._mismatches[layout.key]
        except KeyError:
            mismatch = layout_mismatch(parts, self.p.parts)
            if len(self._mismatches) < 1024:
                self._mismatches[layout.key] = mismatch
            return mismatch

    def _fill(self, slot: int, item: Message | StreamFinished) -> int:
        """Fill ``slot`` with ``item``; return the payload bytes copied."""
        ring, row = self.ring, self.ring.table[slot]
        self.seq += 1
        protocol.begin_fill(row, self.seq, now_ns())
        header = self._headers[slot]
        if isinstance(item, StreamFinished):
            row[STREAM_ROW] = -1
            control = Message(stream=item.stream, message_id=0, name="")
            row[HEADER_LEN] = encode_header(control, header, finished=item)
            row[FLAGS] = CONTROL
            row[MSG_ID] = 0
            self._straight_to_publisher(slot)
            return 0
        layout = part_layout(item.parts)
        nbytes = layout.nbytes
        # Per-stream counters for metrics: one dict lookup and two increments (shmpipe.streams).
        row[STREAM_ROW] = ring.streams.count_in(item.stream, nbytes)
        row[MSG_ID] = item.message_id
        error = item.error
        if error is None:
            mismatch = self._mismatch(layout, item.parts)
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
            row[HEADER_LEN] = encode_header(item, header, layout=layout)
        except UnstorableHeader as exc:
            error = str(exc)
            row[HEADER_LEN] = encode_header(
                Message(item.stream, item.message_id, item.name, error=error), header
            )
        if error is None:
            try:
                self._copy(item, slot)
            except Exception as exc:  # noqa: BLE001 - a part that cannot be read is its frame's error
                error = f"reading the payload failed: {type(exc).__name__}: {exc}"
        if error is not None:
            protocol.record_error(ring, slot, "source", error)
            row[PAYLOAD_LEN] = 0
            self._straight_to_publisher(slot)
            return 0
        protocol.mark_filled(row, nbytes)
        if not self.pending:
            self.pending_since = int(row[T_FILL])
        self.pending.append(slot)
        return nbytes

    def _flush(self) -> None:
        """Hand the filled slots to the workers."""
        if self.pending:
            self.scheduler.assign_many(self.pending, self.p.seats)
            self.pending = []
            self.procs[P_HANDOVERS] += 1
        self._report()

    def _report(self) -> None:
        procs = self.procs
        procs[P_FRAMES] = self.frames
        procs[P_BYTES] = self.bytes
        procs[P_MSG_ID] = self.last_id

    def run(self) -> None:
        p, procs = self.p, self.ring.procs[PROC_DISPATCHER]
        source = p.source
        source.open()
        if self.resume_at is not None:
            source.resume(self.resume_at)
        procs[P_READY_NS] = now_ns()
        skipped = POLL_EVERY
        try:
            while True:
                # With slots to spare and messages flowing, look at the inbox only every
                # POLL_EVERY messages: a poll (and reading one FREED record at a time) per
                # message cost small messages about a third of the dispatcher's time.
                if len(self.free) < 2 or skipped >= POLL_EVERY:
                    skipped = 0
                    self._report()
                    if not self.free:
                        self._flush()  # before waiting for a slot: the workers may need these
                    self._poll_inbox(0 if self.free else 0.2)
                if self.stopping:
                    break
                if not self.free:
                    procs[P_STATE] = PS_IDLE
                    continue
                if procs[P_STATE] != PS_BUSY:
                    procs[P_STATE] = PS_BUSY
                wait = 0.2
                if self.pending:
                    # Held slots bound the wait: the source may take only what is left of
                    # their FLUSH_AFTER_NS, then they go out whether or not more came.
                    left = FLUSH_AFTER_NS - (now_ns() - self.pending_since)
                    if left > 0:
                        wait = left / 1e9
                    else:
                        self._flush()
                try:
                    item = source.next(timeout=wait)
                except EndOfSource:
                    break
                if item is None:
                    self._flush()  # the source is idle: nothing to wait for
                    skipped = POLL_EVERY  # and time to look at the inbox
                    continue
                skipped += 1
                slot = self.free.popleft()
                self._free_set.discard(slot)
                nbytes = self._fill(slot, item)
                if isinstance(item, Message):
                    self.frames += 1
                    self.bytes += nbytes
                    self.last_id = item.message_id
                if self.pending and (
                    len(self.pending) >= self.batch
                    or now_ns() - self.pending_since >= FLUSH_AFTER_NS
                ):
                    self._flush()
        finally:
            # END tells the publisher how many sequence numbers exist, so it knows when it
            # has published everything; sent even on the way out of an exception.
            self._flush()
            procs[P_END_SEQ] = self.seq + 1  # for a replacement publisher
            p.done.send(END, 0, 0, self.seq)
            source.close()
        procs[P_STATE] = PS_IDLE


def dispatcher_main(p: Plumbing, resume_at: int | None = None) -> None:
    """The dispatcher process; ``resume_at``: a replacement, continuing after that many
    items of the source (``engine.recovery.dispatched_so_far``)."""
    run_role(
        p,
        PROC_DISPATCHER,
        "dispatcher",
        "dispatcher",
        lambda log: Dispatcher(p, resume_at).run(),
        config_errors=(SourceConfigError,),
    )
