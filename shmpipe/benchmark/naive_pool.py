"""The yardstick: the same chain in a ``multiprocessing.Pool`` pickling every frame."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe.api.message import Message
from shmpipe.config import PipelineConfig, load_config
from shmpipe.engine.chain import KernelChain
from shmpipe.engine.startup import run_detector

# -- the naive way: multiprocessing.Pool pickling frames ---------------------------------------
_POOL: dict[str, Any] = {}


def _pool_init(cfg: PipelineConfig, cache_dir: str) -> None:
    # One thread per kernel, as the engine's workers run (OpenMP reads this when it loads).
    os.environ["OMP_NUM_THREADS"] = "1"
    chain = KernelChain(cfg.kernel_instances())
    src_layout = cfg.source_instance().layout()
    # The run's detector as a run hands it to the kernels ([detector], else the source's).
    detector = run_detector(cfg, src_layout)
    layout = chain.setup(src_layout.parts, Path(cache_dir), 1, 0, detector)
    buf = np.empty(max(layout.result_bytes, 64), dtype=np.uint8)
    _POOL["chain"] = chain
    _POOL["views"] = chain.output_views(
        lambda off, dt, shape: np.ndarray(shape, dtype=dt, buffer=buf, offset=off)
    )
    _POOL["small"] = [
        (o.qualified, o.offset, o.spec) for o in layout.outputs if o.spec.nbytes < 2**20
    ]
    _POOL["buf"] = buf


def _pool_task(item: tuple[int, list[np.ndarray]]) -> dict[str, np.ndarray]:
    mid, parts = item
    fields = {"stream": "naive", "message_id": mid, "name": "", "meta": {}, "scan": {}}
    _POOL["chain"].run({**fields, "parts": parts}, _POOL["views"])
    buf = _POOL["buf"]
    return {
        q: np.ndarray(s.shape, dtype=s.dtype, buffer=buf, offset=off).copy()
        for q, off, s in _POOL["small"]
    }


def naive_pool_rate(source: dict, kernels: dict, workers: int, cache_dir: Path) -> dict[str, float]:
    """Frames/s of the same chain through ``multiprocessing.Pool.imap``, frames pickled to the
    workers and the reduced results (outputs under 1 MiB) pickled back: what most beamline
    scripts do. The pool is started and warmed (one frame per worker) before timing."""
    frames = int(source["frames"])
    source = dict(source, frames=frames + workers)  # + the warm-up frames
    cfg = load_config(raw={"source": source, "kernels": kernels, "sinks": [{"kind": "null"}]})
    src = cfg.source_instance()
    src.open()

    def items(n: int, start: int = 0):
        for i in range(n):
            msg = src.next(1.0)
            while not isinstance(msg, Message):  # skip stream markers
                msg = src.next(1.0)
            yield (start + i + 1, msg.parts)

    ctx = mp.get_context("fork")
    t_start = time.perf_counter()
    with ctx.Pool(workers, initializer=_pool_init, initargs=(cfg, str(cache_dir))) as pool:
        list(pool.imap(_pool_task, items(workers), chunksize=1))
        t0 = time.perf_counter()
        n = sum(1 for _ in pool.imap(_pool_task, items(frames, workers), chunksize=1))
        elapsed = time.perf_counter() - t0
    total = time.perf_counter() - t_start
    src.close()
    return {"frames": n, "fps": n / elapsed, "elapsed_s": elapsed, "wall_s": total}
