"""What a reducer holds for one stream: its open windows and the windows already written.

A window is ``every`` consecutive message ids (``every = 0``: the whole stream, window 0).
It is written when all of its ids are accounted for (added, or error records), or when its
stream finishes (a last, shorter window; on a node that sees only some of the ids: a partial
window, merged with the other nodes' afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shmpipe.api.reducer import State
from shmpipe.plugins.sinks.hdf5 import IdSet


def runs_of(ids: IdSet) -> list[tuple[int, int]]:
    """An ``IdSet`` as ``(lo, hi)`` runs."""
    return list(zip(ids.lo, ids.hi, strict=True))


def id_set(runs) -> IdSet:
    """The ``IdSet`` of ``(lo, hi)`` runs (a checkpoint's)."""
    s = IdSet()
    for lo, hi in runs:
        s.lo.append(int(lo))
        s.hi.append(int(hi))
    return s


def count_ids(ids: IdSet) -> int:
    return sum(h - lo + 1 for lo, h in zip(ids.lo, ids.hi, strict=True))


@dataclass
class Window:
    """One open window of one reducer in one stream."""

    state: State
    ids: IdSet = field(default_factory=IdSet)
    """Message ids added to ``state``."""
    skipped: int = 0
    """Ids of the window that were error records (or that the reducer refused)."""
    frames: int = -1
    """How many ids ``ids`` holds (counted from it when -1)."""

    def __post_init__(self) -> None:
        if self.frames < 0:
            self.frames = count_ids(self.ids)

    def add(self, mid: int) -> None:
        """Note message ``mid`` as added to the state (a new id)."""
        self.ids.add(mid)
        self.frames += 1

    def id_range(self) -> tuple[int, int]:
        return (self.ids.lo[0], self.ids.hi[-1]) if self.ids.lo else (0, 0)


@dataclass
class StreamWindows:
    """One reducer's windows in one stream."""

    open: dict[int, Window] = field(default_factory=dict)
    written: IdSet = field(default_factory=IdSet)
    """Indices of the windows written to the sinks (with the commit that follows)."""


def window_of(mid: int, every: int) -> int:
    """The 0-based window of message id ``mid`` (ids start at 1)."""
    return (mid - 1) // every if every > 0 else 0


def window_ids(k: int, every: int) -> tuple[int, int]:
    """The first and last message id of window ``k`` (``every > 0``)."""
    return k * every + 1, (k + 1) * every
