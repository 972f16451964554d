"""Integration tables: which bins each pixel feeds, and with what weight.

Our table is a *pixel-ordered* look-up table, not pyFAI's bin-ordered CSR matrix. The CSR
matrix makes the integration a gather (for each bin, read its pixels scattered across the
image); ours makes it a stream (read image and table in memory order, add into a small
histogram that stays in L1/L2 cache). For each pixel we keep:

* no splitting: ``bin`` (uint16 when the bins fit, else int32); ``nbins`` = "trash" for a
  masked or out-of-range pixel;
* bbox splitting: ``bin`` (int32, first bin), ``span`` (uint8, bins touched, 0 = skipped) and
  ``coef`` (float32 × 3: first, middle and last bin weights). A pixel covering ``span`` bins
  gives ``coef[0]`` to the first, ``coef[1]`` to each middle one and ``coef[2]`` to the last,
  which is exactly the CSR row structure of a bounding-box split, without the index array.

The per-bin sums that do not depend on the frame (count Σc, normalisation Σcω, Σc²ω²) are
precomputed from the table and the corrections: per frame only the signal (and variance) is
accumulated, and a pixel masked dynamically (dummy value, NaN) subtracts its static part.

The binning follows pyFAI's ``splitBBoxCSR`` exactly: range = [min, max] of the (bounding
boxes of the) unmasked pixels, the upper bound nudged up by one float32 epsilon so the
largest value falls into the last bin, ``delta = (max - min) / npt``, bin = floor((x - min) /
delta), and bin centres at ``min + (i + ½)·delta``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

EPS32 = float(np.finfo(np.float32).eps)
MAX_SPAN = 255


def upper_bound(x: float) -> float:
    """pyFAI's ``calc_upper_bound``: a value just above ``x`` (one float32 epsilon)."""
    return x * (1.0 + EPS32) if x > 0 else x * (1.0 - EPS32) if x < 0 else EPS32


def bin_range(pos_lo: np.ndarray, pos_hi: np.ndarray, valid: np.ndarray,
              radial_range: tuple[float, float] | None, allow_negative: bool
              ) -> tuple[float, float, float]:
    """(lower, upper_in, upper) of the binned range, in internal units, pyFAI style."""
    if radial_range is not None:
        lo, hi = float(min(radial_range)), float(max(radial_range))
    else:
        if not valid.any():
            raise ValueError("every pixel is masked: nothing to integrate")
        lo, hi = float(pos_lo[valid].min()), float(pos_hi[valid].max())
    if not allow_negative and lo < 0:
        lo = 0.0
    return lo, hi, upper_bound(hi)


@njit(cache=True, nogil=True)
def _bins_nosplit(pos, valid, lo, hi_in, delta, nbins, out):  # pragma: no cover - jitted
    n = pos.shape[0]
    for k in range(n):
        x = pos[k]
        b = nbins
        if valid[k] and x >= lo and x <= hi_in:
            f = (x - lo) / delta
            b = int(f)
            if b < 0 or b >= nbins:
                b = nbins
        out[k] = b


@njit(cache=True, nogil=True)
def _bins_bbox(pos, dpos, valid, lo, hi_in, delta, nbins, allow_neg, bin0, span, coef):
    # pragma: no cover - jitted
    n = pos.shape[0]
    for k in range(n):
        span[k] = 0
        bin0[k] = 0
        coef[k, 0] = 0.0
        coef[k, 1] = 0.0
        coef[k, 2] = 0.0
        if not valid[k]:
            continue
        x0 = pos[k] - dpos[k]
        x1 = pos[k] + dpos[k]
        if (not allow_neg) and x0 < 0.0:
            x0 = 0.0
        if x1 < lo or x0 > hi_in:
            continue
        f0 = (x0 - lo) / delta
        f1 = (x1 - lo) / delta
        b0 = int(f0)
        b1 = int(f1)
        if b1 < 0 or b0 >= nbins:
            continue
        if b1 >= nbins:
            b1 = nbins - 1
        if b0 < 0:
            b0 = 0
        bin0[k] = b0
        if b0 == b1:
            span[k] = 1
            coef[k, 0] = 1.0
            continue
        s = b1 - b0 + 1
        if s > 255:
            # Flagged to the caller: too many bins for one pixel.
            span[k] = 255
            bin0[k] = -1
            continue
        inv = 1.0 / (f1 - f0)
        span[k] = s
        coef[k, 0] = inv * ((b0 + 1) - f0)
        coef[k, 1] = inv
        coef[k, 2] = inv * (f1 - b1)


@dataclass
class Table:
    """A pixel-ordered integration table for ``n`` pixels (see module docstring).

    Attributes
    ----------
    split : str
        "no" or "bbox".
    nbins : int
        Number of output bins (for 2-D: npt_rad * npt_azim, radial fastest).
    bin : numpy.ndarray
        Per pixel: its bin (no split, ``nbins`` = skipped) or first bin (bbox).
    span, coef : numpy.ndarray or None
        bbox only: bins touched (0 = skipped) and the (first, middle, last) weights.
    edges : dict
        ``lo``, ``hi``, ``delta`` (and for 2-D the azimuthal ones) in internal units.
    """

    split: str
    nbins: int
    bin: np.ndarray
    span: np.ndarray | None
    coef: np.ndarray | None
    edges: dict

    def arrays(self) -> dict[str, np.ndarray]:
        d = {"bin": self.bin}
        if self.split == "bbox":
            d["span"] = self.span
            d["coef"] = self.coef
        return d

    def reshape(self, shape: tuple[int, ...]) -> Table:
        return Table(self.split, self.nbins, self.bin.reshape(shape),
                     None if self.span is None else self.span.reshape(shape),
                     None if self.coef is None else self.coef.reshape(*shape, 3), self.edges)

    def contributions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixel, bin, weight) of every nonzero entry: the table as a COO matrix (tests)."""
        b = self.bin.reshape(-1)
        if self.split == "no":
            keep = b < self.nbins
            pix = np.flatnonzero(keep)
            return pix, b[keep].astype(np.int64), np.ones(pix.size)
        span = self.span.reshape(-1).astype(np.int64)
        coef = self.coef.reshape(-1, 3)
        pix = np.repeat(np.arange(b.size), span)
        first = np.repeat(np.cumsum(span) - span, span)
        k = np.arange(pix.size) - first
        bins = b[pix].astype(np.int64) + k
        last = k == span[pix] - 1
        w = np.where(k == 0, coef[pix, 0], np.where(last, coef[pix, 2], coef[pix, 1]))
        return pix, bins, w.astype(np.float64)


def build_table_1d(pos: np.ndarray, dpos: np.ndarray | None, valid: np.ndarray, npt: int,
                   radial_range: tuple[float, float] | None = None,
                   allow_negative: bool = False) -> Table:
    """Build a 1-D table from per-pixel positions (internal units, float64, flat arrays).

    Parameters
    ----------
    pos : numpy.ndarray
        Pixel centre positions.
    dpos : numpy.ndarray or None
        Bounding-box half widths (bbox splitting), or None (no splitting).
    valid : numpy.ndarray of bool
        False for statically masked pixels.
    npt : int
        Number of bins.
    radial_range : (float, float), optional
        Binned range in internal units; default: the extent of the valid pixels.
    allow_negative : bool
        Whether positions may be negative (False for 2θ, q, r: bounding boxes are clipped at 0).
    """
    if npt <= 0:
        raise ValueError(f"npt must be positive, got {npt}")
    pos = np.ascontiguousarray(pos, dtype=np.float64).reshape(-1)
    valid = np.ascontiguousarray(valid, dtype=np.bool_).reshape(-1)
    if dpos is None:
        lo, hi_in, hi = bin_range(pos, pos, valid, radial_range, allow_negative)
        delta = (hi - lo) / npt
        dtype = np.uint16 if npt < np.iinfo(np.uint16).max else np.int32
        b = np.empty(pos.size, dtype=dtype)
        _bins_nosplit(pos, valid, lo, hi_in, delta, npt, b)
        return Table("no", npt, b, None, None, {"lo": lo, "hi": hi, "delta": delta})
    dpos = np.ascontiguousarray(dpos, dtype=np.float64).reshape(-1)
    lo_arr = pos - dpos
    lo, hi_in, hi = bin_range(lo_arr, pos + dpos, valid, radial_range, allow_negative)
    delta = (hi - lo) / npt
    b = np.empty(pos.size, dtype=np.int32)
    span = np.empty(pos.size, dtype=np.uint8)
    coef = np.empty((pos.size, 3), dtype=np.float32)
    _bins_bbox(pos, dpos, valid, lo, hi_in, delta, npt, allow_negative, b, span, coef)
    if (b < 0).any():
        raise ValueError(f"a pixel spans more than {MAX_SPAN} bins: use fewer bins (npt={npt})")
    return Table("bbox", npt, b, span, coef, {"lo": lo, "hi": hi, "delta": delta})


def build_table_2d(rad: np.ndarray, chi: np.ndarray, valid: np.ndarray, npt_rad: int,
                   npt_azim: int, radial_range=None, azimuth_range=None,
                   allow_negative: bool = False) -> Table:
    """A 2-D (cake) table without pixel splitting: bin = azim_bin * npt_rad + rad_bin."""
    t_rad = build_table_1d(rad, None, valid, npt_rad, radial_range, allow_negative)
    t_chi = build_table_1d(chi, None, valid, npt_azim, azimuth_range, True)
    br = t_rad.bin.astype(np.int64)
    ba = t_chi.bin.astype(np.int64)
    n = npt_rad * npt_azim
    keep = (br < npt_rad) & (ba < npt_azim)
    b = np.where(keep, ba * npt_rad + br, n).astype(np.int32)
    edges = dict(t_rad.edges)
    edges.update({"azim_lo": t_chi.edges["lo"], "azim_hi": t_chi.edges["hi"],
                  "azim_delta": t_chi.edges["delta"]})
    return Table("no", n, b, None, None, edges)


# -- static per-bin sums ---------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _static_nosplit(bins, norm, nbins, out):  # pragma: no cover - jitted
    for k in range(bins.shape[0]):
        b = bins[k]
        if b < nbins:
            w = np.float64(norm[k])
            out[b, 0] += 1.0
            out[b, 1] += w
            out[b, 2] += w * w


@njit(cache=True, nogil=True)
def _static_bbox(bin0, span, coef, norm, out):  # pragma: no cover - jitted
    for k in range(bin0.shape[0]):
        s = span[k]
        if s == 0:
            continue
        w = np.float64(norm[k])
        b = bin0[k]
        for j in range(s):
            c = np.float64(coef[k, 0] if j == 0 else (coef[k, 2] if j == s - 1 else coef[k, 1]))
            out[b + j, 0] += c
            out[b + j, 1] += c * w
            out[b + j, 2] += c * c * w * w


def static_sums(table: Table, norm: np.ndarray) -> np.ndarray:
    """Per bin: Σc, Σcω, Σc²ω² over the table's pixels, shape (nbins, 3), float64."""
    out = np.zeros((table.nbins, 3), dtype=np.float64)
    norm = np.ascontiguousarray(norm, dtype=np.float32).reshape(-1)
    if table.split == "no":
        _static_nosplit(table.bin.reshape(-1), norm, table.nbins, out)
    else:
        _static_bbox(table.bin.reshape(-1), table.span.reshape(-1),
                     table.coef.reshape(-1, 3), norm, out)
    return out


# -- on-disk cache -----------------------------------------------------------------------------


def cache_key(**parts) -> str:
    """A hex digest of JSON-able parameters and numpy arrays (hashed by content)."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(parts):
        v = parts[name]
        h.update(name.encode())
        if isinstance(v, np.ndarray):
            h.update(str((v.shape, v.dtype.str)).encode())
            h.update(np.ascontiguousarray(v).view(np.uint8).reshape(-1).data)
        else:
            h.update(json.dumps(v, sort_keys=True, default=str).encode())
    return h.hexdigest()


def load_cached(cache_dir: str | Path | None, key: str) -> dict[str, np.ndarray] | None:
    """The arrays stored under ``key``, or None (missing or unreadable: rebuilt by the caller)."""
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"azint-{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def save_cached(cache_dir: str | Path | None, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store arrays atomically: write a temporary file in the same directory, then rename.

    Workers racing to build the same table each write their own temporary file; whichever
    rename lands last wins, and a reader only ever sees a complete file.
    """
    if cache_dir is None:
        return
    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".azint-", suffix=".npz.tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, d / f"azint-{key}.npz")
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
