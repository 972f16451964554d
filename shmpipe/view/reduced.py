"""A view's feed with the run's reducers: their latest results beside each frame's outputs.

Wraps a ``TapFeed``: ``outputs`` adds the reducers' (``avg.mean`` a profile with its errors
and the input's axis, ``scan.map`` an image), ``latest`` adds their current values, read from
the run's reducer checkpoint (``shmpipe.reduce.live``), and the generation moves with either.
"""

from __future__ import annotations

from shmpipe.view.feed import Snapshot


class ReducedFeed:
    def __init__(self, inner, live) -> None:
        self.inner, self.live = inner, live

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # run_name, part_specs, geometry, raw, history, ...

    def outputs(self):
        return {**self.inner.outputs(), **self.live.specs}

    def generation(self) -> int:
        self.live.refresh()
        return self.inner.generation() + self.live.generation

    def _reduced(self) -> dict:
        return {n: a for latest in self.live.current().values() for n, a in latest.arrays.items()}

    def latest(self, names=None):
        mine = self.live.specs
        theirs = None if names is None else [n for n in names if n not in mine]
        wants_reduced = names is None or any(n in mine for n in names)
        # The frame's own outputs (an empty list: just which frame is the latest, copying
        # nothing), so that a reducer's result is labelled with the latest frame it includes.
        snap = self.inner.latest(theirs)
        reduced = self._reduced() if wants_reduced else {}
        if snap is None and not reduced:
            return None
        if snap is None:
            return Snapshot("", 0, 0.0, reduced, self.live.generation)
        return Snapshot(snap.stream, snap.message_id, snap.t, {**snap.arrays, **reduced},
                        snap.generation + self.live.generation)  # fmt: skip

    def apply(self, name: str, fn):
        if name not in self.live.specs:
            return self.inner.apply(name, fn)
        snap = self.latest([name])
        if snap is None or name not in snap.arrays:
            return None
        return snap.stream, snap.message_id, snap.t, fn(snap.arrays[name])
