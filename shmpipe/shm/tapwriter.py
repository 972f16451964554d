"""TapWriter: the publisher's side of the preview tap (``shmpipe.shm.preview``).

``TapWriter.create`` makes the tap's shared memory before the supervisor forks, so the
publisher writes and every other child reads the same region (as a ``PreviewTap``, which this
class extends with the writing). The writer never waits for a reader.

Writer API (the publisher)
--------------------------
``bind_results(result_view, offsets)`` once, ``note(stream, message_id, slot, parts_layout,
version)`` per published frame (``version``: the parameter version the frame was processed
with, 0 by default), then ``commit(result, part_view)`` once per sink commit, before the
slots are freed.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.shm.preview import (
    FALLBACK_S,
    M_MSG_ID,
    M_PARTS_LEN,
    M_STREAM,
    M_T_NS,
    M_VERSION,
    MAGIC,
    W_ACK,
    W_COMMITS,
    W_COPIES,
    W_COPY_NS,
    W_DESC_LEN,
    W_HOLD,
    W_LATEST_GEN,
    W_MAGIC,
    W_RAW_ACK,
    W_RAW_GEN,
    W_RAW_WANTED,
    W_STREAMS,
    W_WAITS,
    PreviewTap,
)
from shmpipe.shm.taplayout import (
    DESCRIPTOR_AT,
    DESCRIPTOR_BYTES,
    MAX_STREAM_NAMES,
    RAW_LAYOUT_BYTES,
    STREAM_NAME_BYTES,
    tap_layout,
)


class TapWriter(PreviewTap):
    """The preview tap as the publisher writes it (and any forked child reads it)."""

    def __init__(self, buf: mmap.mmap, fd: int | None) -> None:
        super().__init__(buf, fd, writable=True)
        self._pending: list[tuple[int, int, int, int]] = []  # (stream no, id, slot, version)
        self._last_parts: Any = None
        self._stream_no: dict[str, int] = {}
        self._last_full = 0.0
        self._min_interval = 1.0 / self.max_hz if self.max_hz > 0 else float("inf")
        self._due = 0.0  # monotonic time from which the next copy may go (see ``_schedule``)
        # The generations of the last big copy (latest block, raw block; 0: none big): a
        # reader acknowledging either lets the next big copy go.
        self._untaken = (0, 0)
        self._slot_views: dict[str, np.ndarray] | None = None

    @classmethod
    def create(
        cls,
        outputs: Sequence[ArraySpec],
        parts: Sequence[ArraySpec] | None,
        run: dict[str, Any],
        max_hz: float = 10.0,
        history: int = 100_000,
        fallback_s: float = FALLBACK_S,
    ) -> TapWriter:
        """Make the tap's shared memory (a nameless memfd, inherited by forked children).

        Parameters
        ----------
        outputs : sequence of ArraySpec
            The chain's outputs with qualified names (``ChainLayout.specs()``).
        parts : sequence of ArraySpec or None
            The raw parts' layout as the source declares it; None: raw frames are not kept.
        run : dict
            The run's identity (name, pid, chain, config ...), JSON-serialisable.
        max_hz : float
            Most copies of the full outputs and the raw frame per second (on average).
        history : int
            Rows of the history ring.
        fallback_s : float
            Longest wait for a reader to take a big copy before the next one is made.
        """
        if history < 1:
            raise ValueError("history must be at least 1")
        settings = {"max_hz": max_hz, "fallback_s": fallback_s}
        descriptor, total = tap_layout(outputs, parts, run, settings, history)
        raw_desc = json.dumps(descriptor).encode()
        if len(raw_desc) > DESCRIPTOR_BYTES:
            raise ValueError("the chain declares too many outputs for the preview descriptor")
        fd = os.memfd_create("shmpipe-preview", os.MFD_CLOEXEC)
        try:
            os.posix_fallocate(fd, 0, total)
        except OSError as exc:
            os.close(fd)
            raise MemoryError(
                f"cannot reserve {total / 2**20:.0f} MiB of shared memory for the preview tap "
                f"({exc.strerror}); lower view.history"
            ) from exc
        buf = mmap.mmap(fd, total, mmap.MAP_SHARED)
        buf[DESCRIPTOR_AT : DESCRIPTOR_AT + len(raw_desc)] = raw_desc
        words = np.ndarray((64,), "<i8", buffer=buf)
        words[W_DESC_LEN] = len(raw_desc)
        words[W_MAGIC] = MAGIC
        del words
        return cls(buf, fd)

    def bind_results(
        self, result_view: Callable[[int, str, tuple[int, ...]], np.ndarray], offsets: dict
    ) -> None:
        """Give the writer strided views of every small output over all result slots.

        ``result_view(offset, dtype, shape)`` returns an array indexed ``[slot, *shape]``;
        ``offsets`` maps each qualified output name to its offset in a result slot.
        """
        self._slot_views = {
            name: result_view(offsets[name], self._specs[name].dtype, self._specs[name].shape)
            for name in self.small
        }

    def note(
        self, stream: str, message_id: int, slot: int, parts_layout: Any, version: int = 0
    ) -> None:
        """Remember one published frame (cheap: an append); ``commit`` writes it."""
        no = self._stream_no.get(stream)
        if no is None:
            no = self._new_stream(stream)
        self._pending.append((no, message_id, slot, version))
        self._last_parts = parts_layout

    def commit(
        self,
        result: Callable[[int, str], np.ndarray],
        part_view: Callable[[int, int, str, tuple[int, ...]], np.ndarray],
    ) -> None:
        """Write the noted frames: history rows for all, the full outputs and raw parts of
        the last one when ``max_hz`` allows. Call before the slots are freed.

        ``result(slot, name)`` is the output view of a slot; ``part_view(slot, offset,
        dtype, shape)`` a part's view of an input slot.
        """
        pending = self._pending
        if not pending:
            return
        w = self.words
        now_ns = time.time_ns()
        self.ring.write(pending, now_ns, self._slot_views)
        mono = time.monotonic()
        # While a reader reads the latest block in place (``apply``) the writer skips its
        # copies rather than overwrite what is being read: it saves the copy, never waits,
        # and writes the frame of the next commit once the reader is done.
        if mono >= self._due and int(w[W_HOLD]) < now_ns:
            if self._may_copy(now_ns, mono - self._last_full):
                self._schedule(mono)
                no, mid, slot, version = pending[-1]
                t0 = time.perf_counter_ns()
                big = self._write_latest(no, mid, slot, version, now_ns, result)
                raw = self._write_raw(no, mid, slot, version, now_ns, part_view)
                self._untaken = (
                    int(w[W_LATEST_GEN]) if big else 0,
                    int(w[W_RAW_GEN]) if raw and self._raw_big else 0,
                )
                w[W_COPY_NS] += time.perf_counter_ns() - t0
                w[W_COPIES] += 1
            else:
                w[W_WAITS] += 1
        w[W_COMMITS] += 1
        pending.clear()

    def _schedule(self, mono: float) -> None:
        """Set when the next copy may go: one period after this one's due time, so that a
        frame rate equal to ``max_hz`` (a 10 Hz source), whose commits come a little early
        or late, is copied every frame rather than every other; never sooner than half a
        period from now. On average at most ``max_hz`` copies a second."""
        self._last_full = mono
        period = self._min_interval
        self._due = max(self._due + period, mono + period / 2)

    def _may_copy(self, now_ns: int, since_s: float) -> bool:
        """Whether a copy may go now: the last big one was taken by a reader, or is
        ``fallback_s`` old, or this one would not be big (small outputs only)."""
        latest, raw = self._untaken
        if not (latest or raw) or since_s >= self.fallback_s:
            return True
        w = self.words
        if (latest and int(w[W_ACK]) >= latest) or (raw and int(w[W_RAW_ACK]) >= raw):
            return True
        raw_wanted = self._raw_big and int(w[W_RAW_WANTED]) > now_ns
        return not (raw_wanted or bool(np.any(self._big & (self._wanted > now_ns))))

    def _new_stream(self, stream: str) -> int:
        no = int(self.words[W_STREAMS])
        self.words[W_STREAMS] = no + 1
        if len(self._stream_no) >= MAX_STREAM_NAMES:
            self._stream_no.clear()  # a run of very many short streams: forget old numbers
        self._stream_no[stream] = no
        row = self._names[no % MAX_STREAM_NAMES]
        raw = stream.encode()[:STREAM_NAME_BYTES]
        row[0] = -1  # invalid while the name changes
        row.view("u1")[8:].fill(0)
        row.view("u1")[8 : 8 + len(raw)] = np.frombuffer(raw, "u1")
        row[0] = no
        return no

    def _write_latest(self, no, mid, slot, version, now_ns, result) -> bool:
        """Write the latest block; whether it carried a big output."""
        meta, w = self._latest_meta, self.words
        copy = self._always | (self._wanted > now_ns)
        done = int(w[W_LATEST_GEN]) + 2  # the generation once this write is complete
        w[W_LATEST_GEN] += 1  # odd: being written
        for i, (name, dst) in enumerate(self._latest.items()):
            if copy[i]:
                dst[...] = result(slot, name)
                self._out_gen[i] = done
        meta[M_STREAM], meta[M_MSG_ID], meta[M_T_NS], meta[M_VERSION] = no, mid, now_ns, version
        w[W_LATEST_GEN] += 1
        return bool(np.any(copy & self._big))

    def _write_raw(self, no, mid, slot, version, now_ns, part_view) -> bool:
        """Write the raw block if a reader wants it; whether it did."""
        layout = self._last_parts
        if not layout or not len(self._raw_bytes) or self.words[W_RAW_WANTED] <= now_ns:
            return False
        meta, w = self._raw_meta, self.words
        w[W_RAW_GEN] += 1
        at, kept = 0, []
        for off, dtype, shape in layout:
            n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if at + n > len(self._raw_bytes):
                break  # larger than declared (a source that changed its layout): keep what fits
            src = part_view(slot, off, dtype, tuple(shape))
            self._raw_bytes[at : at + n] = src.reshape(-1).view("u1")
            kept.append((at, np.dtype(dtype).str, list(shape)))
            at += n
        enc = json.dumps(kept).encode()[:RAW_LAYOUT_BYTES]
        self._raw_layout[: len(enc)] = np.frombuffer(enc, "u1")
        meta[M_STREAM], meta[M_MSG_ID], meta[M_T_NS], meta[M_VERSION] = no, mid, now_ns, version
        meta[M_PARTS_LEN] = len(enc)
        w[W_RAW_GEN] += 1
        return True
