"""Numba kernels of the view's image path: block binning, binning modules straight into
screen cells, and values to colour-map indices in one pass.

Every kernel leaves non-finite pixels (NaN, +inf, -inf) out: a block without a finite pixel
is NaN. The loops accumulate along rows with branch-free selects so that LLVM vectorises
them; the slow, obvious numpy equivalents are what the tests compare against.
"""

from __future__ import annotations

import numba
import numpy as np

SCALE_CODES = {"linear": 0, "sqrt": 1, "log": 2}
LOG_RANGE = 1000.0  # the log scale is log1p over this many spans' thousandths


@numba.njit(cache=True, nogil=True)
def bin_image(img, factor, use_max):  # pragma: no cover - jitted
    """Mean (or max) of each ``factor x factor`` block, ignoring non-finite pixels (NaN
    where a block has none); partial blocks at the edges use the pixels they have."""
    h, w = img.shape
    oh, ow = (h + factor - 1) // factor, (w + factor - 1) // factor
    out = np.empty((oh, ow), np.float64)
    # Per input column: the sum (or max) and count of finite values over the block's rows.
    acc = np.empty(w, np.float64)
    cnt = np.empty(w, np.int64)
    for i in range(oh):
        acc[:] = -np.inf if use_max else 0.0
        cnt[:] = 0
        for y in range(i * factor, min(h, (i + 1) * factor)):
            row = img[y]
            if use_max:
                for x in range(w):
                    v = float(row[x])
                    ok = v - v == 0.0  # finite: NaN and infinities give NaN here
                    a = acc[x]
                    acc[x] = v if ok and v > a else a
                    cnt[x] += ok
            else:
                for x in range(w):
                    v = float(row[x])
                    ok = v - v == 0.0
                    acc[x] += v if ok else 0.0
                    cnt[x] += ok
        for j in range(ow):
            n = 0
            a = -np.inf if use_max else 0.0
            for x in range(j * factor, min(w, (j + 1) * factor)):
                n += cnt[x]
                a = max(a, acc[x]) if use_max else a + acc[x]
            if n == 0:
                out[i, j] = np.nan
            else:
                out[i, j] = a if use_max else a / n
    return out


@numba.njit(cache=True, nogil=True)
def bin_module_into(
    part, rows, cols, r0, r1, c0, c1, use_max, finite_test, acc, cnt
):  # pragma: no cover
    """Add module ``part`` into the flat binned image ``acc`` (sum, or max when ``use_max``).

    Module pixel ``(r, c)`` belongs to cell ``rows[r] + cols[c]``; only ``r0 <= r < r1``
    and ``c0 <= c < c1`` lie inside the shown region (every offset there is >= 0). With
    ``finite_test`` non-finite pixels are left out and ``cnt`` counts the finite ones;
    without it (integer modules) ``cnt`` is not touched: the counts are the geometry's.
    Consecutive rows of one cell are summed per column first (vectorised), then added to
    the cells once per run of rows.
    """
    n = c1 - c0
    tmp = np.empty(n, np.float64)
    tmpn = np.zeros(n, np.int64)
    r = r0
    while r < r1:
        a = rows[r]
        tmp[:] = -np.inf if use_max else 0.0
        if finite_test:
            tmpn[:] = 0
        while r < r1 and rows[r] == a:
            # A slice indexed from 0: LLVM vectorises this loop, not one indexed c - c0.
            row = part[r, c0:c1]
            if use_max:
                for k in range(n):
                    v = float(row[k])
                    ok = (v - v == 0.0) or not finite_test
                    t = tmp[k]
                    tmp[k] = v if ok and v > t else t
                    tmpn[k] += ok
            elif finite_test:
                for k in range(n):
                    v = float(row[k])
                    ok = v - v == 0.0
                    tmp[k] += v if ok else 0.0
                    tmpn[k] += ok
            else:
                for k in range(n):
                    tmp[k] += float(row[k])
            r += 1
        col = cols[c0:c1]
        for k in range(n):
            cell = a + col[k]
            if use_max:
                acc[cell] = max(acc[cell], tmp[k])
            else:
                acc[cell] += tmp[k]
            if finite_test:
                cnt[cell] += tmpn[k]


@numba.njit(cache=True, nogil=True)
def count_cells(rows, cols, r0, r1, c0, c1, cnt):  # pragma: no cover - jitted
    """Add how many module pixels fall into each cell to ``cnt`` (see ``bin_module_into``)."""
    for r in range(r0, r1):
        a = rows[r]
        for c in range(c0, c1):
            cnt[a + cols[c]] += 1


@numba.njit(cache=True, nogil=True)
def finish_cells(acc, cnt, use_max, out):  # pragma: no cover - jitted
    """``out`` = mean (sum / count) or max of each cell; NaN where no pixel counted."""
    for i in range(acc.size):
        n = cnt[i]
        if n == 0:
            out[i] = np.nan
        else:
            out[i] = acc[i] if use_max else acc[i] / n


@numba.njit(cache=True, nogil=True)
def to_indices(values, vmin, vmax, scale):  # pragma: no cover - jitted
    """Colour-map indices 0..255 of ``values`` (NaN -> 0) in one pass.

    ``scale`` is a ``SCALE_CODES`` value; the arithmetic is that of ``render.scaled``
    step by step, so both give the same indices.
    """
    span = vmax - vmin
    if scale == 1:
        top = np.sqrt(span)
    elif scale == 2:
        top = np.log1p(LOG_RANGE)
    else:
        top = span
    k = 255.0 / top
    per = LOG_RANGE / span
    h, w = values.shape
    out = np.empty((h, w), np.uint8)
    for i in range(h):
        for j in range(w):
            x = values[i, j] - vmin
            if x != x:
                out[i, j] = 0
                continue
            x = min(max(x, 0.0), span)
            if scale == 1:
                x = np.sqrt(x)
            elif scale == 2:
                x = np.log1p(x * per)
            out[i, j] = np.uint8(np.floor(x * k + 0.5))
    return out
