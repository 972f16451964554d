"""Samples the CPU times and memory of this process's descendants: the benchmark's workers.

``shmpipe.observe.status`` samples the processes of a run it attaches to; this one samples
whatever this process started, from its side, so a benchmark needs no registry or tap.
"""

from __future__ import annotations

import math
import threading
import time


class DescendantSampler:
    """Samples CPU times and memory of this process's descendants until stopped."""

    FAST_INTERVAL, FAST_S = 0.05, 3.0  # a short run's workers may live under one interval

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._psutil = psutil
        self.interval = interval
        self.last: dict[int, dict[str, float]] = {}
        self.series: dict[int, list[tuple[float, float]]] = {}
        """(monotonic time, CPU seconds) of each process, every sample."""
        self.peak: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> DescendantSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_rate(self, pid: int, lo: float = 0.3, hi: float = 0.9) -> float:
        """CPU seconds per second of ``pid`` between fractions ``lo`` and ``hi`` of the span it
        was sampled over: its steady state, without start-up and shut-down."""
        pts = self.series.get(pid, [])
        if len(pts) < 4:
            return math.nan
        t0, t1 = pts[0][0], pts[-1][0]
        window = [(t, c) for t, c in pts if t0 + lo * (t1 - t0) <= t <= t0 + hi * (t1 - t0)]
        if len(window) < 2 or window[-1][0] <= window[0][0]:
            return math.nan
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])

    def _loop(self) -> None:
        me = self._psutil.Process()
        fast_until, fast, slow = time.monotonic() + self.FAST_S, self.FAST_INTERVAL, self.interval
        while not self._stop.wait(fast if time.monotonic() < fast_until else slow):
            for p in me.children(recursive=True):
                try:
                    with p.oneshot():
                        t = p.cpu_times()
                        mem = p.memory_full_info()
                except (self._psutil.Error, OSError):
                    continue
                row = {
                    "cpu_s": t.user + t.system,
                    "rss": float(mem.rss),
                    "pss": float(getattr(mem, "pss", math.nan)),
                    "uss": float(mem.uss),
                }
                self.last[p.pid] = row
                self.series.setdefault(p.pid, []).append((time.monotonic(), row["cpu_s"]))
                peak = self.peak.setdefault(p.pid, dict(row))
                for k in ("rss", "pss", "uss"):
                    peak[k] = max(peak[k], row[k])
