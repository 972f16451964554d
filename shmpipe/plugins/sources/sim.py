"""SimSource: a simulated LAMBDA 9M — twelve uint16 modules of powder rings with Poisson noise.

Frames are drawn from a pool generated once at open (deterministic in ``seed``), so the source
costs one reference per message and is never what limits a pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from native_kernels.geometry import DetectorGeometry, ModulePlacement
from shmpipe.api.kernel import ArraySpec
from shmpipe.api.message import Message, StreamFinished, payload_bytes
from shmpipe.api.params import ParamError
from shmpipe.api.source import EndOfSource, Source, SourceLayout


@dataclass
class SimParams:
    frames: int = 100
    """Frames per stream; 0: endless."""
    rate: float = 0.0
    """Frames per second; 0: as fast as the pipeline takes them."""
    streams: int = 1
    """Number of streams, sent one after the other with finished flags."""
    stream_names: list[str] = field(default_factory=list)
    """Stream names; default scan_0001, scan_0002, ..."""
    seed: int = 0
    """Seed of the noise; the same seed gives the same frames."""
    module_shape: list[int] = field(default_factory=lambda: [516, 1556])
    """Rows and columns of one module."""
    modules: int = 12
    """Modules per frame (laid out 3 per row, like the LAMBDA 9M)."""
    missing_modules: list[int] = field(default_factory=list)
    """Module indices that are not installed (no part is sent for them)."""
    dtype: Literal["uint16", "uint32"] = "uint16"
    """Pixel type of the modules."""
    pool: int = 2
    """Distinct frames generated up front (cached on disk) and cycled through: with 2, frame 3
    repeats frame 1, and every stream holds the same data."""
    photons: float = 200.0
    """Mean counts at the brightest ring."""
    compression: Literal["none", "bitshuffle-lz4"] = "none"
    """Send each module raw or bitshuffle-LZ4 compressed (as detector streams do)."""
    payload_bytes: int = 0
    """Instead of modules, send one part of this many bytes (small-message tests)."""
    mesh: list[int] = field(default_factory=list)
    """[nx, ny]: each stream's frames walk a mesh scan of nx x ny points (x the fast axis,
    again from the start after nx x ny frames), their positions in each message's metadata
    as ``motor_x`` and ``motor_y``; empty: no positions."""
    mesh_step: list[float] = field(default_factory=lambda: [0.1, 0.1])
    """Step of the mesh along x and y (``motor_x = ix * step_x``)."""

    def validate(self) -> None:
        for key, least in (("frames", 0), ("rate", 0), ("streams", 1), ("pool", 1)):
            if getattr(self, key) < least:
                hint = " (0: until stopped)" if key == "frames" else ""
                raise ParamError(key, f"must be {least} or more{hint}, got {getattr(self, key)}")
        if len(self.module_shape) != 2 or min(self.module_shape) < 1:
            raise ValueError("module_shape must be [rows, columns]")
        if self.mesh and (len(self.mesh) != 2 or min(self.mesh) < 1):
            raise ParamError("mesh", f"must be [nx, ny], each at least 1, got {self.mesh}")
        if len(self.mesh_step) != 2:
            raise ParamError("mesh_step", f"must be [step_x, step_y], got {self.mesh_step}")
        if self.stream_names and len(self.stream_names) != self.streams:
            raise ValueError(
                f"stream_names has {len(self.stream_names)} names for {self.streams} streams"
            )


def sim_geometry(p: SimParams) -> DetectorGeometry:
    """The layout the simulated modules belong to: rows of three, LAMBDA-like gaps."""
    r, c = p.module_shape
    if (r, c) == (516, 1556) and p.modules == 12:
        return DetectorGeometry.default_lambda9m(missing=tuple(p.missing_modules))
    gap_r, gap_c = max(1, r // 4), max(1, c // 50)
    mods = tuple(
        ModulePlacement(
            y=(i // 3) * (r + gap_r), x=(i % 3) * (c + gap_c), present=i not in p.missing_modules
        )
        for i in range(p.modules)
    )
    return DetectorGeometry((r, c), mods, name="sim")


RINGS = (
    (0.08, 0.004, 1.0),
    (0.15, 0.005, 0.6),
    (0.22, 0.006, 0.8),
    (0.31, 0.007, 0.4),
    (0.40, 0.008, 0.3),
)


def powder_image(geometry: DetectorGeometry, photons: float) -> np.ndarray:
    """Expected counts on the assembled detector: Debye-Scherrer rings around an off-centre beam."""
    h, w = geometry.shape
    y = np.arange(h, dtype=np.float32)[:, None] - h * 0.47
    x = np.arange(w, dtype=np.float32)[None, :] - w * 0.52
    r = np.sqrt(x * x + y * y) / max(h, w)
    # The profile is a function of radius alone: tabulate it finely and interpolate, which is
    # ten times cheaper than evaluating the Gaussians at 10 Mpx.
    grid = np.linspace(0.0, float(r.max()) + 1e-3, 20000)
    profile = np.full_like(grid, 0.05 * photons)
    for k, (r0, width, amp) in enumerate(RINGS):
        profile += (amp * photons / (1 + 0.2 * k)) * np.exp(-0.5 * ((grid - r0) / width) ** 2)
    return np.interp(r, grid, profile).astype(np.float32)


def mesh_position(mid: int, mesh: list[int], step: list[float]) -> dict[str, float]:
    """The motor positions of message ``mid`` (from 1) of a mesh scan ``[nx, ny]``."""
    i = mid - 1
    nx, ny = mesh
    return {"motor_x": (i % nx) * step[0], "motor_y": ((i // nx) % ny) * step[1]}


class SimSource(Source):
    """The built-in simulated detector (``[source] kind = "sim"``)."""

    Params = SimParams
    bounded_wait = True  # a paced run sleeps at most the timeout

    def __init__(self, params: SimParams, run_name: str = "") -> None:
        super().__init__(params, run_name)
        p = params
        self.streams = p.stream_names or [f"scan_{i + 1:04d}" for i in range(p.streams)]
        self.geometry = sim_geometry(p) if not p.payload_bytes else None
        self._pool: list[list[np.ndarray]] = []
        self.cache_dir = Path("~/.cache/shmpipe").expanduser()

    def layout(self) -> SourceLayout:
        p = self.params
        if p.payload_bytes:
            specs = [ArraySpec("payload", (p.payload_bytes,), "uint8")]
            return SourceLayout(specs, payload_bytes(specs))
        specs = [
            ArraySpec(f"module_{i:02d}", tuple(p.module_shape), p.dtype)
            for i in range(p.modules)
            if i not in p.missing_modules
        ]
        raw = payload_bytes(specs)
        if p.compression == "none":
            return SourceLayout(specs, raw, detector=self.geometry)
        # LZ4 of incompressible data grows by < 1 %; bitshuffle adds a 12-byte header and
        # per-block sizes. Compressed parts have no fixed shape: the decompress kernel knows it.
        return SourceLayout(None, raw + raw // 50 + 4096 * len(specs), detector=self.geometry)

    def open(self) -> None:
        self._pool = self._cached_pool()
        self._stream_index, self._frame = 0, 0
        self._t0 = time.monotonic()
        self._sent = 0

    def _cached_pool(self) -> list[list[np.ndarray]]:
        """Generate the pool, or load it from the cache (Poisson noise on 10 Mpx takes ~1 s)."""
        p = self.params
        shaping = {
            k: v
            for k, v in dataclasses.asdict(p).items()
            if k not in ("frames", "rate", "streams", "stream_names", "mesh", "mesh_step")
        }
        key = hashlib.sha256(repr(sorted(shaping.items())).encode()).hexdigest()[:16]
        path = Path(self.cache_dir) / "sim" / f"pool-{key}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    return [
                        [z[f"f{i}_p{j}"] for j in range(int(z["parts"]))] for i in range(p.pool)
                    ]
            except (OSError, ValueError, KeyError):
                pass  # unreadable cache: generate again
        pool = self._generate_pool()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.npz")
        arrays = {f"f{i}_p{j}": a for i, f in enumerate(pool) for j, a in enumerate(f)}
        np.savez(tmp, parts=np.int64(len(pool[0])), **arrays)
        os.replace(tmp, path)
        return pool

    def _generate_pool(self) -> list[list[np.ndarray]]:
        p = self.params
        rng = np.random.default_rng(p.seed)
        pool: list[list[np.ndarray]] = []
        if p.payload_bytes:
            return [[rng.integers(0, 256, p.payload_bytes, dtype=np.uint8)] for _ in range(p.pool)]
        g = self.geometry
        assert g is not None
        expected = powder_image(g, p.photons)
        r, c = p.module_shape
        for _ in range(p.pool):
            frame = []
            for i in g.present:
                m = g.modules[i]
                counts = rng.poisson(expected[m.y : m.y + r, m.x : m.x + c]).astype(p.dtype)
                if p.compression == "bitshuffle-lz4":
                    import bitshuffle

                    counts = np.frombuffer(bitshuffle.compress_lz4(counts).tobytes(), np.uint8)
                frame.append(counts)
            pool.append(frame)
        return pool

    def resume(self, delivered: int) -> None:
        """Skip the first ``delivered`` items: each stream is ``frames`` messages, then its
        stream-finished marker."""
        p = self.params
        if p.frames:
            self._stream_index, self._frame = divmod(delivered, p.frames + 1)
            self._sent = delivered - self._stream_index
        else:
            self._frame = self._sent = delivered
        self._t0 = time.monotonic() - self._sent / p.rate if p.rate > 0 else self._t0

    def next(self, timeout: float) -> Message | StreamFinished | None:
        p = self.params
        if self._stream_index >= len(self.streams):
            raise EndOfSource
        stream = self.streams[self._stream_index]
        if p.frames and self._frame >= p.frames:
            self._stream_index += 1
            self._frame = 0
            nxt = self.streams[self._stream_index] if self._stream_index < len(self.streams) else ""
            return StreamFinished(stream, nxt)
        if p.rate > 0:
            due = self._t0 + self._sent / p.rate
            wait = due - time.monotonic()
            if wait > timeout:
                time.sleep(timeout)
                return None
            if wait > 0:
                time.sleep(wait)  # pacing a simulated detector, not synchronisation
        self._frame += 1
        self._sent += 1
        mid = self._frame
        parts = self._pool[(self._sent - 1) % len(self._pool)]
        meta = {"frame_number": mid, "pool_index": (self._sent - 1) % len(self._pool)}
        if p.mesh:
            meta.update(mesh_position(mid, p.mesh, p.mesh_step))
        return Message(
            stream=stream,
            message_id=mid,
            name=f"{stream}/frame_{mid:06d}",
            parts=parts,
            meta=meta,
            timestamp=time.time(),
        )

    def frame_parts(self, pool_index: int) -> list[np.ndarray]:
        """The parts of pooled frame ``pool_index`` (tests recompute results from these)."""
        return self._pool[pool_index]
