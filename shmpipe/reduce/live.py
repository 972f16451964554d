"""The reducers' latest results while a run goes on, read from its checkpoint.

The live view and the Tango device are side processes that only read: they read the
checkpoint the publisher writes at every commit (the newer complete of its two files) and
finish the states themselves. A view shows the window filling in now (a scan's map as its
points arrive, the running mean of the stream); the Tango device the latest window written.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.reducer import Reducer
from shmpipe.config import PipelineConfig
from shmpipe.reduce import checkpoint
from shmpipe.reduce.setup import build_reducers, state_path
from shmpipe.reduce.windows import Window, window_ids


@dataclasses.dataclass
class Latest:
    """One reducer's result as shown: its outputs by qualified name and where they stand."""

    stream: str
    window: int
    first_id: int
    last_id: int
    frames: int
    arrays: dict[str, np.ndarray]


def shown_specs(r: Reducer) -> list[ArraySpec]:
    """The reducer's outputs, an output shaped as its input given the input's axis (so a
    mean profile is plotted against the integrator's radial axis)."""
    axis = r.input_spec.axis
    return [
        dataclasses.replace(s, axis=axis) if axis and s.axis is None and s.shape ==
        r.input_spec.shape and len(s.shape) == 1 else s
        for s in r.qualified_outputs()
    ]  # fmt: skip


class LiveReduced:
    """The latest results of a run's reducers (``refresh`` reads the checkpoint again when
    the publisher wrote a new one)."""

    def __init__(
        self, config: PipelineConfig, outputs: list[ArraySpec], min_interval_s: float = 0.1
    ) -> None:
        self.min_interval_s = min_interval_s
        self._checked = -min_interval_s
        self.reducers = {r.name: r for r in build_reducers(config, outputs)}
        self.path = state_path(config)
        self.specs = {s.name: s for r in self.reducers.values() for s in shown_specs(r)}
        self.generation = 0
        self._seen: tuple = ()
        self._cp: checkpoint.Checkpoint | None = None

    def refresh(self) -> bool:
        """Read the checkpoint if it changed (looking at most every ``min_interval_s``: a
        large state, a sum of images, is not read again at every commit); whether it did."""
        now = time.monotonic()
        if now - self._checked < self.min_interval_s:
            return False
        self._checked = now
        seen = []
        for p in checkpoint.files(self.path):
            try:
                st = os.stat(p)
                seen.append((st.st_mtime_ns, st.st_size))
            except OSError:
                seen.append(None)
        if tuple(seen) == self._seen:
            return False
        try:
            cp = checkpoint.load(self.path)
        except ValueError:
            return False  # none yet, or being written: the next poll reads it
        self._seen, self._cp = tuple(seen), cp
        self.generation += 1
        return True

    def current(self) -> dict[str, Latest]:
        """Per reducer: the window filling in now in the latest stream, else the latest
        written."""
        cp, out = self._cp, {}
        if cp is None:
            return out
        for name, r in self.reducers.items():
            sw = cp.windows.get((name, cp.last_stream))
            open_ = [k for k, w in (sw.open.items() if sw else ()) if w.frames]
            if open_:
                k = max(open_)
                out[name] = self._finish(r, cp.last_stream, k, sw.open[k])
            elif name in cp.last_written:
                out[name] = self._finish(r, *cp.last_written[name])
        return out

    def written(self) -> dict[str, Latest]:
        """Per reducer: the latest window written (complete, or its stream finished)."""
        cp = self._cp
        if cp is None:
            return {}
        return {
            name: self._finish(self.reducers[name], *last)
            for name, last in cp.last_written.items()
            if name in self.reducers
        }

    @staticmethod
    def _finish(r: Reducer, stream: str, k: int, w: Window) -> Latest:
        arrays = {f"{r.name}.{n}": np.asarray(a) for n, a in r.finish(w.state).items()}
        every = r.params.every
        first, last = window_ids(k, every) if every > 0 else w.id_range()
        return Latest(stream, k, first, last, w.frames, arrays)
