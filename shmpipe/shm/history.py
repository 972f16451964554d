"""The preview tap's history ring: the small outputs of every published frame.

One row per published frame: message id, stream number, publish time, parameter version and,
per small output (scalars and short vectors, see :func:`is_small`), its value. The ring keeps
the last ``rows`` frames. A row's sequence word is 0 while the writer rewrites it, so a reader
that copied it meanwhile drops it; the writer never waits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from shmpipe.api.kernel import ArraySpec

SMALL_ELEMENTS = 64  # outputs of at most this many elements go into the history ring


def is_small(spec: ArraySpec) -> bool:
    """Whether an output goes into the history ring (scalars and short vectors)."""
    return (
        int(np.prod(spec.shape, dtype=np.int64)) <= SMALL_ELEMENTS
        and np.dtype(spec.dtype).kind in "biuf"
    )


@dataclass(frozen=True)
class History:
    """Rows of the history ring for one output, oldest first."""

    message_id: np.ndarray
    stream: list[str]
    t: np.ndarray
    version: np.ndarray
    values: np.ndarray


def ring_bytes(specs: Sequence[ArraySpec], rows: int, at: int, align: int) -> tuple[dict, int]:
    """Offsets of the ring's arrays from ``at`` on (``h_seq_at``, ``h_meta_at``,
    ``history_offsets``: per small output) and the offset after the ring."""

    def up(n: int) -> int:
        return (n + align - 1) // align * align

    h_seq_at = up(at)
    h_meta_at = up(h_seq_at + rows * 8)
    at = h_meta_at + rows * 32
    offsets = {}
    for s in specs:
        if is_small(s):
            at = up(at)
            offsets[s.name] = at
            at += s.nbytes * rows
    return {"h_seq_at": h_seq_at, "h_meta_at": h_meta_at, "history_offsets": offsets}, at


class HistoryRing:
    """The ring's arrays in the tap's mapping, for the writer and for readers.

    Parameters
    ----------
    buf : buffer
        The tap's mapping.
    descriptor : dict
        The tap's descriptor (offsets from :func:`ring_bytes` and ``history``: rows).
    specs : dict of ArraySpec
        The chain's outputs by qualified name.
    written : numpy.ndarray
        A one-element int64 view of the tap's control word counting rows written.
    """

    def __init__(self, buf, descriptor: dict, specs: dict[str, ArraySpec], written) -> None:
        h = self.rows = int(descriptor["history"])
        self._written = written
        self._seq = np.ndarray((h,), "<i8", buf, descriptor["h_seq_at"])
        self._meta = np.ndarray((h, 4), "<i8", buf, descriptor["h_meta_at"])  # id, stream, t, ver
        self.columns = {
            name: np.ndarray((h, *specs[name].shape), specs[name].dtype, buf, off)
            for name, off in descriptor["history_offsets"].items()
        }

    def close(self) -> None:
        self.columns = {}
        self._seq = self._meta = self._written = None  # type: ignore[assignment]

    def written(self) -> int:
        """Rows written so far (all frames published since the start)."""
        return int(self._written[0])

    # -- writer -------------------------------------------------------------------------
    def write(
        self,
        pending: Sequence[tuple[int, int, int, int]],
        now_ns: int,
        slot_views: dict[str, np.ndarray] | None,
    ) -> None:
        """Append one row per ``(stream no, message id, slot, version)``; the values come
        from ``slot_views`` (per small output, indexed by slot) where given."""
        seqs = np.arange(self.written() + 1, self.written() + len(pending) + 1, dtype=np.int64)
        rows = (seqs - 1) % self.rows
        self._seq[rows] = 0  # invalid while rewritten: a reader that copied them drops them
        meta = np.array(pending, dtype=np.int64)
        self._meta[rows, 0] = meta[:, 1]
        self._meta[rows, 1] = meta[:, 0]
        self._meta[rows, 2] = now_ns
        self._meta[rows, 3] = meta[:, 3]
        if not self.columns or slot_views is None:
            return  # no small outputs, or no results bound: the metadata only
        slots = meta[:, 2]
        for name, col in self.columns.items():
            col[rows] = slot_views[name][slots]
        self._seq[rows] = seqs
        self._written[0] = int(seqs[-1])

    # -- reader -------------------------------------------------------------------------
    def read(self, name: str, last: int | None, stream_name: Callable[[int], str]) -> History:
        """The last ``last`` rows (default: all kept) of one small output, oldest first."""
        col = self.columns.get(name)
        if col is None:
            kept = ", ".join(self.columns)
            raise KeyError(f"{name!r} is not in the history (kept: {kept})")
        written = self.written()
        n = min(written, self.rows, self.rows if last is None else max(0, last))
        seqs = np.arange(written - n + 1, written + 1, dtype=np.int64)
        rows = (seqs - 1) % self.rows
        values, meta = col[rows], self._meta[rows]
        ok = self._seq[rows] == seqs
        names = {no: stream_name(int(no)) for no in np.unique(meta[ok, 1])}
        return History(
            message_id=meta[ok, 0],
            stream=[names[no] for no in meta[ok, 1]],
            t=meta[ok, 2] / 1e9,
            version=meta[ok, 3],
            values=values[ok],
        )
