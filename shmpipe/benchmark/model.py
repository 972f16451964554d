"""The node model: frames a second a node sustains, from measured rates and assumptions."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


# -- the model -------------------------------------------------------------------------------
@dataclass
class ModelAssumptions:
    """What the node model assumes; every field is written into the report."""

    cores: int = 16
    """Cores of the target node."""
    service_cores: float = 2.0
    """Cores taken by the dispatcher, the publisher and the supervisor (not workers)."""
    mem_bandwidth_gbs: float = 80.0
    """Memory bandwidth of the node (GB/s). ``shmpipe bench`` passes what it measured in the
    same run (the read bandwidth of this machine's cores side by side); the default is only
    for a model fed by hand."""
    detector_rate_hz: float = 2000.0
    """Frames per second of a full LAMBDA 9M (all 12 modules at 2 kHz)."""
    core_speed_ratio: float = 1.0
    """Speed of one node core relative to one core of the machine that measured."""


def chain_bytes_per_frame(
    module_shape: tuple[int, int], modules: int, image_px: int, compressed: float
) -> dict[str, float]:
    """Bytes moved through memory per frame by each stage of the LAMBDA chain (reads + writes).

    dispatcher: read + write the compressed payload; decompress: read it, write the uint16
    modules (bitshuffle decodes into the slot); stitch: read the modules, write the float32
    canvas; integrate: per module pixel the float32 value and the packed table word (bin and
    split weight, 8 B/px); statistics: read the canvas.
    """
    raw = modules * module_shape[0] * module_shape[1] * 2
    px = raw // 2
    img = image_px * 4
    stages = {
        "dispatcher": 2.0 * compressed,
        "decompress": compressed + raw,
        "stitch": raw + img,
        "integrate": 8.0 * px,
        "stats": img,
    }
    stages["total"] = sum(stages.values())
    return stages


def compressed_frame_bytes(module_shape: tuple[int, int], modules: int) -> float:
    """Bytes of one bitshuffle-LZ4 frame of the simulator (its pool must be cached already:
    see ``sim_parts_lz4``; loading it does not touch bitshuffle)."""
    from shmpipe.plugins.sources.sim import SimParams, SimSource

    src = SimSource(
        SimParams(module_shape=list(module_shape), modules=modules, compression="bitshuffle-lz4")
    )
    src.open()
    return float(sum(p.nbytes for p in src.frame_parts(0)))


def node_model(
    kernel_ms: dict[str, float],
    engine_overhead_ms: float,
    dispatcher_ms: float,
    bytes_per_frame: float,
    a: ModelAssumptions,
) -> dict[str, Any]:
    """Predict frames/s of one node and the nodes a full-rate LAMBDA 9M needs.

    frames/s = min(compute, dispatcher, memory) where compute = workers / per-frame CPU time
    (the stages' kernel times plus the engine's per-frame overhead in a worker), dispatcher =
    1 / the dispatcher's per-frame time (one process copies every frame), memory =
    bandwidth / bytes moved per frame.
    """
    cpu_s = (sum(kernel_ms.values()) + engine_overhead_ms) / 1e3 / a.core_speed_ratio
    workers = max(1.0, a.cores - a.service_cores)
    compute = workers / cpu_s if cpu_s > 0 else math.inf
    dispatch = 1e3 / dispatcher_ms * a.core_speed_ratio if dispatcher_ms > 0 else math.inf
    memory = a.mem_bandwidth_gbs * 1e9 / bytes_per_frame if bytes_per_frame > 0 else math.inf
    fps = min(compute, dispatch, memory)
    bound = {compute: "compute", dispatch: "dispatcher", memory: "memory bandwidth"}[fps]
    return {
        "assumptions": dataclasses.asdict(a),
        "cpu_ms_per_frame": cpu_s * 1e3,
        "kernel_ms": kernel_ms,
        "engine_overhead_ms": engine_overhead_ms,
        "dispatcher_ms_per_frame": dispatcher_ms,
        "bytes_per_frame": bytes_per_frame,
        "workers": workers,
        "fps_compute": compute,
        "fps_dispatcher": dispatch,
        "fps_memory": memory,
        "predicted_fps": fps,
        "bound_by": bound,
        "nodes_for_detector": math.ceil(a.detector_rate_hz / fps) if fps > 0 else None,
    }
