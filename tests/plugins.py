"""Kernels used by the engine tests to inject slowness, failures and crashes on cue."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shmpipe.kernel import ArraySpec, Kernel


class Sum(Kernel):
    """Sum of every pixel of every part (results to compare with a direct computation)."""

    def setup(self, ctx):
        return [ArraySpec("total", (), "float64"), ArraySpec("parts", (), "int32")]

    def process(self, frame, out):
        out["total"][...] = sum(float(p.sum(dtype=np.float64)) for p in frame.parts)
        out["parts"][...] = len(frame.parts)


@dataclass
class JitterParams:
    slow_ms: float = 30.0
    every: int = 3


class Jitter(Kernel):
    """Slow on every ``every``-th message, so completion order differs from dispatch order."""

    Params = JitterParams

    def process(self, frame, out):
        if frame.message_id % self.params.every == 0:
            time.sleep(self.params.slow_ms / 1000)  # stands for compute time


@dataclass
class FailParams:
    ids: list[int] = field(default_factory=list)


class FailOn(Kernel):
    """Raises ValueError on the listed message ids."""

    Params = FailParams

    def process(self, frame, out):
        if frame.message_id in self.params.ids:
            raise ValueError(f"bad frame {frame.message_id} on purpose")


@dataclass
class CrashParams:
    ids: list[int] = field(default_factory=list)
    mode: str = "sigkill"  # sigkill | abort | segfault | hang
    once_dir: str = ""  # when set: crash only on the first attempt (a marker file per id)


class Crash(Kernel):
    """Kills its own worker on the listed ids (every attempt, or once with ``once_dir``)."""

    Params = CrashParams

    def process(self, frame, out):
        if frame.message_id not in self.params.ids:
            return
        if self.params.once_dir:
            marker = Path(self.params.once_dir) / f"{frame.stream}-{frame.message_id}"
            if marker.exists():
                return
            marker.touch()
        mode = self.params.mode
        if mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "abort":
            os.abort()
        elif mode == "segfault":
            ctypes.string_at(0)
        elif mode == "hang":
            while True:
                time.sleep(1)  # a kernel that never returns; the watchdog must act


class Sleepy(Kernel):
    """Sleeps a fixed time per frame: a stand-in for a compute-bound kernel."""

    @dataclass
    class Params:
        ms: float = 20.0

    def process(self, frame, out):
        time.sleep(self.params.ms / 1000)
