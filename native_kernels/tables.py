"""Integration tables: which bins each pixel feeds, and with what weight.

Our table is a *pixel-ordered* look-up table, not pyFAI's bin-ordered CSR matrix. The CSR
matrix makes the integration a gather (for each bin, read its pixels scattered across the
image); ours makes it a stream (read image and table in memory order, add into a small
histogram that stays in L1/L2 cache). For each pixel we keep:

* no splitting: ``bin`` (uint16 when the bins fit, else int32); ``nbins`` = "trash" for a
  masked or out-of-range pixel;
* bbox splitting: nearly every pixel's bounding box covers one or two bins, and then its two
  weights add up to 1. So per pixel we keep ``bin`` (first bin) and ``coef`` (float32 weight
  of that bin; ``1 - coef`` goes to ``bin + 1``), and the hot loop is branch-free: two
  multiply-adds per pixel. The weights are multiples of 2⁻²² (rounded when the table is
  built: 1.2e-7 at most, below the float32 rounding pyFAI's own tables carry), so that with
  up to 1023 bins a pixel's bin and weights pack into one 32-bit ``word`` (bin in the top 10
  bits, ``1 - coef`` in the low 22): the per-frame loop then reads 4 bytes of table a pixel instead
  of 6, and a LAMBDA 9M frame moves 19 MB less. The rare pixels over three or more bins, or
  clipped at the ends of the range, are *exceptions* stored as explicit lists (``exc_pix``,
  ``exc_ptr``, ``exc_bin``, ``exc_coef``) and added in a second, short loop; in the main table
  they point at the trash bins.

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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

EPS32 = float(np.finfo(np.float32).eps)
COEF_BITS = 22  # bits of a split coefficient (resolution 2.4e-7, as fine as float32's 6e-8 near 1)
COEF_ONE = 1 << COEF_BITS
WORD_MAX_BINS = (1 << (32 - COEF_BITS)) - 1  # the largest nbins whose trash bin fits a word


def upper_bound(x: float) -> float:
    """pyFAI's ``calc_upper_bound``: a value just above ``x`` (one float32 epsilon)."""
    return x * (1.0 + EPS32) if x > 0 else x * (1.0 - EPS32) if x < 0 else EPS32


def bin_range(
    pos_lo: np.ndarray,
    pos_hi: np.ndarray,
    valid: np.ndarray,
    radial_range: tuple[float, float] | None,
    allow_negative: bool,
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
def _bins_bbox(pos, dpos, valid, lo, hi_in, delta, nbins, allow_neg, bin0, coef, exc):
    # pragma: no cover - jitted
    """Main table (bin, c0) for pixels over one or two bins; others flagged in ``exc``.

    exc[k] = 0: regular; > 0: number of bins of an exception pixel (stored separately).
    """
    n = pos.shape[0]
    for k in range(n):
        bin0[k] = nbins
        coef[k] = 1.0
        exc[k] = 0
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
        clipped = b1 >= nbins or b0 < 0
        if b1 >= nbins:
            b1 = nbins - 1
        if b0 < 0:
            b0 = 0
        if b0 == b1:
            bin0[k] = b0
            continue
        if b1 == b0 + 1 and not clipped:
            bin0[k] = b0
            # A multiple of 2**-COEF_BITS in (0, 1]: exact in float32, and packable with the
            # bin into one 32-bit word (see ``pack_words``).
            q = int(((b0 + 1) - f0) / (f1 - f0) * COEF_ONE + 0.5)
            coef[k] = min(max(q, 1), COEF_ONE) / COEF_ONE
            continue
        exc[k] = b1 - b0 + 1


@njit(cache=True, nogil=True)
def _exceptions(pos, dpos, lo, delta, nbins, allow_neg, pix, ptr, ebin, ecoef):
    # pragma: no cover - jitted
    """Explicit (bin, weight) lists of the exception pixels, pyFAI's bbox rule."""
    m = 0
    for i in range(pix.shape[0]):
        k = pix[i]
        x0 = pos[k] - dpos[k]
        x1 = pos[k] + dpos[k]
        if (not allow_neg) and x0 < 0.0:
            x0 = 0.0
        f0 = (x0 - lo) / delta
        f1 = (x1 - lo) / delta
        b0 = max(int(f0), 0)
        b1 = min(int(f1), nbins - 1)
        inv = 1.0 / (f1 - f0)
        ptr[i] = m
        for b in range(b0, b1 + 1):
            ebin[m] = b
            if b == b0:
                ecoef[m] = inv * ((b0 + 1) - f0)
            elif b == b1:
                ecoef[m] = inv * (f1 - b1)
            else:
                ecoef[m] = inv
            m += 1
    ptr[pix.shape[0]] = m


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
    coef : numpy.ndarray or None
        bbox only: weight of ``bin``; ``1 - coef`` goes to ``bin + 1``.
    edges : dict
        ``lo``, ``hi``, ``delta`` (and for 2-D the azimuthal ones) in internal units.
    exc_pix, exc_ptr, exc_bin, exc_coef : numpy.ndarray or None
        bbox only: the exception pixels (flat index), and for exception ``i`` the bins
        ``exc_bin[exc_ptr[i]:exc_ptr[i + 1]]`` with their weights.
    """

    split: str
    nbins: int
    bin: np.ndarray
    coef: np.ndarray | None
    edges: dict
    exc_pix: np.ndarray | None = None
    exc_ptr: np.ndarray | None = None
    exc_bin: np.ndarray | None = None
    exc_coef: np.ndarray | None = None
    word: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        d = {"bin": self.bin}
        if self.split == "bbox":
            d.update(
                coef=self.coef,
                exc_pix=self.exc_pix,
                exc_ptr=self.exc_ptr,
                exc_bin=self.exc_bin,
                exc_coef=self.exc_coef,
            )
        if self.word is not None:
            d["word"] = self.word
        return d

    @classmethod
    def from_arrays(
        cls, split: str, nbins: int, arrays: dict[str, np.ndarray], edges: dict
    ) -> Table:
        return cls(
            split,
            nbins,
            arrays["bin"],
            arrays.get("coef"),
            edges,
            arrays.get("exc_pix"),
            arrays.get("exc_ptr"),
            arrays.get("exc_bin"),
            arrays.get("exc_coef"),
            arrays.get("word"),
        )

    def reshape(self, shape: tuple[int, ...]) -> Table:
        return Table(
            self.split,
            self.nbins,
            self.bin.reshape(shape),
            None if self.coef is None else self.coef.reshape(shape),
            self.edges,
            self.exc_pix,
            self.exc_ptr,
            self.exc_bin,
            self.exc_coef,
            None if self.word is None else self.word.reshape(shape),
        )

    def drop(self, pixels: np.ndarray) -> None:
        """Make the listed pixels (flat indices) contribute nothing."""
        self.bin.reshape(-1)[pixels] = self.nbins
        if self.word is not None:
            self.word.reshape(-1)[pixels] = pack_words(self.bin.reshape(-1)[pixels], 1.0)
        if self.split == "bbox":
            self.coef.reshape(-1)[pixels] = 1.0
            if self.exc_pix.size:
                gone = np.isin(self.exc_pix, pixels)
                if gone.any():
                    keep = ~gone
                    lens = np.diff(self.exc_ptr)
                    entry_keep = np.repeat(keep, lens)
                    self.exc_pix = self.exc_pix[keep]
                    self.exc_bin = self.exc_bin[entry_keep]
                    self.exc_coef = self.exc_coef[entry_keep]
                    self.exc_ptr = np.concatenate([[0], np.cumsum(lens[keep])]).astype(np.int64)

    def contributions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixel, bin, weight) of every nonzero entry: the table as a COO matrix (tests)."""
        b = self.bin.reshape(-1).astype(np.int64)
        keep = b < self.nbins
        pix = np.flatnonzero(keep)
        if self.split == "no":
            return pix, b[keep], np.ones(pix.size)
        c0 = self.coef.reshape(-1)[keep].astype(np.float64)
        two = c0 < 1.0
        pix_all = np.concatenate([pix, pix[two], np.repeat(self.exc_pix, np.diff(self.exc_ptr))])
        bins = np.concatenate([b[keep], b[keep][two] + 1, self.exc_bin.astype(np.int64)])
        w = np.concatenate([c0, 1.0 - c0[two], self.exc_coef.astype(np.float64)])
        order = np.lexsort((bins, pix_all))
        return pix_all[order], bins[order], w[order]


def pack_words(bins: np.ndarray, coef) -> np.ndarray:
    """One uint32 per pixel: ``bin << 22 | (1 − coef) · 2²²`` (coef a multiple of 2⁻²² in
    (0, 1], bin at most ``WORD_MAX_BINS``); ``accumulate.bbox_vector_words`` decodes it.

    The weight of ``bin + 1`` is stored, not that of ``bin``: it lies in [0, 1), so it fits
    the 22 bits as it is (0 for a pixel inside one bin), and decoding is one conversion and
    one multiply."""
    q1 = COEF_ONE - np.rint(np.asarray(coef, np.float64) * COEF_ONE).astype(np.int64)
    return (np.asarray(bins).astype(np.uint32) << np.uint32(COEF_BITS)) | q1.astype(np.uint32)


def build_table_1d(
    pos: np.ndarray,
    dpos: np.ndarray | None,
    valid: np.ndarray,
    npt: int,
    radial_range: tuple[float, float] | None = None,
    allow_negative: bool = False,
) -> Table:
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
        return Table("no", npt, b, None, {"lo": lo, "hi": hi, "delta": delta})
    dpos = np.ascontiguousarray(dpos, dtype=np.float64).reshape(-1)
    lo_arr = pos - dpos
    lo, hi_in, hi = bin_range(lo_arr, pos + dpos, valid, radial_range, allow_negative)
    delta = (hi - lo) / npt
    # bin + 1 must stay addressable for trash pixels: accumulators have nbins + 2 slots.
    dtype = np.uint16 if npt + 1 < np.iinfo(np.uint16).max else np.int32
    b = np.empty(pos.size, dtype=dtype)
    coef = np.empty(pos.size, dtype=np.float32)
    exc = np.empty(pos.size, dtype=np.int32)
    _bins_bbox(pos, dpos, valid, lo, hi_in, delta, npt, allow_negative, b, coef, exc)
    pix = np.flatnonzero(exc).astype(np.int64)
    nent = int(exc[pix].sum())
    ptr = np.empty(pix.size + 1, dtype=np.int64)
    ebin = np.empty(nent, dtype=np.int32)
    ecoef = np.empty(nent, dtype=np.float32)
    _exceptions(pos, dpos, lo, delta, npt, allow_negative, pix, ptr, ebin, ecoef)
    word = pack_words(b, coef) if npt <= WORD_MAX_BINS else None
    edges = {"lo": lo, "hi": hi, "delta": delta}
    return Table("bbox", npt, b, coef, edges, pix, ptr, ebin, ecoef, word)


def build_table_2d(
    rad: np.ndarray,
    chi: np.ndarray,
    valid: np.ndarray,
    npt_rad: int,
    npt_azim: int,
    radial_range=None,
    azimuth_range=None,
    allow_negative: bool = False,
) -> Table:
    """A 2-D (cake) table without pixel splitting: bin = azim_bin * npt_rad + rad_bin."""
    t_rad = build_table_1d(rad, None, valid, npt_rad, radial_range, allow_negative)
    t_chi = build_table_1d(chi, None, valid, npt_azim, azimuth_range, True)
    br = t_rad.bin.astype(np.int64)
    ba = t_chi.bin.astype(np.int64)
    n = npt_rad * npt_azim
    keep = (br < npt_rad) & (ba < npt_azim)
    b = np.where(keep, ba * npt_rad + br, n).astype(np.int32)
    edges = dict(t_rad.edges)
    edges.update(
        {
            "azim_lo": t_chi.edges["lo"],
            "azim_hi": t_chi.edges["hi"],
            "azim_delta": t_chi.edges["delta"],
        }
    )
    return Table("no", n, b, None, edges)


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
def _static_bbox(bins, coef, norm, nbins, epix, eptr, ebin, ecoef, out):
    # pragma: no cover - jitted
    for k in range(bins.shape[0]):
        b = bins[k]
        if b >= nbins:
            continue
        w = np.float64(norm[k])
        c0 = np.float64(coef[k])
        out[b, 0] += c0
        out[b, 1] += c0 * w
        out[b, 2] += c0 * c0 * w * w
        if c0 < 1.0:
            c1 = 1.0 - c0
            out[b + 1, 0] += c1
            out[b + 1, 1] += c1 * w
            out[b + 1, 2] += c1 * c1 * w * w
    for i in range(epix.shape[0]):
        w = np.float64(norm[epix[i]])
        for m in range(eptr[i], eptr[i + 1]):
            c = np.float64(ecoef[m])
            b = ebin[m]
            out[b, 0] += c
            out[b, 1] += c * w
            out[b, 2] += c * c * w * w


def static_sums(table: Table, norm: np.ndarray) -> np.ndarray:
    """Per bin: Σc, Σcω, Σc²ω² over the table's pixels, shape (nbins, 3), float64."""
    out = np.zeros((table.nbins, 3), dtype=np.float64)
    norm = np.ascontiguousarray(norm, dtype=np.float32).reshape(-1)
    if table.split == "no":
        _static_nosplit(table.bin.reshape(-1), norm, table.nbins, out)
    else:
        _static_bbox(
            table.bin.reshape(-1),
            table.coef.reshape(-1),
            norm,
            table.nbins,
            table.exc_pix,
            table.exc_ptr,
            table.exc_bin,
            table.exc_coef,
            out,
        )
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
    """The arrays stored under ``key``, mapped read-only, or None (missing or unreadable:
    rebuilt by the caller).

    Each array is an ``.npy`` file opened with ``mmap_mode="r"``: every worker reading the
    same tables shares one copy in the page cache instead of holding its own (~100 MB for a
    LAMBDA 9M with bbox splitting), and a worker starts without reading them all first.
    """
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"azint-{key}"
    try:
        return {
            f.stem: np.load(f, mmap_mode="r", allow_pickle=False)
            for f in sorted(path.glob("*.npy"))
        } or None
    except Exception:  # missing, truncated, not an npy file...
        return None


def save_cached(cache_dir: str | Path | None, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Store arrays atomically: write a temporary directory next to the final one, then rename.

    Workers racing to build the same table each write their own temporary directory; the
    first rename wins (a directory cannot replace a full one), the others remove theirs, and
    a reader only ever sees a complete set.
    """
    if cache_dir is None:
        return
    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".azint-", suffix=".tmp", dir=d))
    try:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
        final = d / f"azint-{key}"
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            stored = load_cached(cache_dir, key)
            if stored is not None and set(stored) == set(arrays):
                shutil.rmtree(tmp, ignore_errors=True)  # another process stored it first
                return
            # A damaged set (the caller rebuilt because it could not load it): move it aside
            # (a process that mapped its files keeps reading them) and put ours in its place.
            aside = Path(tempfile.mkdtemp(prefix=".azint-", suffix=".old", dir=d))
            os.rename(final, aside / "tables")
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
