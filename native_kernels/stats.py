"""Frame statistics: sum, maximum, pixels above a threshold (cheap hit finding), ROI sums."""

from __future__ import annotations

import functools
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


# The float32 path (a stitched canvas): the loop above does not vectorise (its maximum is a
# compare-and-select chain across four reductions), 18-20 ms for a 9.4 Mpx canvas. Split per
# row into a sum-and-count loop on the floats and a maximum on the bits as ordered integers
# (no fast-math flag can touch NaN handling there), each of which vectorises; the row is in
# L1 for the second loop, so memory is still read once.
_F32_EXPONENT = 0x7F800000
_INT32_MIN = -(2**31)


@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _row_sum_counts(row, threshold, dummy):  # pragma: no cover - jitted
    # float32 counters keep every lane the width of the pixels (1.2 ms less a 9.4 Mpx frame
    # than int64 ones); exact while a row is shorter than 2**24 (accumulate_stats checks).
    s = 0.0
    n_above = np.float32(0.0)
    n_valid = np.float32(0.0)
    one, zero = np.float32(1.0), np.float32(0.0)
    for c in range(row.shape[0]):
        v = row[c]
        ok = (v - v == 0) & (v != dummy)  # dummy NaN: nothing is a dummy
        s += np.float64(v) if ok else 0.0
        n_above += one if (ok & (v > threshold)) else zero
        n_valid += one if ok else zero
    return s, n_above, n_valid


@njit(cache=True, nogil=True)
def _row_max_key(bits, dummy_mask, dummy_bits, m):  # pragma: no cover - jitted
    """Largest order key of the valid pixels of a row of float32 bits (int32).

    Every step is cast back to int32: Numba types int32 arithmetic with an int literal as
    int64, and the loop then ran in 64-bit lanes (a 2484 x 4728 canvas: 4.5 ms against 2.8,
    AMD EPYC family 25 model 1, interleaved in one process).
    """
    exponent = np.int32(_F32_EXPONENT)
    none = np.int32(_INT32_MIN)
    low31 = np.int32(0x7FFFFFFF)
    m = np.int32(m)
    for c in range(bits.shape[0]):
        b = bits[c]
        ok = ((b & exponent) != exponent) & ((b & dummy_mask) != dummy_bits)
        # float order as signed-integer order
        key = np.int32(b ^ np.int32(np.int32(b >> np.int32(31)) & low31))
        key = key if ok else none
        m = np.int32(max(m, key))
    return m


@njit(cache=True, nogil=True)
def _stats_f32(img, bits, threshold, dummy, dummy_mask, dummy_bits, out):  # pragma: no cover
    s = 0.0
    n_above = 0
    n_valid = 0
    m = np.int32(_INT32_MIN)
    for r in range(img.shape[0]):
        a, b, c = _row_sum_counts(img[r], threshold, dummy)
        s += a
        n_above += np.int64(b)
        n_valid += np.int64(c)
        m = _row_max_key(bits[r], dummy_mask, dummy_bits, m)
    out[0] += s
    out[2] += n_above
    out[3] += n_valid
    return m


@functools.lru_cache(maxsize=64)
def _f32_constants(threshold: float, dummy: float | None):
    """Threshold and dummy for comparisons in float32 that agree with float64 ones."""
    with np.errstate(over="ignore"):
        t32 = np.float32(threshold)
    if float(t32) > threshold:
        # v > threshold and v > t32 must agree for every float32 v: the largest float32
        # not above the threshold does that.
        t32 = np.nextafter(t32, np.float32(-np.inf))
    d32, mask, dbits = np.float32(np.nan), np.int32(0), np.int32(1)  # no dummy: never equal
    if dummy is not None and not np.isnan(dummy):
        with np.errstate(over="ignore"):
            candidate = np.float32(dummy)
        if float(candidate) == float(dummy):  # else no float32 pixel can equal it
            d32 = candidate
            if candidate == 0:  # -0.0 == 0.0, as the comparison in the general path says
                mask, dbits = np.int32(0x7FFFFFFF), np.int32(0)
            else:
                mask, dbits = np.int32(-1), np.array([candidate]).view(np.int32)[0]
    return t32, d32, mask, dbits


# The integer path (the detector's own uint16/uint32 modules): integers have no NaN, so one
# pass of compares and selects in int64 gives every statistic at once, and the sum is exact.
_NO_INT = -(2**62)  # a "dummy" no uint16/uint32/int16/int32 pixel can equal


@njit(cache=True, nogil=True)
def _stats_int(img, threshold, dummy, out):  # pragma: no cover - jitted
    """Return (sum, max, count_above, n_valid) as int64 over a 2-D integer array: pixels equal
    to ``dummy`` are left out, ``count_above`` counts those > ``threshold`` (both int64);
    max is ``_NO_INT`` when no pixel is valid."""
    s = np.int64(0)
    n_above = np.int64(0)
    n_valid = np.int64(0)
    m = np.int64(_NO_INT)
    for r in range(img.shape[0]):
        row = img[r]
        for c in range(row.shape[0]):
            v = np.int64(row[c])
            ok = v != dummy
            s += v if ok else 0
            n_above += 1 if (ok & (v > threshold)) else 0
            n_valid += 1 if ok else 0
            m = max(m, v if ok else _NO_INT)
    return s, m, n_above, n_valid


def _int_constants(threshold: float, dummy: float | None) -> tuple[int, int]:
    """Threshold and dummy as int64 such that integer comparisons agree with float ones."""
    t = float(threshold)
    if np.isnan(t):
        t_int = 2**62  # nothing is above NaN
    else:
        t_int = int(min(max(np.floor(t), -(2.0**62)), 2.0**62))  # v > t  <=>  v > floor(t)
    d_int = _NO_INT
    if dummy is not None and np.isfinite(dummy) and float(dummy) == np.floor(dummy):
        if abs(dummy) < 2**62:
            d_int = int(dummy)
    return t_int, d_int


# The detector's own 8- and 16-bit unsigned modules: every statistic of a row fits 32 bits (a
# row shorter than 2**15 pixels), so the loop runs in 32-bit lanes, twice as many a vector as
# _stats_int's int64 ones: a LAMBDA 9M frame (12 uint16 modules) 1.46 ms against 3.12 (AMD
# EPYC family 25 model 1, interleaved, same process). Every operation is cast back to int32 on
# purpose: Numba types int32 + int32 as int64, and the loop would be 64 bits wide again.
_U16_ROW_MAX = 2**15


@njit(cache=True, nogil=True)
def _stats_u16(img, threshold, dummy):  # pragma: no cover - jitted
    """As :func:`_stats_int` for uint8/uint16 rows shorter than ``_U16_ROW_MAX``;
    ``threshold`` in [-1, 65535] and ``dummy`` (-1: none) as int32."""
    s = np.int64(0)
    n_above = np.int64(0)
    n_valid = np.int64(0)
    m = np.int64(_NO_INT)
    t = np.int32(threshold)
    d = np.int32(dummy)
    for r in range(img.shape[0]):
        row = img[r]
        rs = np.int32(0)
        ra = np.int32(0)
        rv = np.int32(0)
        rm = np.int32(0)
        for c in range(row.shape[0]):
            v = np.int32(row[c])
            ok = np.int32(-np.int32(v != d))  # all ones where counted
            above = np.int32(-np.int32(v > t))
            w = np.int32(v & ok)  # 0 where not counted: no pixel is below 0
            rs = np.int32(rs + w)
            ra = np.int32(ra - (ok & above))
            rv = np.int32(rv - ok)
            rm = np.int32(max(rm, w))
        s += rs
        n_above += ra
        n_valid += rv
        if rv:
            m = max(m, np.int64(rm))
    return s, m, n_above, n_valid


def _accumulate_int(img: np.ndarray, threshold: float, dummy: float | None, out) -> None:
    t_int, d_int = _int_constants(threshold, dummy)
    if img.dtype.kind == "u" and img.dtype.itemsize <= 2 and img.shape[1] < _U16_ROW_MAX:
        # v > t for every v in [0, 65535] whatever t below 0 is; nothing above 65535
        t16 = min(max(t_int, -1), 65535)
        d16 = d_int if 0 <= d_int <= 65535 else -1
        s, m, n_above, n_valid = _stats_u16(img, t16, d16)
    else:
        s, m, n_above, n_valid = _stats_int(img, t_int, d_int, out)
    out[0] += float(s)
    if n_valid:
        out[1] = max(out[1], float(m))
    out[2] += n_above
    out[3] += n_valid


def accumulate_stats(img: np.ndarray, threshold: float, dummy: float | None, out) -> None:
    """Add one 2-D array's statistics to ``out = [sum, max, count_above, n_valid]``.

    Pixels that are NaN, +-inf or equal to ``dummy`` are left out; ``count_above`` counts
    pixels strictly above ``threshold``. float32 arrays and integer arrays up to 32 bits take
    vectorised one-pass paths with the same results as the general one (the threshold and the
    dummy are compared exactly; integer sums are exact, so the order does not matter).
    """
    if img.ndim == 2 and img.dtype.kind in "ui" and img.dtype.itemsize <= 4:
        _accumulate_int(img, threshold, dummy, out)
        return
    if (
        img.dtype != np.float32
        or img.ndim != 2
        or not img.flags.c_contiguous
        or img.shape[1] >= 2**24
    ):
        use = dummy is not None
        _stats(img, float(threshold), use, float(dummy) if use else 0.0, out)
        return
    t32, d32, mask, dbits = _f32_constants(float(threshold), dummy)
    key = _stats_f32(img, img.view(np.int32), t32, d32, mask, dbits, out)
    if key != _INT32_MIN:
        k = np.array([key], np.int32)
        k ^= (k >> 31) & 0x7FFFFFFF
        out[1] = max(out[1], float(k.view(np.float32)[0]))


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


def module_rois(geometry, rois: np.ndarray) -> np.ndarray:
    """Map image-coordinate ROIs onto the modules: rows of (roi, part, r0, r1, c0, c1).

    ``rois`` are checked (n, 4) rectangles ``[y0, y1, x0, x1]`` of the assembled image of
    ``geometry`` (a :class:`~native_kernels.geometry.DetectorGeometry`); ``part`` counts the
    present modules in arrival order, and ``r0:r1, c0:c1`` is the part's rectangle whose pixels
    land inside the ROI (flips and quarter turns keep rectangles rectangles). Gap pixels have
    no module: a sum over the parts equals the sum over the stitched image whenever the gaps
    hold the dummy (or zero).
    """
    out = []
    for k, (y0, y1, x0, x1) in enumerate(np.asarray(rois, dtype=np.int64).reshape(-1, 4)):
        for part, i in enumerate(geometry.present):
            m = geometry.modules[i]
            h, w = geometry.placed_shape(m)
            iy0, iy1 = max(int(y0), m.y), min(int(y1), m.y + h)
            ix0, ix1 = max(int(x0), m.x), min(int(x1), m.x + w)
            if iy0 >= iy1 or ix0 >= ix1:
                continue
            inside = np.zeros((h, w), dtype=bool)
            inside[iy0 - m.y : iy1 - m.y, ix0 - m.x : ix1 - m.x] = True
            in_module = m.module_view(inside)
            rows = np.flatnonzero(in_module.any(axis=1))
            cols = np.flatnonzero(in_module.any(axis=0))
            out.append((k, part, rows[0], rows[-1] + 1, cols[0], cols[-1] + 1))
    return np.array(out, dtype=np.int64).reshape(-1, 6)


def roi_sums_on_parts(
    parts: Sequence[np.ndarray], rects: np.ndarray, dummy: float | None, out: np.ndarray
) -> None:
    """Add to ``out[roi]`` the sums of the module rectangles from :func:`module_rois`."""
    use = dummy is not None
    d = float(dummy) if use else 0.0
    d_int = _int_constants(0.0, dummy)[1]
    one = np.zeros(1)
    for k, part, r0, r1, c0, c1 in rects:
        a = parts[part]
        if a.dtype.kind in "ui" and a.dtype.itemsize <= 4:  # exact, vectorised
            out[k] += float(_rect_sum_int(a, r0, r1, c0, c1, d_int))
            continue
        one[0] = 0.0
        _roi_sums(a, rects_as_roi(r0, r1, c0, c1), use, d, one)
        out[k] += one[0]


@njit(cache=True, nogil=True)
def _rect_sum_int(img, r0, r1, c0, c1, dummy):  # pragma: no cover - jitted
    """Sum of the pixels of ``img[r0:r1, c0:c1]`` that are not ``dummy`` (int64, exact)."""
    s = np.int64(0)
    for r in range(r0, r1):
        row = img[r]
        for c in range(c0, c1):
            v = np.int64(row[c])
            s += v if v != dummy else 0
    return s


@functools.lru_cache(maxsize=256)
def rects_as_roi(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """One rectangle as the (1, 4) int64 array ``_roi_sums`` takes (cached: no per-frame
    allocation)."""
    return np.array([[r0, r1, c0, c1]], dtype=np.int64)


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
        accumulate_stats(a, threshold, dummy, out)
    if len(roi):
        _roi_sums(arrays[0], roi, dummy is not None, d, rs)
    return FrameStatistics(float(out[0]), float(out[1]), int(out[2]), int(out[3]), rs)
