"""StreamTable: frames in, out and in error per stream, as counters in shared memory.

Only the messages know their stream, so the per-stream figures are counted where messages
pass: the dispatcher counts a stream's frames and bytes in, the publisher its frames out and
its errors. Both write into a small fixed table in the tables region, which the metrics
process, the live view and ``shmpipe status`` read without asking anyone.

Why a shared table and not counters inside the publisher: the publisher never sees the bytes
and arrival of a frame that is still in the ring, and serving them from the publisher would put
an HTTP server (a thread) into the process whose loop commits and acknowledges. With the table
the hot paths do one dict lookup (dispatcher, per message) and a few int64 increments, and
every reader is a plain memory read.

Layout: ``MAX_STREAMS`` rows of ``STREAM_WORDS`` int64 words. Words 0-7 are counters and
bookkeeping; words 16-31 hold the stream name (UTF-8, at most 128 bytes). A new stream takes
the next row in turn, so the table holds the most recent ``MAX_STREAMS`` streams (a beamtime
may have thousands of scans; metrics with unbounded label sets are a known Prometheus
anti-pattern). Run totals are kept in the process table and never roll over.

Writers: the dispatcher owns words ``GEN``, ``NAME_LEN``, ``FRAMES_IN``, ``BYTES_IN`` and the
name; the publisher owns ``FRAMES_OUT`` and ``ERRORS``. A reused row is reset by the
dispatcher, which would race with the publisher only if a frame of the evicted stream were
still in flight after ``MAX_STREAMS`` newer streams had begun.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shmpipe.shm.layout import (
    MAX_STREAMS,
    STREAM_WORDS,
)

GEN, NAME_LEN, FRAMES_IN, BYTES_IN, FRAMES_OUT, ERRORS = range(6)
NAME_AT = 16  # first word of the name
NAME_BYTES = (STREAM_WORDS - NAME_AT) * 8


@dataclass(frozen=True)
class StreamCounts:
    """One stream's figures, as read from the table."""

    stream: str
    frames_in: int
    bytes_in: int
    frames_out: int
    errors: int


class StreamTable:
    """Per-stream counters on a ``(MAX_STREAMS, STREAM_WORDS)`` int64 view of shared memory.

    Parameters
    ----------
    words : numpy.ndarray
        The table's memory (``SlotRing.streams`` creates it over the tables region).
    """

    def __init__(self, words: np.ndarray) -> None:
        self.words = words
        self._rows: dict[str, int] = {}  # dispatcher side: stream name -> row
        self._next = 0

    # -- dispatcher ---------------------------------------------------------------------
    def adopt(self) -> int:
        """Take over the rows a dead dispatcher wrote (in a replacement); return the frames
        they count in."""
        rows = [(int(self.words[r, GEN]), r) for r in range(MAX_STREAMS) if self.words[r, GEN]]
        for gen, r in sorted(rows):
            n = int(self.words[r, NAME_LEN])
            name = self.words[r, NAME_AT:].view(np.uint8)[:n].tobytes().decode(errors="replace")
            self._rows[name] = r
            self._next = max(self._next, gen)
        return sum(int(self.words[r, FRAMES_IN]) for _, r in rows)

    def row_for(self, stream: str) -> int:
        """The row of ``stream``, taking the next row in turn for a stream seen first."""
        row = self._rows.get(stream)
        if row is not None:
            return row
        row = self._next % MAX_STREAMS
        self._next += 1
        for name, r in list(self._rows.items()):
            if r == row:
                del self._rows[name]
        w = self.words[row]
        w[GEN] = 0  # readers skip the row while it is being rewritten
        w[FRAMES_IN] = w[BYTES_IN] = w[FRAMES_OUT] = w[ERRORS] = 0
        raw = stream.encode()[:NAME_BYTES]
        name = np.zeros(NAME_BYTES, np.uint8)
        name[: len(raw)] = np.frombuffer(raw, np.uint8)
        w[NAME_AT:] = name.view("<i8")
        w[NAME_LEN] = len(raw)
        w[GEN] = self._next
        self._rows[stream] = row
        return row

    def count_in(self, stream: str, nbytes: int) -> int:
        """Count one message of ``stream`` in; return its row (kept in the slot table)."""
        row = self.row_for(stream)
        w = self.words[row]
        w[FRAMES_IN] += 1
        w[BYTES_IN] += nbytes
        return row

    # -- publisher ----------------------------------------------------------------------
    def count_out(self, row: int, error: bool, n: int = 1) -> None:
        """Count ``n`` published frames (or error records) of the stream in ``row``."""
        if 0 <= row < MAX_STREAMS:
            self.words[row, ERRORS if error else FRAMES_OUT] += n

    # -- readers ------------------------------------------------------------------------
    def read(self) -> list[StreamCounts]:
        """The streams in the table, oldest first."""
        return read_streams(self.words)


def read_streams(words: np.ndarray) -> list[StreamCounts]:
    """Decode a stream table (also used on a table mapped from another process)."""
    out = []
    rows = [(int(words[r, GEN]), r) for r in range(words.shape[0]) if words[r, GEN] > 0]
    for _, r in sorted(rows):
        w = words[r].copy()  # one consistent-enough snapshot of the row
        n = int(w[NAME_LEN])
        name = w[NAME_AT:].view(np.uint8)[:n].tobytes().decode(errors="replace")
        out.append(
            StreamCounts(
                stream=name,
                frames_in=int(w[FRAMES_IN]),
                bytes_in=int(w[BYTES_IN]),
                frames_out=int(w[FRAMES_OUT]),
                errors=int(w[ERRORS]),
            )
        )
    return out
