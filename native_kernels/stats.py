"""Frame statistics: sum, maximum, pixels above a threshold (cheap hit finding), ROI sums."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit


# "reassoc" lets LLVM vectorise the sums (partial sums in float64, summed at the end); no
# "nnan"/"ninf", so NaN and inf tests keep their meaning.
@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _stats(img, threshold, use_dummy, dummy, out):  # pragma: no cover - jitted
    """Accumulate into out = [sum, max, count_above, n_valid] over a 2-D array.

    Branch-free per pixel (selects, not jumps) so the loop vectorises; NaN/inf and, with
    ``use_dummy``, pixels equal to ``dummy`` are not counted.
    """
    rows, cols = img.shape
    s = out[0]
    m = out[1]
    n_above = out[2]
    n_valid = out[3]
    not_dummy_test = not use_dummy
    for r in range(rows):
        row = img[r]
        for c in range(cols):
            v = np.float64(row[c])
            # bitwise & and |: no short-circuit jumps in the loop body
            ok = (v - v == 0.0) & (not_dummy_test | (v != dummy))
            s += v if ok else 0.0
            w = v if ok else -np.inf
            m = w if w > m else m
            n_above += 1.0 if (ok & (v > threshold)) else 0.0
            n_valid += 1.0 if ok else 0.0
    out[0] = s
    out[1] = m
    out[2] = n_above
    out[3] = n_valid


@njit(cache=True, nogil=True)
def _roi_sums(img, rois, use_dummy, dummy, out):  # pragma: no cover - jitted
    for k in range(rois.shape[0]):
        s = 0.0
        for r in range(rois[k, 0], rois[k, 1]):
            for c in range(rois[k, 2], rois[k, 3]):
                v = np.float64(img[r, c])
                if v - v != 0.0 or (use_dummy and v == dummy):
                    continue
                s += v
        out[k] += s


@dataclass
class FrameStatistics:
    """Statistics of one frame (see :func:`frame_statistics`)."""

    sum: float
    max: float
    count_above: int
    n_valid: int
    roi_sums: np.ndarray


def check_rois(rois: Sequence[Sequence[int]], shape: tuple[int, int]) -> np.ndarray:
    """Validate ROIs ``[y0, y1, x0, x1]`` (half-open) against an image shape; int64 (n, 4)."""
    a = np.asarray(rois, dtype=np.int64).reshape(-1, 4) if len(rois) else np.zeros((0, 4), np.int64)
    for k, (y0, y1, x0, x1) in enumerate(a):
        if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
            raise ValueError(
                f"roi {k} = [{y0}, {y1}, {x0}, {x1}] is empty or outside the "
                f"image {shape} (use [y0, y1, x0, x1], half-open)"
            )
    return a


def frame_statistics(
    data: np.ndarray | Sequence[np.ndarray],
    threshold: float = 0.0,
    rois: Sequence[Sequence[int]] = (),
    dummy: float | None = None,
) -> FrameStatistics:
    """Sum, maximum, count of pixels above ``threshold`` and ROI sums of an image or parts.

    Parameters
    ----------
    data : numpy.ndarray or sequence of numpy.ndarray
        One 2-D image, or module parts (ROIs then refer to the first part's coordinates
        and are not allowed for several parts).
    threshold : float
        Pixels strictly above it are counted.
    rois : sequence of [y0, y1, x0, x1]
        Half-open rectangles whose sums are reported.
    dummy : float, optional
        Pixels of this value (gaps, dead pixels) are ignored; NaN/inf always are.
    """
    arrays = [data] if isinstance(data, np.ndarray) and data.ndim == 2 else list(data)
    roi = check_rois(rois, arrays[0].shape)
    if len(arrays) > 1 and len(roi):
        raise ValueError("ROIs need a single image (stitch first)")
    out = np.array([0.0, -np.inf, 0.0, 0.0])
    rs = np.zeros(len(roi))
    d = float(dummy) if dummy is not None else 0.0
    for a in arrays:
        _stats(a, float(threshold), dummy is not None, d, out)
    if len(roi):
        _roi_sums(arrays[0], roi, dummy is not None, d, rs)
    return FrameStatistics(float(out[0]), float(out[1]), int(out[2]), int(out[3]), rs)
