"""ProgressReporter: the live view on a terminal, a plain progress log line otherwise.

On a terminal (``run.progress = "auto"`` and stderr a TTY, or ``"on"``) it redraws the rich live
view of ``shmpipe.live`` every second: totals, a sparkline of frames/s and a row per process
with the figures of ``shmpipe status``. Otherwise it logs one plain line every ``interval``
seconds, which suits files, journald and log shippers (``--log-format json``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

from shmpipe.config import PipelineConfig
from shmpipe.observe.live import LiveFigures, LiveView
from shmpipe.observe.snapshot import RunTotals, stalled_seconds
from shmpipe.observe.status import ProcessSampler, process_rows
from shmpipe.shm.ring import (
    SlotRing,
)

log = logging.getLogger("shmpipe.progress")


class ProgressReporter:
    """Frames/s, MB/s, ring occupancy and busy workers: on a terminal the live view redrawn
    every second; otherwise a log line every ``interval`` seconds.

    Parameters
    ----------
    ring : SlotRing
        The run's shared memory.
    config : PipelineConfig
        ``run.progress`` chooses the mode.
    name : str
        The run name shown.
    interval : float
        Seconds between plain log lines (the live view redraws every second).
    view : LiveView, optional
        Where to draw on a terminal (tests pass one drawing into a string).
    """

    def __init__(
        self,
        ring: SlotRing,
        config: PipelineConfig,
        name: str,
        interval: float = 10.0,
        view: LiveView | None = None,
    ) -> None:
        self.ring, self.name = ring, name
        mode = config.run.progress
        self.tty = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        self.enabled = mode != "off"
        self.interval = 1.0 if self.tty else interval
        self.t_last = self.t0 = time.monotonic()
        self.last_out = 0
        self.last_bytes = 0
        self.history: list[float] = []
        self.chain = [k.name for k in config.kernels]
        self.view = (view or LiveView()) if self.tty and self.enabled else None
        self.sampler = ProcessSampler()
        self.supervisor_pid = os.getpid()

    def snapshot(self) -> dict[str, float]:
        return dataclasses.asdict(RunTotals.read(self.ring.procs, self.ring.table))

    def tick(self) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.t_last < self.interval:
            return
        s = self.snapshot()
        dt = now - self.t_last
        fps = (s["frames_out"] - self.last_out) / dt
        mbps = (s["bytes_in"] - self.last_bytes) / dt / 1e6
        self.history = (self.history + [fps])[-60:]
        self.t_last, self.last_out, self.last_bytes = now, s["frames_out"], s["bytes_in"]
        if self.view is not None:
            self.view.update(self.figures(s, fps, mbps, now))
            return
        line = (
            f"{self.name}: {s['frames_out']} out / {s['frames_in']} in, {s['errors']} errors | "
            f"{fps:7.1f} frames/s {mbps:8.1f} MB/s | ring {s['ring_used']}/{s['ring_slots']} | "
            f"workers busy {s['workers_busy']}/{s['workers']}"
        )
        log.info("%s", line)

    def figures(self, s: dict[str, float], fps: float, mbps: float, now: float) -> LiveFigures:
        """The live view's snapshot: the totals plus a row per process and per stream."""
        return LiveFigures(
            name=self.name,
            chain=self.chain,
            elapsed_s=now - self.t0,
            frames_in=int(s["frames_in"]),
            frames_out=int(s["frames_out"]),
            errors=int(s["errors"]),
            bytes_in=int(s["bytes_in"]),
            frames_per_s=fps,
            mb_per_s=mbps,
            ring_used=int(s["ring_used"]),
            ring_slots=int(s["ring_slots"]),
            rows=process_rows(self.ring.procs, self.sampler, self.supervisor_pid),
            history=list(self.history),
            streams=self.ring.streams.read(),
            stalled_s=stalled_seconds(self.ring.procs),
        )

    def close(self) -> None:
        if self.view is not None:
            # Leave the final figures on the screen, not those of the last tick.
            now = time.monotonic()
            s = self.snapshot()
            dt = max(now - self.t_last, 1e-9)
            fps = (s["frames_out"] - self.last_out) / dt
            mbps = (s["bytes_in"] - self.last_bytes) / dt / 1e6
            self.view.update(self.figures(s, fps, mbps, now))
            self.view.stop()
