"""The "azimuthal" error model's pass: per bin, the spread of signal/ω around the bin mean.

pyFAI's single-pass weighted update visits pixels in image order, and the result depends
slightly on that order, so this pass walks the assembled image's order (runs along module
rows, see :func:`canvas_runs`) whatever the layout the frame came in.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from native_kernels import ntstore
from native_kernels.accumulate import _is_bad


@njit(cache=True, nogil=True, inline="always")
def _welford(state, b, w, x):
    """One step of pyFAI's single-pass azimuthal variance for bin ``b``.

    state[b] = (Σw, weighted mean, V) with weight w = c·ω and value x = signal/ω; the first
    pixel only sets the mean, later ones add w²·(x − mean_before)·(x − mean_after). This is
    what pyFAI's Cython CSR engine accumulates (checked against it to 1e-8 on a one-module
    detector); the result depends slightly on pixel order, which is image order here.
    """
    sw = state[b, 0]
    if sw == 0.0:
        state[b, 0] = w
        state[b, 1] = x
        return
    m = state[b, 1]
    sw2 = sw + w
    m2 = m + (w / sw2) * (x - m)
    state[b, 0] = sw2
    state[b, 1] = m2
    state[b, 2] += w * w * (x - m) * (x - m2)


@njit(cache=True, nogil=True)
def canvas_runs(order, cols):
    """Group module pixels listed in image order into runs along module rows.

    ``order`` holds module-order flat indices (module, row, column) sorted by their position
    in the assembled image. Returns (start index, length, step ±1) rows: consecutive image
    pixels that are consecutive in one module row (reversed for a flipped module).
    """
    n = order.shape[0]
    out = np.empty((n, 3), dtype=np.int64)
    m = 0
    i = 0
    while i < n:
        q = order[i]
        length = 1
        step = 1
        if i + 1 < n:
            d = order[i + 1] - q
            if (d == 1 and (q % cols) + 1 < cols) or (d == -1 and (q % cols) > 0):
                step = d
                while i + length < n and order[i + length] - order[i + length - 1] == step:
                    c = (order[i + length - 1] % cols) + step
                    if c < 0 or c >= cols:
                        break
                    length += 1
        out[m, 0] = q
        out[m, 1] = length
        out[m, 2] = step
        m += 1
        i += length
    return out[:m]


@njit(cache=True, nogil=True)
def azimuthal_variance(
    runs,
    npx,
    cols,
    like,
    addrs,
    bases,
    strides,
    dlike,
    daddrs,
    dbases,
    dstrides,
    use_dark,
    bins,
    coef,
    split,
    exc_of,
    eptr,
    ebin,
    ecoef,
    norm,
    check_dummy,
    dummy,
    delta_dummy,
    nbins,
    state,
):
    """The "azimuthal" error model: per bin, the spread of the pixel values x = signal/ω
    around the bin mean, in one pass (see :func:`_welford`), visiting pixels in image order
    as pyFAI does (the update depends on the order). ``runs`` come from :func:`canvas_runs`;
    the image (and dark) of module k is read at address ``addrs[k]`` + (``bases[k]`` + r ·
    ``strides[k]`` + c) · itemsize; ``bins``/``coef``/``norm``/``exc_of`` are flat in module
    order; ``exc_of`` (bbox) gives a pixel's exception number or -1.
    """
    item = like.itemsize
    ditem = dlike.itemsize
    for k in range(runs.shape[0]):
        q0 = runs[k, 0]
        mod = q0 // npx
        li = q0 - mod * npx
        r = li // cols
        c0 = li - r * cols
        step = runs[k, 2]
        ab = addrs[mod] + (bases[mod] + r * strides[mod]) * item
        db = daddrs[mod] + (dbases[mod] + r * dstrides[mod]) * ditem
        for j in range(runs[k, 1]):
            c = c0 + j * step
            q = q0 + j * step
            raw = np.float32(ntstore.pointer_like(ab + c * item, like)[0])
            sig = raw
            if use_dark:
                sig = raw - ntstore.pointer_like(db + c * ditem, dlike)[0]
            if _is_bad(raw, sig, check_dummy, dummy, delta_dummy):
                continue
            w = np.float64(norm[q])
            x = np.float64(sig) / w
            b = bins[q]
            if b < nbins:
                c0w = np.float64(coef[q]) if split else 1.0
                _welford(state, b, c0w * w, x)
                if c0w < 1.0:
                    _welford(state, b + 1, (1.0 - c0w) * w, x)
            elif split and exc_of[q] >= 0:
                e = exc_of[q]
                for m in range(eptr[e], eptr[e + 1]):
                    _welford(state, ebin[m], np.float64(ecoef[m]) * w, x)


class ImageOrder:
    """A plan's pixels in assembled-image order (runs along module rows), built on first use.

    Parameters
    ----------
    plan : RadialPlan
        The plan whose geometry and table are walked.
    """

    def __init__(self, plan) -> None:
        self.plan = plan
        self._runs = None
        self._exc_of = None

    def runs(self) -> np.ndarray:
        p = self.plan
        if self._runs is None:
            order = np.argsort(p.geometry.module_pixel_index().reshape(-1), kind="stable")
            self._runs = canvas_runs(order.astype(np.int64), p.part_shape[1])
            if p.split == "bbox":
                exc_of = np.full(p.n_parts * p.npx, -1, dtype=np.int32)
                exc_of[p.table.exc_pix] = np.arange(p.table.exc_pix.size, dtype=np.int32)
                self._exc_of = exc_of
        return self._runs

    def sum_variance(self, f) -> np.ndarray:
        """Per bin, the azimuthal model's Σ variance of one frame (``engines.FrameArgs``)."""
        p = self.plan
        runs = self.runs()
        state = np.zeros((p.nbins + 2, 3), dtype=np.float64)
        t = p.table
        split = p.split == "bbox"

        def addressing(views):
            return tuple(
                np.array([v[i] if i else v[0].ctypes.data for v in views], dtype=np.int64)
                for i in range(3)
            )

        a, b, st = addressing(f.segments)
        da, db, dst = addressing(f.darks)
        azimuthal_variance(
            *(runs, p.npx, p.part_shape[1], f.segments[0][0], a, b, st),
            *(f.darks[0][0], da, db, dst, f.use_dark, t.bin.reshape(-1)),
            t.coef.reshape(-1) if split else np.zeros(1, np.float32),
            split,
            self._exc_of if split else np.zeros(1, np.int32),
            t.exc_ptr if split else np.zeros(1, np.int64),
            t.exc_bin if split else np.zeros(1, np.int32),
            t.exc_coef if split else np.zeros(1, np.float32),
            p.norm.reshape(-1),
            *(f.check_dummy, f.dummy32, f.delta32, p.nbins, state),
        )
        return state[: p.nbins, 2].copy()
