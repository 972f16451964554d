"""Feeds: where a view gets its data. ``TapFeed`` reads a pipeline's preview tap and tables.

A feed answers: the declared outputs, the latest frame (all outputs of one message), the
latest raw frame, the history of a small output, and the run's counters. The view server
needs nothing else, so the ASAPO feed (``shmpipe.view.asapo_feed``) serves the same page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.observe.snapshot import RunTotals
from shmpipe.shm.history import History
from shmpipe.shm.layout import PROC_FIRST_WORKER
from shmpipe.shm.preview import PreviewTap, RawFrame, TapBusy

IN_PLACE_TRIES = 2  # reads of an output in place before a copy is read instead


log = logging.getLogger("shmpipe.view")


@dataclass
class Snapshot:
    """All outputs of one published message (copies)."""

    stream: str
    message_id: int
    t: float
    arrays: dict[str, np.ndarray]
    generation: int = 0


@dataclass
class Counters:
    frames_in: int = 0
    frames_out: int = 0
    errors: int = 0
    ring_slots: int = 0
    ring_used: int = 0
    workers: int = 0
    workers_busy: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Feed(Protocol):
    """Everything the view server asks of its data source (``TapFeed``, ``AsapoFeed``).

    Attributes
    ----------
    run_name : str
        What the status line names.
    part_specs : list of ArraySpec or None
        The raw frame's modules, when the source declares them (None: compressed parts;
        the view then shows the first 3-D output as the raw frame).
    geometry : DetectorGeometry or None
        The detector layout of the raw modules (None: a built-in layout).
    """

    run_name: str
    part_specs: list[ArraySpec] | None
    geometry: Any

    def outputs(self) -> dict[str, ArraySpec]:
        """The declared outputs by qualified name."""
        ...

    def generation(self) -> int:
        """Changes with every new latest frame (0: none yet)."""
        ...

    def latest(self, names: list[str] | None = None) -> Snapshot | None:
        """The latest frame with (at least) the outputs ``names``; None before the first."""
        ...

    def apply(self, name: str, fn: Callable[[np.ndarray], Any]) -> tuple | None:
        """``(stream, message_id, t, fn(array))`` for one output of the latest frame (read
        where it lies when the feed can); None when it cannot be had now."""
        ...

    def raw(self) -> RawFrame | None:
        """The latest raw frame, or None."""
        ...

    def raw_generation(self) -> int:
        """Changes with every new raw frame."""
        ...

    def history(self, name: str, last: int | None) -> History:
        """The last ``last`` frames' values of a small output, oldest first."""
        ...

    def history_names(self) -> list[str]:
        """The outputs kept per frame."""
        ...

    def counters(self) -> Counters:
        """The run's counters for the status line."""
        ...

    def close(self) -> None: ...


class TapFeed:
    """A pipeline on this machine: its preview tap and its slot and process tables.

    Copies of the latest frame are made once per new frame and shared by every request.
    """

    def __init__(
        self, tap: PreviewTap, table: np.ndarray, procs: np.ndarray, workers: int, on_close=None
    ) -> None:
        self.tap, self.table, self.procs, self.workers = tap, table, procs, workers
        self.run_name = str(tap.run.get("name", ""))
        self.part_specs = tap.part_specs
        self.geometry = _run_geometry(str(tap.run.get("geometry") or ""))
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._raw: tuple[int, RawFrame | None] = (-1, None)
        self._on_close = on_close

    @classmethod
    def attach(cls, info: dict[str, Any]) -> TapFeed:
        """Attach to a running pipeline described by its run-registry record."""
        from shmpipe.observe.status import attach_tables

        tap = PreviewTap.attach(info)
        table, procs, m = attach_tables(info)

        def close():
            nonlocal table, procs
            del table, procs
            m.close()

        feed = cls(tap, table, procs, int(info.get("workers", 0)), on_close=close)
        return feed

    def outputs(self) -> dict[str, ArraySpec]:
        return self.tap.outputs()

    def generation(self) -> int:
        return self.tap.generation()

    def latest(self, names: list[str] | None = None) -> Snapshot | None:
        """The latest frame with (at least) the outputs ``names`` (default all), copied once
        per frame and output: a status request copies no array, an image request only its
        image."""
        want = list(self.tap.outputs()) if names is None else list(names)
        with self._lock:
            for _ in range(3):
                snap, g = self._snap, self.tap.generation()
                fresh = snap is None or snap.generation != g
                missing = want if fresh else [n for n in want if n not in snap.arrays]
                if not fresh and not missing:
                    return snap
                try:
                    got = self.tap.latest(missing)
                except TapBusy:
                    return snap  # the writer is faster than our copy: keep the last frame
                if got is None:
                    return None
                stream, mid, t, arrays = got
                g = self.tap.last_read_generation
                if snap is not None and snap.generation == g:
                    snap.arrays.update(arrays)
                else:
                    snap = self._snap = Snapshot(stream, mid, t, arrays, g)
                if all(n in snap.arrays for n in want):
                    return snap
                # A large output nobody wanted until now: the writer copies it from the
                # next frame on (at most 1 / view.max_hz from now).
                deadline = time.monotonic() + 2.0 / max(self.tap.max_hz, 1.0) + 0.1
                while self.tap.generation() == g and time.monotonic() < deadline:
                    time.sleep(0.005)
            return snap

    def apply(self, name: str, fn):
        """``(stream, message_id, t, fn(array))`` for one output of the latest frame, read
        in shared memory without a copy; None if it cannot be had now.

        If a new frame overwrites the output while ``fn`` reads it (a busy machine, where
        the view gets the CPU in slices), ``fn`` runs on a copy instead: a copy cannot be
        overwritten, and reading in place again could be lost again.
        """
        for _ in range(3):
            g = self.tap.generation()
            try:
                got = self.tap.apply(name, fn, tries=IN_PLACE_TRIES)
            except TapBusy:
                snap = self.latest([name])
                if snap is None or name not in snap.arrays:
                    return None
                return snap.stream, snap.message_id, snap.t, fn(snap.arrays[name])
            if got is not None:
                return got
            deadline = time.monotonic() + 2.0 / max(self.tap.max_hz, 1.0) + 0.1
            while self.tap.generation() == g and time.monotonic() < deadline:
                time.sleep(0.005)
        return None

    def raw(self) -> RawFrame | None:
        if not self.part_specs:
            return None  # parts without a layout (compressed): the tap keeps no raw frame
        with self._lock:
            self.tap.want(raw=True)
            g = self.tap.raw_generation()
            if g == 0 and self.tap.generation() > 0:
                # Nobody wanted raw frames until now: the next frame brings one.
                deadline = time.monotonic() + 2.0 / max(self.tap.max_hz, 1.0) + 0.1
                while self.tap.raw_generation() == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
                g = self.tap.raw_generation()
            if self._raw[0] == g:
                return self._raw[1]
            try:
                frame = self.tap.raw()
            except TapBusy:
                return self._raw[1]
            self._raw = (g, frame)
            return frame

    def raw_generation(self) -> int:
        return self.tap.raw_generation()

    def history(self, name: str, last: int | None) -> History:
        return self.tap.history(name, last)

    def history_names(self) -> list[str]:
        return list(self.tap.small)

    def counters(self) -> Counters:
        procs = self.procs
        if self.workers:
            procs = procs[: PROC_FIRST_WORKER + self.workers]
        run = RunTotals.read(procs, self.table)  # the one reader of the run's totals
        copies, copy_s = self.tap.copy_cost()
        return Counters(
            frames_in=run.frames_in,
            frames_out=run.frames_out,
            errors=run.errors,
            ring_slots=run.ring_slots,
            ring_used=run.ring_used,
            workers=run.workers,
            workers_busy=run.workers_busy,
            extra={
                "tap_copies": copies,
                "tap_copy_s": round(copy_s, 6),
                "tap_waits": self.tap.copy_waits(),
            },
        )

    def close(self) -> None:
        self._snap = None
        self._raw = (-1, None)
        self.tap.close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def _run_geometry(path: str):
    """The run's detector geometry (a ``DetectorGeometry``), or None: no file named, or one
    that cannot be read now (logged; the view then uses its built-in layout)."""
    if not path:
        return None
    from native_kernels.geometry import load_geometry

    try:
        return load_geometry(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("view: geometry %s not usable (%s); raw frames in a built-in layout", path, exc)
        return None


class RateMeter:
    """Frames per second from counter samples over a sliding window."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self.samples: list[tuple[float, int, int]] = []

    def add(self, frames_in: int, frames_out: int) -> tuple[float, float]:
        now = time.monotonic()
        self.samples.append((now, frames_in, frames_out))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.pop(0)
        t0, i0, o0 = self.samples[0]
        dt = now - t0
        if dt <= 0.2:
            return 0.0, 0.0
        return (frames_in - i0) / dt, (frames_out - o0) / dt
