"""The per-frame loops of the integrator: stream pixels, add signal (and variance) into bins.

Each call handles one *segment*: a 2-D image view (a module part, or the region of an
assembled image a module occupies, possibly strided) together with the table rows of the same
shape. Only the frame-dependent sums are accumulated here; see :mod:`native_kernels.tables`.

Accumulators are float64 (as pyFAI's) with ``ncopy`` interleaved copies: neighbouring pixels
usually fall into the same bin, and a single copy would chain every addition on the previous
one through memory (load, add, store, load...). Alternating copies lets additions overlap.

Layout of ``acc``: (ncopy, nbins + 1, 2) with [signal, variance]; bin ``nbins`` is a trash bin
for masked pixels so the hot loop has no branch for them. ``removed``: (nbins + 1, 3) with the
static contributions [Σc, Σcω, Σc²ω²] of pixels masked by the frame itself (dummy, NaN).
"""

from __future__ import annotations

import numpy as np
from numba import njit

NCOPY = 2


@njit(cache=True, nogil=True, inline="always")
def _is_dummy(raw, check_dummy, dummy, delta_dummy):  # pragma: no cover - jitted
    if not check_dummy:
        return False
    if delta_dummy == 0.0:
        return raw == dummy
    return abs(raw - dummy) <= delta_dummy


@njit(cache=True, nogil=True)
def accumulate_nosplit(img, bins, dark, use_dark, norm, check_dummy, dummy, delta_dummy,
                       poisson, nbins, acc, removed):  # pragma: no cover - jitted
    """No pixel splitting. ``img``, ``bins``, ``dark``, ``norm``: 2-D, same shape.

    ``dark`` and ``norm`` are read only when used (dark subtraction; a pixel masked by the
    frame needs its static normalisation to be removed from the precomputed sums).
    """
    rows, cols = img.shape
    for r in range(rows):
        for c in range(cols):
            b = bins[r, c]
            raw = np.float32(img[r, c])
            sig = raw
            var = raw if raw > 1.0 else np.float32(1.0)
            if use_dark:
                d = dark[r, c]
                sig = raw - d
                var = var + d
            bad = _is_dummy(raw, check_dummy, dummy, delta_dummy) or not np.isfinite(sig)
            if bad:
                if b < nbins:
                    w = np.float64(norm[r, c])
                    removed[b, 0] += 1.0
                    removed[b, 1] += w
                    removed[b, 2] += w * w
                continue
            k = c & (NCOPY - 1)
            acc[k, b, 0] += sig
            if poisson:
                acc[k, b, 1] += var


@njit(cache=True, nogil=True)
def accumulate_bbox(img, bin0, span, coef, dark, use_dark, norm, check_dummy, dummy,
                    delta_dummy, poisson, nbins, acc, removed):  # pragma: no cover - jitted
    """Bounding-box splitting: a pixel adds c·signal (and c²·variance) to each bin it spans."""
    rows, cols = img.shape
    for r in range(rows):
        for c in range(cols):
            s = span[r, c]
            if s == 0:
                continue
            b = bin0[r, c]
            raw = np.float32(img[r, c])
            sig = raw
            var = raw if raw > 1.0 else np.float32(1.0)
            if use_dark:
                d = dark[r, c]
                sig = raw - d
                var = var + d
            k = c & (NCOPY - 1)
            bad = _is_dummy(raw, check_dummy, dummy, delta_dummy) or not np.isfinite(sig)
            if bad:
                w = np.float64(norm[r, c])
                for j in range(s):
                    cj = np.float64(coef[r, c, 0] if j == 0 else (
                        coef[r, c, 2] if j == s - 1 else coef[r, c, 1]))
                    removed[b + j, 0] += cj
                    removed[b + j, 1] += cj * w
                    removed[b + j, 2] += cj * cj * w * w
                continue
            if s == 1:
                acc[k, b, 0] += sig
                if poisson:
                    acc[k, b, 1] += var
                continue
            c0 = np.float64(coef[r, c, 0])
            acc[k, b, 0] += c0 * sig
            if poisson:
                acc[k, b, 1] += c0 * c0 * var
            cm = np.float64(coef[r, c, 1])
            for j in range(1, s - 1):
                acc[k, b + j, 0] += cm * sig
                if poisson:
                    acc[k, b + j, 1] += cm * cm * var
            c2 = np.float64(coef[r, c, 2])
            acc[k, b + s - 1, 0] += c2 * sig
            if poisson:
                acc[k, b + s - 1, 1] += c2 * c2 * var


@njit(cache=True, nogil=True)
def azimuthal_variance(img, bin0, span, coef, split, dark, use_dark, norm, check_dummy, dummy,
                       delta_dummy, nbins, mean, out):  # pragma: no cover - jitted
    """Second pass of the "azimuthal" error model: Σ c²·(signal − ω·mean_bin)² per bin.

    That is Σ c²ω²(x − x̄)² with x = signal/ω, the spread of the pixels around the mean of
    the bin they feed. ``split`` is False for no-splitting tables (``bin0`` holds the bin).
    """
    rows, cols = img.shape
    for r in range(rows):
        for c in range(cols):
            if split:
                s = span[r, c]
                if s == 0:
                    continue
            else:
                s = 1
                if bin0[r, c] >= nbins:
                    continue
            b = bin0[r, c]
            raw = np.float32(img[r, c])
            sig = raw
            if use_dark:
                sig = raw - dark[r, c]
            if _is_dummy(raw, check_dummy, dummy, delta_dummy) or not np.isfinite(sig):
                continue
            w = np.float64(norm[r, c])
            for j in range(s):
                if split:
                    cj = np.float64(coef[r, c, 0] if j == 0 else (
                        coef[r, c, 2] if j == s - 1 else coef[r, c, 1]))
                else:
                    cj = 1.0
                d = np.float64(sig) - w * mean[b + j]
                out[b + j] += cj * cj * d * d
