"""A worked example of a kernel that reads the stitched image and writes scalar outputs.

docs/custom-kernel.md walks through this file; tests/test_docs.py runs it after the LAMBDA
stitcher. Use it in a configuration as::

    [kernels.stitch]
    kind = "lambda_stitch"
    [kernels.peak]
    kind = "examples.custom_kernel.image_peak:ImagePeak"
    input = "stitch.image"
    threshold = 150
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from shmpipe.api import ArraySpec, Frame, Kernel, SetupContext


@njit(cache=True, nogil=True)
def image_peak(image, threshold, peak, where, above):
    """The brightest pixel of ``image`` (value into ``peak[0]``, row and column into ``where``)
    and the number of pixels above ``threshold`` (into ``above[0]``)."""
    best = image[0, 0]
    best_r, best_c, n = 0, 0, 0
    rows, cols = image.shape
    for r in range(rows):
        for c in range(cols):
            v = image[r, c]
            if v > best:
                best, best_r, best_c = v, r, c
            if v > threshold:
                n += 1
    # Scalars are written as element 0 of a 1-element view: Numba cannot assign to a 0-d array.
    peak[0] = best
    where[0] = best_r
    where[1] = best_c
    above[0] = n


@dataclass
class ImagePeakParams:
    input: str = "stitch.image"
    """The image to search: an earlier kernel's output (``kernel.output``)."""
    threshold: float = 150.0
    """Counts above which a pixel is counted in ``above``."""


class ImagePeak(Kernel):
    """The brightest pixel of an image, where it is, and how many pixels pass a threshold."""

    Params = ImagePeakParams

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        spec = ctx.available.get(self.params.input)
        if spec is None or len(spec.shape) != 2:
            images = [n for n, s in ctx.available.items() if len(s.shape) == 2]
            raise ValueError(
                f"{self.name}: input {self.params.input!r} is not an image here; "
                f"2-D outputs of earlier kernels: {images or 'none (put a stitcher first)'}"
            )
        image_peak(
            np.zeros((2, 2), spec.dtype),
            0.0,
            np.zeros(1),
            np.zeros(2, np.int64),
            np.zeros(1, np.int64),
        )  # compile now, for the image's dtype
        return [
            ArraySpec("peak", (), "float64", unit="counts"),  # () : one number per frame
            ArraySpec("where", (2,), "int64", long_name="row, column of the peak"),
            ArraySpec("above", (), "int64", unit="pixels"),
        ]

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        image = frame.get(self.params.input)
        # out["peak"] is a 0-d view on the result slot; reshape(1) is a 1-element view on the
        # same memory, which Numba can write.
        image_peak(
            image,
            self.params.threshold,
            out["peak"].reshape(1),
            out["where"],
            out["above"].reshape(1),
        )
