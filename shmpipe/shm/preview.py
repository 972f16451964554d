"""PreviewTap: the latest results, a raw frame and a history of small outputs, in shared memory.

The publisher writes the tap after each commit; views, the Tango device and scripts read it,
in the pipeline's own processes or attached to a running pipeline through the run registry
(as ``shmpipe status`` attaches to the tables). A reader never blocks the writer: every block
is guarded by a generation counter (a seqlock) and a reader that lost the race retries or
gives up; the writer never waits for anyone. A reader that reads the latest block in place
(``apply``) holds it for at most ``HOLD_S``: the writer skips its copies meanwhile.

Big copies go at the reader's pace: after a copy of at least ``BIG_BYTES`` (the stitched image,
the raw modules) the writer makes the next one only once a reader has taken that one (read
it, and so acknowledged its generation: ``acknowledge``, which ``latest``, ``apply`` and
``raw`` call), or when it is ``fallback_s`` old (a reader that died, or one that does not
acknowledge, slows the copies down but never stops them). A view that lags, niced on busy
cores, therefore costs the publisher no copies it cannot show.

What the tap holds
------------------
- **latest**: the outputs of one published frame (by qualified name ``kernel.output``) and
  that frame's raw input parts, copied at most ``max_hz`` times a second (on average: two
  copies can be half a period apart, so that frames at that rate are all copied); small outputs
  always, large ones and the raw parts only while a reader wants them (``want``, which
  ``latest``, ``raw`` and ``apply`` call), so an unwatched pipeline pays nothing for them, and
  big ones no faster than a reader takes them (above);
- **history**: for every published frame, the small outputs with stream, message id, publish
  time and a parameter version, for the last ``history`` frames (``shmpipe.shm.history``);
- **descriptor**: the chain's declared outputs (``ArraySpec`` with unit, axis, errors), the
  parts' layout and the run's identity.

Reader API
----------
>>> tap = PreviewTap.attach(run_info)          # or the writer's own object, after a fork
>>> tap.outputs()                               # {name: ArraySpec}
>>> stream, message_id, t, arrays = tap.latest()
>>> raw = tap.raw()                             # RawFrame(stream, message_id, t, parts) or None
>>> h = tap.history("stats.sum", last=1000)     # History: message_id, stream, t, version, values
>>> tap.lookup("stats.sum", "scan1", 42)        # the value stored for one message, or None
>>> tap.want(["stitch.image"], raw=True)        # copy these for the next 5 s
>>> tap.apply("stitch.image", np.max)           # (stream, id, t, fn(array)) read in place
>>> tap.acknowledge(tap.generation())           # taken: the writer may copy the next frame

Writer: ``shmpipe.shm.tapwriter.TapWriter`` (the publisher), a ``PreviewTap`` that also
writes; made by ``TapWriter.create`` before the supervisor forks, so every child reads the
same memory.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.shm.history import History, HistoryRing
from shmpipe.shm.taplayout import (
    DESCRIPTOR_AT,
    MAX_STREAM_NAMES,
    META_WORDS,
    RAW_LAYOUT_BYTES,
    spec_from_dict,
)

MAGIC = 0x5348_5050_5245_5631  # "SHPPREV1"

# Control words (int64) at the start of the region.
W_MAGIC, W_DESC_LEN, W_LATEST_GEN, W_RAW_GEN, W_WRITTEN, W_STREAMS = range(6)
W_COMMITS = 6  # commits seen (a heartbeat: the publisher is alive and publishing)
W_RAW_WANTED = 7  # time.time_ns() until which a reader wants raw frames
W_COPIES, W_COPY_NS = 8, 9  # full copies made (latest block and raw frame) and their time
W_HOLD = 10  # time.time_ns() until which a reader reads the latest block in place
HOLD_S = 1.0  # longest a reader can hold it (one that died reading holds it no longer)
WANT_S = 5.0  # a reader's interest lasts this long after its last read
W_ACK, W_RAW_ACK = 11, 12  # the latest / raw generation a reader has taken (acknowledged)
W_WAITS = 13  # commits at which a copy was due but the last big one was not taken yet
BIG_BYTES = 1 << 20  # a copy at least this big waits for the reader to take the last one
FALLBACK_S = 1.0  # ... or for this long at most
# Words of the latest block and of the raw block: generation-protected metadata.
M_STREAM, M_MSG_ID, M_T_NS, M_VERSION, M_PARTS_LEN = range(5)


@dataclass(frozen=True)
class RawFrame:
    """The raw input parts of one published frame (copies)."""

    stream: str
    message_id: int
    t: float
    parts: list[np.ndarray]


_SKIP = object()  # a seqlock reader's answer: nothing to read for this generation


class TapBusy(RuntimeError):
    """The writer kept overwriting the block while this reader copied it."""


class PreviewTap:
    """The preview tap of one pipeline; see the module docstring for the API.

    The reader: made by :meth:`attach` (any process of the same user, through
    ``/proc/<pid>/fd``), or the ``TapWriter`` the supervisor made before forking.
    """

    def __init__(self, buf: mmap.mmap, fd: int | None, writable: bool) -> None:
        self._map, self.fd, self.writable = buf, fd, writable
        self.words = np.ndarray((64,), "<i8", buffer=buf)
        if int(self.words[W_MAGIC]) != MAGIC:
            raise ValueError("not a shmpipe preview tap (bad magic)")
        n = int(self.words[W_DESC_LEN])
        self.descriptor: dict[str, Any] = json.loads(bytes(buf[DESCRIPTOR_AT : DESCRIPTOR_AT + n]))
        d = self.descriptor
        self.run: dict[str, Any] = d["run"]
        self.history_rows: int = d["history"]
        self.max_hz: float = d["max_hz"]
        self.fallback_s: float = d.get("fallback_s", FALLBACK_S)
        self._specs = {s["name"]: spec_from_dict(s) for s in d["outputs"]}
        self.part_specs = (
            [spec_from_dict(s) for s in d["parts"]] if d["parts"] is not None else None
        )
        self.small = [n for n in d["small"]]
        self._latest_meta = np.ndarray((META_WORDS,), "<i8", buffer=buf, offset=d["latest_at"])
        names = list(self._specs)
        self._index = {n: i for i, n in enumerate(names)}
        self._wanted = np.ndarray((len(names),), "<i8", buf, d["want_at"])
        self._out_gen = np.ndarray((len(names),), "<i8", buf, d["want_at"] + 8 * len(names))
        # Small outputs are always copied (the cost is nil); large ones only while wanted.
        self._always = np.array([n in d["small"] for n in names], dtype=bool)
        self._big = np.array([self._specs[n].nbytes >= BIG_BYTES for n in names], dtype=bool)
        self._big &= ~self._always
        self._latest = {
            name: np.ndarray(self._specs[name].shape, self._specs[name].dtype, buf, off)
            for name, off in d["latest_offsets"].items()
        }
        self._raw_meta = np.ndarray((META_WORDS,), "<i8", buffer=buf, offset=d["raw_at"])
        self._raw_layout = np.ndarray((RAW_LAYOUT_BYTES,), "u1", buf, d["raw_at"] + META_WORDS * 8)
        self._raw_bytes = np.ndarray((d["raw_bytes"],), "u1", buf, d["raw_data_at"])
        self._raw_big = d["raw_bytes"] >= BIG_BYTES
        self._names = np.ndarray((MAX_STREAM_NAMES, 32), "<i8", buf, d["streams_at"])
        self.ring = HistoryRing(buf, d, self._specs, self.words[W_WRITTEN : W_WRITTEN + 1])
        self.last_read_generation = 0  # of the latest block, after a successful ``latest()``

    @classmethod
    def attach(cls, info: dict[str, Any]) -> PreviewTap:
        """Map a running pipeline's tap read-only (``info``: its run-registry record).

        Raises
        ------
        LookupError
            The pipeline has no preview tap, or it is gone.
        """
        if not info.get("preview_fd"):
            raise LookupError(f"run {info.get('name', '?')!r} has no preview tap")
        try:
            fd = os.open(f"/proc/{info['pid']}/fd/{info['preview_fd']}", os.O_RDWR)
        except OSError as exc:
            raise LookupError(f"run {info.get('name', '?')!r} is gone: {exc}") from None
        try:
            size = os.fstat(fd).st_size
            # Read-write: a reader marks which outputs it wants (and writes nothing else).
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        return cls(buf, None, writable=False)

    def close(self) -> None:
        self._latest = {}
        self.ring.close()
        self.words = self._latest_meta = self._raw_meta = self._raw_layout = None  # type: ignore
        self._raw_bytes = self._names = self._wanted = self._out_gen = None  # type: ignore
        try:
            self._map.close()
        except (BufferError, ValueError):
            pass  # a caller still holds a view; the mapping goes with the process
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    # -- reader -------------------------------------------------------------------------
    def outputs(self) -> dict[str, ArraySpec]:
        """The chain's declared outputs by qualified name, in chain order."""
        return dict(self._specs)

    def generation(self) -> int:
        """Changes whenever a new latest frame is written (even: complete)."""
        return int(self.words[W_LATEST_GEN])

    def raw_generation(self) -> int:
        """Changes whenever a new raw frame is written (even: complete)."""
        return int(self.words[W_RAW_GEN])

    def commits(self) -> int:
        """Sink commits seen by the tap so far."""
        return int(self.words[W_COMMITS])

    def written(self) -> int:
        """History rows written so far (all frames published since the start)."""
        return self.ring.written()

    def copy_cost(self) -> tuple[int, float]:
        """Full copies the publisher made (latest outputs and raw frame) and the seconds
        they took: what the tap costs the pipeline beyond its history rows."""
        return int(self.words[W_COPIES]), int(self.words[W_COPY_NS]) / 1e9

    def copy_waits(self) -> int:
        """Commits at which a copy was due but waited for a reader to take the last big one."""
        return int(self.words[W_WAITS])

    def acknowledge(self, generation: int | None = None, raw: int | None = None) -> None:
        """Tell the writer this reader has taken the latest block of ``generation`` (and
        the raw block of generation ``raw``): the next big copy may go. None for
        ``generation``: the current one. ``latest``, ``apply`` and ``raw`` call this."""
        w = self.words
        g = int(w[W_LATEST_GEN]) if generation is None else generation
        # Never backwards (a slower reader acknowledging an older frame); two readers may
        # still race here, and then the writer's fallback interval covers it.
        if int(w[W_ACK]) < g:
            w[W_ACK] = g
        if raw is not None and int(w[W_RAW_ACK]) < raw:
            w[W_RAW_ACK] = raw

    def stream_name(self, no: int) -> str:
        row = self._names[no % MAX_STREAM_NAMES]
        if int(row[0]) != no:
            return "?"  # overwritten by a later stream (more than MAX_STREAM_NAMES streams)
        return bytes(row.view("u1")[8:]).rstrip(b"\0").decode(errors="replace")

    def want(self, names: Sequence[str] = (), raw: bool = False, seconds: float = WANT_S) -> None:
        """Ask the writer to copy these large outputs (and the raw frame) for the next
        ``seconds``. Small outputs are always copied; large ones only while wanted, so a
        pipeline nobody watches pays nothing for them. ``latest`` and ``raw`` call this."""
        now = time.time_ns()
        until = now + int(seconds * 1e9)
        fresh = False  # a big copy nobody wanted until now: there is nothing to take first
        for n in names:
            i = self._index[n]
            if not self._always[i] and self._wanted[i] < until - 1e9:
                fresh |= bool(self._big[i] and self._wanted[i] <= now)
                self._wanted[i] = until  # rewritten at most once a second
        if raw and self.words[W_RAW_WANTED] < until - 1e9:
            fresh |= self._raw_big and int(self.words[W_RAW_WANTED]) <= now
            self.words[W_RAW_WANTED] = until
        if fresh:
            self.acknowledge(raw=int(self.words[W_RAW_GEN]))

    def latest(
        self, names: Sequence[str] | None = None, tries: int = 50, ack: bool = True
    ) -> tuple[str, int, float, dict[str, np.ndarray]] | None:
        """The latest frame's outputs (copies): ``(stream, message_id, t, {name: array})``.

        None before the first frame. ``names`` limits the copy to those outputs. A large
        output that nobody asked for recently is not copied by the writer: it is missing
        from the result until the next frame after this call (``want``). With ``ack``, a
        big output copied acknowledges the frame (``acknowledge``).

        Raises
        ------
        TapBusy
            The writer rewrote the block on every one of ``tries`` attempts.
        KeyError
            An unknown output name.
        """
        pick = list(self._latest) if names is None else list(names)
        for n in pick:
            if n not in self._latest:
                raise KeyError(n)
        self.want(pick)

        def copy(g: int, m: np.ndarray) -> dict[str, np.ndarray]:
            # Only outputs copied for this very frame (a large one may be older).
            current = [n for n in pick if self._out_gen[self._index[n]] == g]
            return {n: self._latest[n].copy() for n in current}

        got = self._consistent(
            W_LATEST_GEN,
            self._latest_meta,
            copy,
            "the latest frame changed during every copy",
            tries,
        )
        if got is None:
            return None
        g, m, arrays = got
        self.last_read_generation = g
        if ack and any(self._big[self._index[n]] for n in arrays):
            self.acknowledge(g)
        return self.stream_name(int(m[M_STREAM])), int(m[M_MSG_ID]), m[M_T_NS] / 1e9, arrays

    def apply(self, name: str, fn: Callable[[np.ndarray], Any], tries: int = 20):
        """``fn`` applied to one output of the latest frame in place (no copy):
        ``(stream, message_id, t, fn(array))``, or None when the output was not copied for
        the latest frame (ask with ``want``; the next frame brings it). Once ``fn`` is done
        the frame is acknowledged (``acknowledge``).

        ``fn`` must only read; the writer skips its copies while ``fn`` runs (for at most
        ``HOLD_S``), and if it rewrote the block all the same ``fn`` runs again. This is how
        a view bins a 47 MB image without copying it first.
        """
        i = self._index[name]
        self.want([name])
        # Hold the block: on a busy machine a read in place can outlast the writer's period.
        self.words[W_HOLD] = time.time_ns() + int(HOLD_S * 1e9)
        try:
            got = self._consistent(
                W_LATEST_GEN,
                self._latest_meta,
                lambda g, m: fn(self._latest[name]) if self._out_gen[i] == g else _SKIP,
                f"the latest frame changed during every read of {name!r}",
                tries,
            )
            if got is not None:
                self.acknowledge(got[0])
        finally:
            self.words[W_HOLD] = 0
        if got is None:
            return None
        _, m, result = got
        return self.stream_name(int(m[M_STREAM])), int(m[M_MSG_ID]), m[M_T_NS] / 1e9, result

    def raw(self, tries: int = 50) -> RawFrame | None:
        """The latest raw frame's parts (copies), or None (none yet, or not kept); the raw
        frame is acknowledged (``acknowledge``)."""
        if not len(self._raw_bytes):
            return None
        self.want(raw=True)

        def copy(g: int, m: np.ndarray) -> tuple[list, np.ndarray]:
            layout = json.loads(bytes(self._raw_layout[: int(m[M_PARTS_LEN])]) or b"[]")
            return layout, self._raw_bytes.copy()

        got = self._consistent(
            W_RAW_GEN, self._raw_meta, copy, "the raw frame changed during every copy", tries
        )
        if got is None:
            return None
        g, m, (layout, data) = got
        self.acknowledge(0, raw=g)
        parts = [
            data[at : at + int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize]
            .view(dt)
            .reshape(shape)
            for at, dt, shape in layout
        ]
        stream = self.stream_name(int(m[M_STREAM]))
        return RawFrame(stream, int(m[M_MSG_ID]), m[M_T_NS] / 1e9, parts)

    def _consistent(
        self,
        word: int,
        meta: np.ndarray,
        read: Callable[[int, np.ndarray], Any],
        busy: str,
        tries: int,
    ) -> tuple[int, np.ndarray, Any] | None:
        """One seqlock read of a block: ``(generation, meta copy, read(generation, meta))``
        from a block the writer did not touch meanwhile; None when it was never written or
        ``read`` answered ``_SKIP``. The generation word is odd while the writer is inside."""
        for _ in range(tries):
            g = int(self.words[word])
            if g == 0:
                return None
            if g & 1:
                time.sleep(0.0005)
                continue
            m = meta.copy()
            got = read(g, m)
            if got is _SKIP:
                return None
            if int(self.words[word]) == g:
                return g, m, got
        raise TapBusy(f"{busy}; try again")

    def history(self, name: str, last: int | None = None) -> History:
        """The last ``last`` rows (default: all kept) of one small output, oldest first.

        Rows being rewritten while copied are left out. Raises KeyError for an output that
        is not kept in the history (see :func:`is_small`).
        """
        return self.ring.read(name, last, self.stream_name)

    def lookup(self, name: str, stream: str, message_id: int) -> np.ndarray | None:
        """The value of a small output stored for one message, or None if not kept."""
        h = self.history(name)
        hits = np.nonzero(h.message_id == message_id)[0]
        for i in hits[::-1]:
            if h.stream[i] == stream:
                return h.values[i]
        return None
