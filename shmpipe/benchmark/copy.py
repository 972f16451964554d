"""The copy rate into ring slots: the bound of an engine that copies every frame once."""

from __future__ import annotations

import time

import numpy as np

from shmpipe.api.message import Message, payload_bytes
from shmpipe.shm.slotio import copy_parts


def copy_rate(parts: list[np.ndarray], repeats: int = 50, streaming: bool = False) -> dict:
    """Median time for one process to copy a frame's parts into a reused buffer.

    Uses ``copy_parts``, numpy's copy (memcpy), into one preallocated buffer: the anchor of
    the engine-bound goal. With ``streaming`` the parts go through the dispatcher's streaming
    copy (``shmpipe.streamcopy``) instead, for reference.
    """
    dest = np.empty(payload_bytes(parts) + 64, dtype=np.uint8)
    off = (-dest.ctypes.data) % 64
    dest = dest[off : off + payload_bytes(parts)]
    msg = Message("copy", 1, "copy", parts)
    copy = copy_parts
    if streaming:
        from shmpipe.shm.streamcopy import stream_copy

        def copy(msg: Message, dest: np.ndarray) -> None:
            o = 0
            for p in msg.parts:
                stream_copy(dest[o : o + p.nbytes], p.reshape(-1).view(np.uint8))
                o += (p.nbytes + 63) // 64 * 64

    copy(msg, dest)  # first touch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        copy(msg, dest)
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    nbytes = sum(p.nbytes for p in parts)
    return {"median_s": med, "fps": 1.0 / med, "gbps": nbytes / med / 1e9, "bytes": nbytes}
