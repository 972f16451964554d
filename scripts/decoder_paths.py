"""Time each way of decoding the bitshuffle-LZ4 modules of a LAMBDA 9M frame, side by side.

The paths, each in fresh processes, alternated over rounds (the best frame of each process, the
best process of each path kept: on a shared machine a path timed in one burst can lose to a
neighbour's activity):

* ``python-api``: ``bitshuffle.decompress_lz4`` (allocates each module), copied into the slot;
* ``library-<build>``: the library's ``bshuf_decompress_lz4`` called through ctypes per module
  into the slot (after our Python-side checks, as ``decompress_into`` did before the block loop);
* ``loop-<build>``: ``native_kernels.bslz4_decode``'s compiled block loop with that build's LZ4
  and untranspose routines, or its LZ4 and ``native_kernels.bit_untranspose``;
* ``decompress_into``: what the pipeline runs (the block loop with the build chosen here).

``<build>`` is each installed build of the library: the ``bitshuffle`` wheel, hdf5plugin's.
Prints CPU ms per frame and GB/s of decoded modules per core (12 modules of 516 x 1556 uint16,
Poisson counts), with the CPU model. Usage::

    PYTHONPATH=. python scripts/decoder_paths.py [rounds] [frames]
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import time

import numpy as np

SHAPE = (516, 1556)
MODULES = 12


def _frame() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rate = np.linspace(0.5, 20.0, SHAPE[1])[None, :].repeat(SHAPE[0], 0)
    from native_kernels.compression import compress

    mods = [np.random.default_rng(i).poisson(rate).astype(np.uint16) for i in range(MODULES)]
    return mods, [compress(m) for m in mods]


def _runner(path: str, payloads: list[np.ndarray], slot: np.ndarray):
    from native_kernels import bslz4_decode
    from native_kernels.compression import decompress_into

    block = 4096
    builds = {b.name: b for b in bslz4_decode.builds()}
    if path == "decompress_into":
        return lambda: [decompress_into(p, slot[i]) for i, p in enumerate(payloads)]
    if path == "python-api":
        import bitshuffle

        def run():
            for i, p in enumerate(payloads):
                slot[i] = bitshuffle.decompress_lz4(p, SHAPE, slot.dtype, block)

        return run
    kind, name = path.split("-", 1)
    build = builds[name]
    if kind == "loop":
        return lambda: [
            bslz4_decode.decode_into(p, 0, slot[i], block, build) for i, p in enumerate(payloads)
        ]
    fn = ctypes.CDLL(build.path).bshuf_decompress_lz4
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_size_t] * 3
    n = SHAPE[0] * SHAPE[1]
    return lambda: [
        fn(p.ctypes.data, slot[i].ctypes.data, n, 2, block) for i, p in enumerate(payloads)
    ]


def child(path: str, frames: int) -> None:
    """Time one path in this process; print its best frame as JSON."""
    mods, payloads = _frame()
    slot = np.empty((MODULES, *SHAPE), np.uint16)
    run = _runner(path, payloads, slot)
    run()
    assert all(np.array_equal(slot[i], m) for i, m in enumerate(mods)), path
    best = float("inf")
    for _ in range(frames):
        t = time.thread_time()
        run()
        best = min(best, time.thread_time() - t)
    print(json.dumps({"path": path, "s": best, "bytes": slot.nbytes}))


def main(rounds: int = 6, frames: int = 30) -> None:
    from native_kernels import bslz4_decode
    from native_kernels.cpu import cpu_model

    builds = bslz4_decode.builds()
    names = [b.name for b in builds]
    library = [b.name for b in builds if not b.own_untranspose]  # the library's whole decoder
    paths = ["python-api", *(f"library-{n}" for n in library), *(f"loop-{n}" for n in names)]
    paths.append("decompress_into")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    best: dict[str, float] = {}
    nbytes = 0
    for r in range(rounds):
        for path in paths if r % 2 == 0 else paths[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", path, str(frames)],
                capture_output=True, text=True, env=env, check=True,
            ).stdout  # fmt: skip
            got = json.loads(out.strip().splitlines()[-1])
            best[path] = min(best.get(path, float("inf")), got["s"])
            nbytes = got["bytes"]
    print(f"CPU: {cpu_model()}; {rounds} rounds alternating fresh processes, best of each path")
    print(f"{'path':24s} {'ms/frame':>9s} {'GB/s out':>9s}")
    for path in paths:
        print(f"{path:24s} {best[path] * 1e3:9.2f} {nbytes / best[path] / 1e9:9.2f}")
    print("decoder chosen in this process:", bslz4_decode.choice(2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main(*(int(a) for a in sys.argv[1:3]))
