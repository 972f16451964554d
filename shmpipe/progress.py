"""ProgressReporter: the live progress line and its figures, read from the process table."""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from shmpipe.config import PipelineConfig
from shmpipe.ring import FREE as S_FREE
from shmpipe.ring import (
    P_BYTES,
    P_ERRORS,
    P_FRAMES,
    P_STATE,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
    PS_BUSY,
    STATE,
    SlotRing,
)

log = logging.getLogger("shmpipe.progress")


class ProgressReporter:
    """Frames/s, MB/s, ring occupancy and busy workers: on a terminal a line rewritten in place
    every second; otherwise a log line every ``interval`` seconds."""

    def __init__(
        self, ring: SlotRing, config: PipelineConfig, name: str, interval: float = 10.0
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

    def snapshot(self) -> dict[str, float]:
        procs, table = self.ring.procs, self.ring.table
        workers = procs[PROC_FIRST_WORKER:]
        return {
            "frames_in": int(procs[PROC_DISPATCHER, P_FRAMES]),
            "frames_out": int(procs[PROC_PUBLISHER, P_FRAMES]),
            "errors": int(procs[PROC_PUBLISHER, P_ERRORS]),
            "bytes_in": int(procs[PROC_DISPATCHER, P_BYTES]),
            "ring_used": int(np.count_nonzero(table[:, STATE] != S_FREE)),
            "ring_slots": int(table.shape[0]),
            "workers_busy": int(np.count_nonzero(workers[:, P_STATE] == PS_BUSY)),
            "workers": int(workers.shape[0]),
        }

    def tick(self) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.t_last < self.interval:
            return
        s = self.snapshot()
        dt = now - self.t_last
        fps = (s["frames_out"] - self.last_out) / dt
        mbps = (s["bytes_in"] - self.last_bytes) / dt / 1e6
        self.history = (self.history + [fps])[-20:]
        self.t_last, self.last_out, self.last_bytes = now, s["frames_out"], s["bytes_in"]
        line = (
            f"{self.name}: {s['frames_out']} out / {s['frames_in']} in, {s['errors']} errors | "
            f"{fps:7.1f} frames/s {mbps:8.1f} MB/s | ring {s['ring_used']}/{s['ring_slots']} | "
            f"workers busy {s['workers_busy']}/{s['workers']}"
        )
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
        else:
            log.info("%s", line)

    def close(self) -> None:
        if self.tty and self.enabled:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
