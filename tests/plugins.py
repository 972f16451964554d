"""Kernels used by the engine tests to inject slowness, failures and crashes on cue."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shmpipe.api.kernel import ArraySpec, Kernel
from shmpipe.api.message import Message, StreamFinished, payload_bytes
from shmpipe.api.source import EndOfSource, Source, SourceLayout


class Sum(Kernel):
    """Sum of every pixel of every part (results to compare with a direct computation)."""

    def setup(self, ctx):
        return [ArraySpec("total", (), "float64"), ArraySpec("parts", (), "int32")]

    def process(self, frame, out):
        out["total"][...] = sum(float(p.sum(dtype=np.float64)) for p in frame.parts)
        out["parts"][...] = len(frame.parts)


class WritesParts(Kernel):
    """Tries to change its input in place (which the engine refuses)."""

    def process(self, frame, out):
        frame.parts[0][...] = 0


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
    mode: str = "sigkill"  # sigkill | abort | segfault | hang | sigstop
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
        faulthandler.disable()  # a crash on purpose: no traceback dump on the test's stderr
        if mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif mode == "abort":
            os.abort()
        elif mode == "segfault":
            ctypes.string_at(0)
        elif mode == "hang":
            while True:
                time.sleep(1)  # a kernel that never returns; the watchdog must act
        elif mode == "sigstop":
            os.kill(os.getpid(), signal.SIGSTOP)  # a frozen worker; the watchdog must act


class Sleepy(Kernel):
    """Sleeps a fixed time per frame: a stand-in for a compute-bound kernel."""

    @dataclass
    class Params:
        ms: float = 20.0

    def process(self, frame, out):
        time.sleep(self.params.ms / 1000)


class Spin(Kernel):
    """Keeps its core busy for a fixed time per frame: a compute-bound kernel."""

    @dataclass
    class Params:
        ms: float = 20.0

    def process(self, frame, out):
        end = time.perf_counter() + self.params.ms / 1000
        while time.perf_counter() < end:
            pass  # busy on purpose: the core is the kernel's, as a real one's would be


@dataclass
class BadInputParams:
    cases: list[str] = field(default_factory=list)
    """One message per entry, ids 1, 2, ...: good, wrong_size, wrong_dtype, truncated, corrupt,
    missing_module, no_monitor, nan, inf."""
    module_shape: list[int] = field(default_factory=lambda: [48, 64])
    modules: int = 12
    dtype: str = "uint16"
    """Declared dtype of the raw parts (float32 for NaN and inf pixels)."""
    compressed: bool = False
    """Send bitshuffle-LZ4 modules (opaque parts; the decompress kernel checks them)."""
    stream: str = "scan_0001"
    monitor_key: str = "monitor"


class BadInputSource(Source):
    """A detector that sends the listed good and bad messages, then finishes its stream."""

    Params = BadInputParams

    def _module(self, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        return rng.poisson(20.0, tuple(p.module_shape)).astype(p.dtype)

    def layout(self) -> SourceLayout:
        p = self.params
        specs = [
            ArraySpec(f"module_{i:02d}", tuple(p.module_shape), p.dtype) for i in range(p.modules)
        ]
        if p.compressed:
            return SourceLayout(None, payload_bytes(specs) * 2 + 4096 * p.modules)
        return SourceLayout(specs, payload_bytes(specs))

    def open(self) -> None:
        self._next = 0
        self._rng = np.random.default_rng(5)

    def _parts(self, case: str) -> list[np.ndarray]:
        from native_kernels.compression import compress

        p, rng = self.params, self._rng
        parts = [self._module(rng) for _ in range(p.modules)]
        if case == "wrong_size":
            parts[3] = parts[3][:-1]
        elif case == "wrong_dtype":
            parts = [m.astype(np.float64) for m in parts]
        elif case == "missing_module":
            parts = parts[:-1]
        elif case in ("nan", "inf"):
            parts[2][5, 7] = np.nan if case == "nan" else np.inf
            parts[4][0, :] = np.nan if case == "nan" else -np.inf
        if p.compressed:
            parts = [compress(np.ascontiguousarray(m)) for m in parts]
            if case == "truncated":
                parts[1] = parts[1][: parts[1].size // 2].copy()
            elif case == "corrupt":
                parts[6] = rng.integers(0, 256, parts[6].size, dtype=np.uint8)
        elif case in ("truncated", "corrupt"):
            raw = parts[1].reshape(-1).view(np.uint8)
            parts[1] = raw[: raw.size // 2].copy()
        return parts

    def next(self, timeout: float) -> Message | StreamFinished | None:
        p = self.params
        if self._next > len(p.cases):
            raise EndOfSource
        self._next += 1
        if self._next > len(p.cases):
            return StreamFinished(p.stream, "", len(p.cases))
        case = p.cases[self._next - 1]
        meta = {"case": case}
        if case != "no_monitor":
            meta[p.monitor_key] = 2.0
        return Message(
            stream=p.stream,
            message_id=self._next,
            name=f"{p.stream}/{case}_{self._next}",
            parts=self._parts(case),
            meta=meta,
            timestamp=time.time(),
        )


class HangingSetup(Kernel):
    """A kernel whose setup never returns (a deadlock, a network mount that hangs)."""

    def setup(self, ctx):
        while True:
            time.sleep(1)  # never returns; run.setup_timeout_s must act


class FailingSetup(Kernel):
    """A kernel whose set-up fails (a file that the configuration could not check)."""

    def setup(self, ctx):
        raise OSError("the calibration file went away (on purpose)")


@dataclass
class ProfileParams:
    npt: int = 8
    scale: float = 1.0
    shift_axis_from: int = 0  # from this message id on, the axis moves (0: never)


class Profile(Kernel):
    """A 1-D profile with an axis, units and uncertainties, and a per-frame scalar: what an
    azimuthal integrator declares, computed in microseconds from the parts."""

    Params = ProfileParams

    def setup(self, ctx):
        n = self.params.npt
        return [
            ArraySpec("radial", (n,), "float64", unit="q_nm^-1", long_name="q"),
            ArraySpec("intensity", (n,), "float64", axis="radial", errors="sigma"),
            ArraySpec("sigma", (n,), "float64", axis="radial"),
            ArraySpec("total", (), "float64", unit="counts"),
        ]

    def process(self, frame, out):
        p = self.params
        total = sum(float(part.sum(dtype=np.float64)) for part in frame.parts)
        shift = 1.0 if p.shift_axis_from and frame.message_id >= p.shift_axis_from else 0.0
        out["radial"][...] = np.linspace(0.1, 1.0, p.npt) + shift
        out["intensity"][...] = p.scale * total * np.arange(1, p.npt + 1) / p.npt
        out["sigma"][...] = np.sqrt(out["intensity"])
        out["total"][...] = total
