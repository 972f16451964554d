"""2-D (cake) integration tables with bounding-box pixel splitting, pyFAI's rule.

A pixel's box spans ``[pos - dpos, pos + dpos]`` radially and ``[chi - dchi, chi + dchi]`` in
azimuth; its weight in bin (a, r) is the product of the 1-D bbox weights along each axis
(pyFAI's ``HistoBBox2d``). The table has the layout of :class:`~native_kernels.tables.Table`
with ``bin = azim_bin * npt_rad + rad_bin``: a pixel inside one azimuthal bin and over one or
two radial bins (most pixels away from the beam centre) is a regular entry, ``bin`` and
``bin + 1`` being neighbouring radial bins; every other pixel is an exception with its explicit
list of bins and weights. The per-frame loops are those of the 1-D bbox tables.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from native_kernels.tables import Table, bin_range


@njit(cache=True, nogil=True)
def _chi_delta(center, corners, out):  # pragma: no cover - jitted
    # Differences are taken modulo 2π so a pixel on the χ = ±π cut gets its true width.
    two_pi = 2.0 * math.pi
    nrow, ncol = center.shape
    for i in range(nrow):
        for j in range(ncol):
            c = center[i, j]
            d = 0.0
            for di in range(2):
                for dj in range(2):
                    x = np.float64(corners[i + di, j + dj]) - c
                    e = min(x % two_pi, (-x) % two_pi)
                    d = max(d, e)
            out[i, j] = d


def chi_delta_array(center: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Half-width in χ of each pixel's box (pyFAI's ``deltaChi``), from centre and corners."""
    out = np.empty(center.shape, dtype=np.float64)
    _chi_delta(np.ascontiguousarray(center, np.float64), corners, out)
    return out


@njit(cache=True, nogil=True)
def _axis_span(x0, x1, lo, hi_in, delta, nbins):  # pragma: no cover - jitted
    """(first bin, last bin, f0, f1, clipped) of a box on one axis; first > last: outside.

    The rule of the 1-D bbox tables (and pyFAI): bins by truncation, clipped to the range.
    """
    f0 = (x0 - lo) / delta
    f1 = (x1 - lo) / delta
    b0 = int(f0)
    b1 = int(f1)
    if x1 < lo or x0 > hi_in or b1 < 0 or b0 >= nbins:
        return 1, 0, f0, f1, False
    clipped = b1 >= nbins or b0 < 0
    return max(b0, 0), min(b1, nbins - 1), f0, f1, clipped


@njit(cache=True, nogil=True)
def _weight(b, b0, b1, f0, f1):  # pragma: no cover - jitted
    if b0 == b1:
        return 1.0
    inv = 1.0 / (f1 - f0)
    if b == b0:
        return inv * ((b0 + 1) - f0)
    if b == b1:
        return inv * (f1 - b1)
    return inv


@njit(cache=True, nogil=True)
def _build(
    rad, drad, chi, dchi, valid, rlo, rhi, rdelta, nr, alo, ahi, adelta, na, bins, coef, counts
):  # pragma: no cover - jitted
    """Regular entries into ``bins``/``coef``; per-pixel entry counts of the exceptions."""
    trash = nr * na
    for k in range(rad.shape[0]):
        bins[k] = trash
        coef[k] = 1.0
        counts[k] = 0
        if not valid[k]:
            continue
        x0 = max(rad[k] - drad[k], 0.0)
        r0, r1, f0, f1, rclip = _axis_span(x0, rad[k] + drad[k], rlo, rhi, rdelta, nr)
        a0, a1, g0, g1, aclip = _axis_span(chi[k] - dchi[k], chi[k] + dchi[k], alo, ahi, adelta, na)
        if r0 > r1 or a0 > a1:
            continue
        if a0 == a1 and not rclip and r1 - r0 <= 1:
            bins[k] = a0 * nr + r0
            if r1 > r0:
                coef[k] = ((r0 + 1) - f0) / (f1 - f0)
            continue
        counts[k] = (r1 - r0 + 1) * (a1 - a0 + 1)


@njit(cache=True, nogil=True)
def _fill(
    rad, drad, chi, dchi, rlo, rhi, rdelta, nr, alo, ahi, adelta, na, pix, ptr, ebin, ecoef
):  # pragma: no cover - jitted
    m = 0
    for i in range(pix.shape[0]):
        k = pix[i]
        x0 = max(rad[k] - drad[k], 0.0)
        r0, r1, f0, f1, _ = _axis_span(x0, rad[k] + drad[k], rlo, rhi, rdelta, nr)
        a0, a1, g0, g1, _ = _axis_span(chi[k] - dchi[k], chi[k] + dchi[k], alo, ahi, adelta, na)
        ptr[i] = m
        for a in range(a0, a1 + 1):
            wa = _weight(a, a0, a1, g0, g1)
            for r in range(r0, r1 + 1):
                ebin[m] = a * nr + r
                ecoef[m] = wa * _weight(r, r0, r1, f0, f1)
                m += 1
    ptr[pix.shape[0]] = m


def build_table_2d_bbox(
    rad: np.ndarray,
    drad: np.ndarray,
    chi: np.ndarray,
    dchi: np.ndarray,
    valid: np.ndarray,
    npt_rad: int,
    npt_azim: int,
    radial_range: tuple[float, float] | None = None,
    azimuth_range: tuple[float, float] | None = None,
) -> Table:
    """A 2-D bbox table from per-pixel positions and half widths (internal units, flat).

    Ranges default to the extent of the valid pixels' boxes (radial clipped at 0), the upper
    bound nudged up as pyFAI does.
    """
    if npt_rad <= 0 or npt_azim <= 0:
        raise ValueError(f"npt_rad and npt_azim must be positive, got {npt_rad}, {npt_azim}")

    def flat(a):
        return np.ascontiguousarray(a, dtype=np.float64).reshape(-1)

    rad, drad, chi, dchi = flat(rad), flat(drad), flat(chi), flat(dchi)
    valid = np.ascontiguousarray(valid, dtype=np.bool_).reshape(-1)
    rlo, rhi_in, rhi = bin_range(rad - drad, rad + drad, valid, radial_range, False)
    alo, ahi_in, ahi = bin_range(chi - dchi, chi + dchi, valid, azimuth_range, True)
    rdelta, adelta = (rhi - rlo) / npt_rad, (ahi - alo) / npt_azim
    n = npt_rad * npt_azim
    bins = np.empty(rad.size, dtype=np.int32)
    coef = np.empty(rad.size, dtype=np.float32)
    counts = np.empty(rad.size, dtype=np.int64)
    # Both passes bin by the same radial and azimuthal axes.
    axes = (rlo, rhi_in, rdelta, npt_rad, alo, ahi_in, adelta, npt_azim)
    _build(rad, drad, chi, dchi, valid, *axes, bins, coef, counts)
    pix = np.flatnonzero(counts).astype(np.int64)
    ptr = np.empty(pix.size + 1, dtype=np.int64)
    ebin = np.empty(int(counts.sum()), dtype=np.int32)
    ecoef = np.empty(ebin.size, dtype=np.float32)
    _fill(rad, drad, chi, dchi, *axes, pix, ptr, ebin, ecoef)
    edges = {
        "lo": rlo,
        "hi": rhi,
        "delta": rdelta,
        "azim_lo": alo,
        "azim_hi": ahi,
        "azim_delta": adelta,
    }
    return Table("bbox", n, bins, coef, edges, pix, ptr, ebin, ecoef)
