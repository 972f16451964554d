"""What the end-of-run summary adds to the counts: the steady rate and where results went.

The whole-run rate divides by everything from start-up on (the preflight, Numba compiling on a
cold cache, the wait for redeliveries after the last stream ends), which on a short run says
little about the pipeline; the steady rate counts only between the first and the last frame
published.
"""

from __future__ import annotations

import time

from shmpipe.api.sink import RunInfo
from shmpipe.config import PipelineConfig

MIN_STEADY_S = 0.5  # shorter spans give no meaningful rate (the supervisor samples at 4 Hz)


class SteadyRate:
    """Frames per second between the first and the last frame published, from samples of the
    publisher's frame counter."""

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.last: tuple[float, int] | None = None

    def sample(self, frames_out: int, now: float | None = None) -> None:
        """Record the publisher's count at ``now`` (a monotonic time)."""
        t = time.monotonic() if now is None else now
        if frames_out <= 0:
            return
        if self.first is None:
            self.first = (t, frames_out)
        if self.last is None or frames_out != self.last[1]:
            self.last = (t, frames_out)

    def rate(self) -> float | None:
        """The steady rate, or None when the frames came too close together to tell."""
        if self.first is None or self.last is None:
            return None
        span = self.last[0] - self.first[0]
        if span < MIN_STEADY_S:
            return None
        return (self.last[1] - self.first[1]) / span


def written_outputs(config: PipelineConfig, run: RunInfo, published: dict[str, int]) -> list[str]:
    """Where the sinks put this run's results (files, or a service's streams), with what each
    stored and skipped as already stored (``Sink.stored``); ``published`` counts the records
    published per input stream."""
    out: list[str] = []
    for sink in config.sink_instances():
        for where in sink.stored(run, published):
            if where not in out:
                out.append(where)
    return out
