"""A worked example of a custom Numba kernel: per-module hot-pixel counts and mean intensity.

docs/custom-kernel.md walks through this file; tests/test_docs.py imports it, checks the Numba
function against numpy and runs it through a real pipeline. Use it in a configuration as::

    [kernels.hot]
    kind = "examples.custom_kernel.hot_pixels:HotPixels"
    threshold = 150
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from shmpipe.api import ArraySpec, Frame, Kernel, SetupContext


# cache=True: compiled once (in the warm-up process) and loaded from the cache by every worker.
# nogil=True: costs nothing here and lets a kernel run beside other threads if one ever does.
@njit(cache=True, nogil=True)
def module_stats(module, threshold, hot, mean, index):
    """Count pixels above ``threshold`` and the mean of one module, into ``hot[index]`` and
    ``mean[index]`` (the output arrays live in shared memory: no allocation per frame)."""
    n_hot = 0
    total = 0.0
    rows, cols = module.shape
    for r in range(rows):
        for c in range(cols):
            v = module[r, c]
            total += v
            if v > threshold:
                n_hot += 1
    hot[index] = n_hot
    mean[index] = total / (rows * cols)


@dataclass
class HotPixelsParams:
    threshold: int = 150
    """Counts above which a pixel is hot (the simulator's brightest ring averages 200)."""


class HotPixels(Kernel):
    """Per detector module: the number of hot pixels and the mean intensity."""

    Params = HotPixelsParams

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        if ctx.parts is None:
            raise ValueError("hot_pixels needs uncompressed modules (put it after a decompressor)")
        self.modules = len(ctx.parts)
        # Compile now, on a tiny array of the real dtype, so no frame pays for compilation.
        dtype = np.dtype(ctx.parts[0].dtype)
        module_stats(np.zeros((2, 2), dtype), 0, np.zeros(1, np.int64), np.zeros(1), 0)
        return [
            ArraySpec("hot", (self.modules,), "int64"),
            ArraySpec("mean", (self.modules,), "float64"),
        ]

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        hot, mean = out["hot"], out["mean"]
        for i, module in enumerate(frame.parts):
            module_stats(module, self.params.threshold, hot, mean, i)
