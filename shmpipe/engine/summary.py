"""What a run did: the summary a ``Pipeline`` returns and prints at its end."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shmpipe.engine.exit_codes import EXIT_OK


@dataclass
class RunSummary:
    """What a run did, as printed at its end and returned to callers."""

    name: str
    exit_code: int = EXIT_OK
    frames_in: int = 0
    frames_out: int = 0
    errors: int = 0
    bytes_in: int = 0
    wall_s: float = 0.0
    worker_restarts: int = 0
    dispatcher_restarts: int = 0
    publisher_restarts: int = 0
    side_restarts: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    error: str = ""
    slots: int = 0
    """Slots in the ring."""
    worker_startup_s: list[float] = field(default_factory=list)
    steady_frames_per_s: float | None = None
    """Frames/s between the first and the last frame published (None: too short to tell)."""
    outputs: list[str] = field(default_factory=list)
    """Where the sinks put the results (files, or a service's streams)."""
    timings: dict[str, np.ndarray] = field(default_factory=dict)
    """Copies of the ring's ``Timings`` arrays (``kernel_hist``, ``kernel_ns``, ``latency_hist``,
    ``latency_ns``) and of the process table (``procs``), taken before the ring closes."""

    @property
    def frames_per_s(self) -> float:
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0

    def describe(self) -> str:
        mbps = self.bytes_in / self.wall_s / 1e6 if self.wall_s > 0 else 0.0
        steady = (
            f"{self.steady_frames_per_s:.1f} frames/s steady, "
            if self.steady_frames_per_s is not None
            else ""
        )
        text = (
            f"run {self.name}: {self.frames_in} frames in, {self.frames_out} out, "
            f"{self.errors} errors, {self.wall_s:.2f} s, {steady}"
            f"{self.frames_per_s:.1f} frames/s over the whole run (start-up included), "
            f"{mbps:.1f} MB/s, {self.worker_restarts} worker restarts"
            + (f", {self.dispatcher_restarts} dispatcher" if self.dispatcher_restarts else "")
            + (f", {self.publisher_restarts} publisher" if self.publisher_restarts else "")
        )
        text += "\nwritten: " + "\n         ".join(self.outputs or ["nothing"])
        return text
