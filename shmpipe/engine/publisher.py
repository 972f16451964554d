"""Publisher: hands finished slots to the sinks, commits, then acknowledges and frees them.

Acknowledgement follows commit (at-least-once, as Kafka's commit-after-process): a crash
between the two redelivers messages whose results may already be stored, which the idempotent
sinks ignore. In ordered mode results leave in dispatch order; the reorder window is the ring
itself, since every slot stays held until it is published. An error record (or a quarantined
frame) is published in its place like any result, so one bad frame never stalls the ones
behind it.
"""

from __future__ import annotations

import heapq
import logging
import time

import numpy as np

from shmpipe.api.sink import ErrorRecord, Record
from shmpipe.child.plumbing import Plumbing, now_ns
from shmpipe.child.roles import run_role
from shmpipe.engine.protocol import read_error, release, take_for_publishing
from shmpipe.engine.recovery import publish_point
from shmpipe.reduce.stage import ReduceStage
from shmpipe.shm.channel import END, FREED, READY
from shmpipe.shm.layout import (
    ATTEMPT,
    CONTROL,
    ERROR,
    FLAGS,
    HEADER_LEN,
    P_END_SEQ,
    P_ERRORS,
    P_FRAMES,
    P_MSG_ID,
    P_READY_NS,
    P_RELEASED_SEQ,
    P_STATE,
    PARAMS_VERSION,
    PROC_DISPATCHER,
    PROC_PUBLISHER,
    PS_BUSY,
    PS_IDLE,
    QUARANTINED,
    SEQ,
    STREAM_ROW,
    T_FILL,
    TICKET,
)
from shmpipe.shm.slotio import decode_header


class FailFast(Exception):
    """A frame failed and the configuration says to stop (``run.on_error = "fail"``)."""


class Publisher:
    def __init__(self, p: Plumbing, log: logging.Logger, replacement: bool = False) -> None:
        self.p, self.log = p, log
        self.ring = p.ring
        self.procs = p.ring.procs[PROC_PUBLISHER]
        self.sinks = p.config.sink_instances()
        self.ordered = p.config.run.ordered
        self.fail_fast = p.config.run.on_error == "fail"
        self.ready: list[tuple[int, int]] = []  # heap of (seq, slot) done but not yet published
        self.next_seq = 1  # ordered mode: the next sequence number to publish
        self.published: set[int] = set()  # unordered mode: seqs published beyond the watermark
        self.watermark = 0  # every seq <= watermark is published
        self.held_controls: list[tuple[int, int]] = []
        self.total: int | None = None
        self.uncommitted: list[tuple[str, int, int, bool]] = []  # (stream, id, slot, ack)
        self.first_uncommitted = 0.0
        self.fatal: str | None = None
        self.out_specs = p.layout.outputs
        self._views: dict[int, dict] = {}  # result views per slot, made once
        self._headers = p.ring.headers()
        # Counted here, written to the shared tables at each commit: a handful of table
        # increments per record were a tenth of a small message's time in the publisher.
        self.frames = self.errors = self.last_id = 0
        self.latencies: list[int] = []
        self.stream_counts: dict[tuple[int, bool], int] = {}
        self.released_seq = int(self.procs[P_RELEASED_SEQ])
        self.replacement = replacement
        self.reduce: ReduceStage | None = None  # made in run(): [reducers.*], if any
        self.tap = p.tap
        if self.tap is not None:
            self.tap.bind_results(
                self._across_slots, {o.qualified: o.offset for o in self.out_specs}
            )

    def _take_over(self) -> None:
        """A replacement: continue from what the slot table and the process table say."""
        ring, procs = self.ring, self.procs
        self.frames, self.errors = int(procs[P_FRAMES]), int(procs[P_ERRORS])
        point = publish_point(ring)
        self.next_seq, self.watermark = point.next_seq, point.watermark
        self.published = point.published
        end = int(ring.procs[PROC_DISPATCHER, P_END_SEQ])
        if end:
            self.total = end - 1  # the END record may have gone to the dead publisher
        table = ring.table
        for slot in point.done:
            row = table[slot]
            if take_for_publishing(row, int(row[TICKET])):
                heapq.heappush(self.ready, (int(row[SEQ]), slot))
        # The dead one may have freed slots without telling the dispatcher, which checks a
        # FREED record against the table and ignores one for a slot it already has.
        self.p.dispatcher_inbox.send_many([(FREED, s, 0, 0) for s in point.free])
        self.log.warning(
            "publisher replaced: resuming at sequence %d, %d results to publish again or anew",
            self.watermark + 1,
            len(point.done),
        )

    # -- intake ------------------------------------------------------------------------
    def take(self, records) -> None:
        table = self.ring.table
        for kind, slot, ticket, arg in records.tolist():
            if kind == END:
                self.total = arg
            elif kind == READY:
                row = table[slot]
                if not take_for_publishing(row, ticket):
                    continue  # a duplicate READY (recovery re-sent it); already taken
                heapq.heappush(self.ready, (int(row[SEQ]), slot))

    # -- publishing --------------------------------------------------------------------
    def publish_ready(self) -> None:
        while self.ready and not self.fatal:
            seq, slot = self.ready[0]
            if self.ordered and seq != self.next_seq:
                break
            heapq.heappop(self.ready)
            if (
                self.ring.table[slot, FLAGS] & CONTROL
                and not self.ordered
                and seq > self.watermark + 1
            ):
                # A stream-finished marker waits for every frame dispatched before it.
                self.held_controls.append((seq, slot))
                continue
            self._publish(seq, slot)
        if not self.ordered:
            self._release_controls()

    def _advance(self, seq: int) -> None:
        if self.ordered:
            self.next_seq = seq + 1
            self.watermark = seq
            return
        self.published.add(seq)
        while self.watermark + 1 in self.published:
            self.watermark += 1
            self.published.discard(self.watermark)

    def _release_controls(self) -> None:
        self.held_controls.sort()
        while self.held_controls and self.held_controls[0][0] == self.watermark + 1:
            seq, slot = self.held_controls.pop(0)
            self._publish(seq, slot)

    def _publish(self, seq: int, slot: int) -> None:
        ring, row = self.ring, self.ring.table[slot]
        header = decode_header(self._headers[slot], int(row[HEADER_LEN]))
        flags = int(row[FLAGS])
        stream, mid, name = header.stream, header.message_id, header.name
        if flags & CONTROL:
            if self.reduce is not None:
                self.reduce.stream_finished(stream)
            for s in self.sinks:
                s.stream_finished(stream, header.next_stream, header.last_id)
            self._queue(stream, mid, slot, ack=False)
        elif flags & ERROR:
            err = read_error(ring, slot)
            record = ErrorRecord(
                stream=stream,
                message_id=mid,
                name=name,
                kernel=err.get("kernel", ""),
                error=err.get("error", ""),
                traceback=err.get("traceback", ""),
                quarantined=bool(flags & QUARANTINED),
                attempt=int(row[ATTEMPT]),
            )
            if record.quarantined and self.acknowledger.retry_elsewhere(stream, mid):
                # The source took it back (an ASAPO negative acknowledgement): the frame
                # killed workers here, which may be this node's fault; it comes back later,
                # possibly to another node, and is only recorded as an error on its last try.
                self.log.warning(
                    "stream %r message %d quarantined here; handed back to the source for "
                    "another try",
                    stream,
                    mid,
                    extra={"stream": stream, "message_id": mid},
                )
                self._queue(stream, mid, slot, ack=False)
                self._advance(seq)
                return
            for s in self.sinks:
                s.write_error(record)
            if self.reduce is not None:
                self.reduce.skip(stream, mid)
            self.errors += 1
            self._count_stream(int(row[STREAM_ROW]), error=True)
            where = f"stream {stream!r} message {mid}"
            self.log.error(
                "%s failed in kernel %s: %s",
                where,
                record.kernel,
                record.error,
                extra={"stream": stream, "message_id": mid},
            )
            if self.fail_fast:
                self.fatal = (
                    f"{where} ({name}) failed in kernel {record.kernel!r}: "
                    f"{record.error}\n{record.traceback}".rstrip()
                )
                self._queue(stream, mid, slot, ack=False)
            else:
                self._queue(stream, mid, slot, ack=True)
        else:
            arrays = self._views.get(slot)
            if arrays is None:
                arrays = self._views[slot] = {
                    o.qualified: ring.result(slot, o.offset, o.spec.dtype, o.spec.shape)
                    for o in self.out_specs
                }
            record = Record(
                stream=stream,
                message_id=mid,
                name=name,
                meta=header.meta,
                arrays=arrays,
                timestamp=header.timestamp,
                attempt=int(row[ATTEMPT]),
                lineage={"input_ids": [mid], "input_names": [name]},
            )
            for s in self.sinks:
                s.write(record)
            if self.reduce is not None:
                self.reduce.add(record)
            self.latencies.append(now_ns() - int(row[T_FILL]))
            self.frames += 1
            self._count_stream(int(row[STREAM_ROW]), error=False)
            self.last_id = mid
            if self.tap is not None:
                self.tap.note(stream, mid, slot, header.parts, int(row[PARAMS_VERSION]))
            self._queue(stream, mid, slot, ack=True)
        self._advance(seq)

    def _count_stream(self, row: int, error: bool) -> None:
        key = (row, error)
        self.stream_counts[key] = self.stream_counts.get(key, 0) + 1

    def report(self) -> None:
        """Write what was counted since the last report to the shared tables."""
        procs = self.procs
        procs[P_FRAMES] = self.frames
        procs[P_ERRORS] = self.errors
        procs[P_MSG_ID] = self.last_id
        self.ring.timings.add_latencies(self.latencies)
        self.latencies.clear()
        for (row, error), n in self.stream_counts.items():
            self.ring.streams.count_out(row, error, n)
        self.stream_counts.clear()

    def _queue(self, stream: str, mid: int, slot: int, ack: bool) -> None:
        if not self.uncommitted:
            self.first_uncommitted = time.monotonic()
        self.uncommitted.append((stream, mid, slot, ack))

    # -- commit, acknowledge, free -----------------------------------------------------
    def commit(self) -> None:
        if not self.uncommitted:
            return
        for s in self.sinks:
            s.commit()
        if self.reduce is not None:
            # After the sinks (the windows written are in their commit), before the acks.
            self.reduce.commit()
        if self.tap is not None:
            # Before the slots are freed: the tap copies from them.
            self.tap.commit(self._output_view, self.ring.part_view)
        table, freed = self.ring.table, []
        for stream, mid, _, ack in self.uncommitted:
            if ack:
                self.acknowledger.ack(stream, mid)
        # Counted and marked before the rows are freed: a replacement publisher knows every
        # sequence number up to RELEASED_SEQ that is not in the ring is out.
        self.report()
        self.released_seq = max(
            self.released_seq, max(int(table[slot, SEQ]) for _, _, slot, _ in self.uncommitted)
        )
        self.procs[P_RELEASED_SEQ] = self.released_seq
        for _, _, slot, _ in self.uncommitted:
            release(table[slot])
            freed.append((FREED, slot, 0, 0))
        self.p.dispatcher_inbox.send_many(freed)
        self.uncommitted.clear()

    def _output_view(self, slot: int, name: str):
        return self._views[slot][name]

    def _across_slots(self, offset: int, dtype: str, shape: tuple[int, ...]):
        """One output of every result slot as an array indexed ``[slot, ...]``."""
        stride = self.ring.geometry.result_stride
        inner = np.empty(shape, dtype).strides
        return np.ndarray(
            (self.ring.geometry.slots, *shape),
            dtype,
            buffer=self.ring.results.map,
            offset=offset,
            strides=(stride, *inner),
        )

    def due(self, idle: bool) -> bool:
        if not self.uncommitted:
            return False
        run = self.p.config.run
        # Commit when the pipe is momentarily empty (low latency at low rates), after a
        # batch (throughput at high rates), or when half the ring waits on us.
        return (
            idle
            or len(self.uncommitted) >= min(run.commit_every, max(1, self.ring.geometry.slots // 2))
            or time.monotonic() - self.first_uncommitted >= run.commit_interval_s
        )

    def finished(self) -> bool:
        return self.total is not None and self.watermark >= self.total

    def run(self) -> None:
        p = self.p
        self.acknowledger = p.source.acknowledger()
        for s in self.sinks:
            s.open(p.run_info)
        self.reduce = ReduceStage.create(p.config, p.run_info, self.sinks, self.log)
        if self.replacement:
            self._take_over()
        self.procs[P_READY_NS] = now_ns()
        try:
            while not self.finished() and not self.fatal:
                records = p.done.recv(timeout=0 if self.uncommitted else 1.0)
                self.procs[P_STATE] = PS_BUSY if len(records) else PS_IDLE
                self.take(records)
                self.publish_ready()
                if self.due(idle=len(records) == 0):
                    self.commit()
            self.commit()
        finally:
            self.report()
            for s in self.sinks:
                s.close()
            self.acknowledger.close()
        if self.fatal:
            raise FailFast(self.fatal)


def publisher_main(p: Plumbing, replacement: bool = False) -> None:
    """The publisher process; ``replacement``: the previous one died (``engine.recovery``)."""
    run_role(
        p,
        PROC_PUBLISHER,
        "publisher",
        "publisher",
        lambda log: Publisher(p, log, replacement).run(),
        fatal_errors=(FailFast,),
    )
