"""What the benchmarks feed the engine: simulated sources, kernel chains, frames in memory."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe.api.sink import Record, RunInfo, Sink
from shmpipe.config import PipelineConfig, load_config

LAMBDA_MODULE_SHAPE = (516, 1556)
QUICK_MODULE_SHAPE = (48, 64)
KERNELS = "native_kernels.shmpipe_kernels"


# -- a sink that times every record in the publisher -----------------------------------------
@dataclass
class TimingSinkParams:
    path: str = ""
    """Where to write the timings (``.npy``: rows publish time, dispatch->publish latency)."""


class TimingSink(Sink):
    """Records, per result, the wall-clock time it was published and its latency since the
    source handed the message over (``Record.timestamp``); written to ``path`` at close."""

    Params = TimingSinkParams

    def open(self, run: RunInfo) -> None:
        self._t: list[float] = []
        self._lat: list[float] = []

    def write(self, record: Record) -> None:
        now = time.time()
        self._t.append(now)
        self._lat.append(now - record.timestamp)

    def close(self) -> None:
        if self.params.path:
            np.save(self.params.path, np.array([self._t, self._lat], dtype=np.float64))


# -- configurations --------------------------------------------------------------------------
def sim_source(
    frames: int,
    module_shape: tuple[int, int] = LAMBDA_MODULE_SHAPE,
    modules: int = 12,
    compression: str = "none",
    rate: float = 0.0,
    payload: int = 0,
) -> dict[str, Any]:
    """A ``[source]`` table for the simulated LAMBDA 9M (or small messages with ``payload``)."""
    table: dict[str, Any] = {
        "kind": "sim",
        "frames": frames,
        "module_shape": list(module_shape),
        "modules": modules,
        "compression": compression,
        "rate": float(rate),
    }
    if payload:
        table["payload_bytes"] = payload
    return table


def null_chain() -> dict[str, Any]:
    """The ``null`` kernel alone: what the engine itself costs."""
    return {"null": {"kind": "null"}}


def geometry_file(directory: Path, module_shape: tuple[int, int], modules: int = 12) -> Path:
    """Write the simulated detector's geometry as JSON (the LAMBDA kernels read it)."""
    from shmpipe.plugins.sources.sim import SimParams, sim_geometry

    geo = sim_geometry(SimParams(module_shape=list(module_shape), modules=modules))
    path = Path(directory) / f"geometry-{module_shape[0]}x{module_shape[1]}x{modules}.json"
    geo.to_file(path)
    return path


def lambda_chain(geometry: Path, module_shape: tuple[int, int], npt: int = 1000) -> dict:
    """The LAMBDA chain: bitshuffle-LZ4 decompress, stitch, azimuthal integration, statistics.

    The beam centre matches the simulated powder rings (47 % down, 52 % across the canvas).
    The detector is the simulated source's own layout (the one ``geometry`` holds), which
    the run hands to the kernels.
    """
    from native_kernels.geometry import load_geometry

    geo = load_geometry(str(geometry))
    h, w = geo.shape
    px = geo.pixel_size
    return {
        "decompress": {"kind": f"{KERNELS}:LambdaDecompress"},
        "stitch": {"kind": f"{KERNELS}:LambdaStitch", "input": "decompress.modules"},
        "integrate": {
            "kind": f"{KERNELS}:AzimuthalIntegrate",
            "dist": 0.2,
            "poni1": 0.47 * h * px[0],
            "poni2": 0.52 * w * px[1],
            "wavelength": 1e-10,
            "npt": npt,
        },
        "stats": {"kind": f"{KERNELS}:FrameStats", "threshold": 100.0},
    }


def pipeline_config(
    source: dict,
    kernels: dict,
    workers: int,
    timing_path: Path,
    view: dict | None = None,
    **run: Any,
) -> PipelineConfig:
    """A validated configuration with the timing sink attached (``view``: a ``[view]`` table)."""
    raw = {
        "run": {"workers": workers, "progress": "off", "log_level": "warning", **run},
        "source": source,
        "kernels": kernels,
        "sinks": [{"kind": "shmpipe.benchmark:TimingSink", "path": str(timing_path)}],
    }
    if view is not None:
        raw["view"] = view
    return load_config(raw=raw)


# -- the anchor: one process copying a frame -------------------------------------------------
def sim_parts(module_shape: tuple[int, int], modules: int = 12) -> list[np.ndarray]:
    """The first pooled frame of the simulated detector (raw uint16 modules)."""
    from shmpipe.plugins.sources.sim import SimParams, SimSource

    src = SimSource(SimParams(module_shape=list(module_shape), modules=modules))
    src.open()
    return src.frame_parts(0)


# -- the suite -------------------------------------------------------------------------------
@dataclass
class SuiteOptions:
    """What ``shmpipe bench`` runs."""

    workers: list[int] = field(default_factory=lambda: list(range(1, (os.cpu_count() or 1) + 1)))
    frames: int = 0
    """Frames per throughput run; 0: a default per measurement (smaller with ``quick``)."""
    output: Path = Path("bench-report")
    quick: bool = False
    """Tiny frames and few of them: checks the code paths in seconds, measures nothing."""
    cold_start: bool = True
    """Start with empty Numba and kernel-table caches and measure a cold start-up (compiles
    everything: several seconds); otherwise use the usual caches (warm after a first run)."""


def _open_lz4_pool(module_shape: tuple[int, int], modules: int) -> None:
    from shmpipe.plugins.sources.sim import SimParams, SimSource

    SimSource(
        SimParams(module_shape=list(module_shape), modules=modules, compression="bitshuffle-lz4")
    ).open()


def sim_parts_lz4(module_shape: tuple[int, int], modules: int) -> None:
    """Generate (and cache on disk) the compressed simulator pool before anything is timed.

    Runs in a child process: bitshuffle starts OpenMP threads, and a process that has used
    GNU OpenMP must not fork the engine's workers afterwards (their first bitshuffle call
    deadlocks).
    """
    proc = mp.get_context("fork").Process(target=_open_lz4_pool, args=(module_shape, modules))
    proc.start()
    proc.join()


def _image_px(geometry: Path) -> int:
    from native_kernels.geometry import load_geometry

    h, w = load_geometry(str(geometry)).shape
    return int(h * w)
