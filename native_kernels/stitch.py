"""Stitching: module parts -> one assembled image, gaps set to the dummy value.

Fast path (modules placed without rotation or left-right flip, output of the input dtype or
float32, x86-64): the image is written once, front to back, in whole 64-byte cache lines with
streaming stores (:mod:`native_kernels.ntstore`), from a precomputed list of runs covering the
flattened image (a module row, or a gap). Ordinary stores first read each line they write;
streaming ones do not, which is what brings stitching close to the speed of a plain copy
(measured on a 9.6 Mpx frame: 1.55 ms to uint16, 2.1 ms to float32, copy of the module bytes
1.35 ms; ordinary stores took 2.5 and 3.8 ms).

General path (rotated modules, flat-field or mask): each present module is copied into a
strided view of the image indexed like the module (:meth:`ModulePlacement.module_view`), so
rotations and flips cost only strides; gaps are filled from a list of row runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import carray, njit

from native_kernels import ntstore
from native_kernels.geometry import DetectorGeometry

INPUT_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint32))


@njit(cache=True, nogil=True)
def _copy_rows(src, dst, base, s0, s1):  # pragma: no cover - jitted
    rows, cols = src.shape
    if s1 == 1:
        for r in range(rows):
            o = base + r * s0
            d = dst[o : o + cols]
            for c in range(cols):
                d[c] = src[r, c]
    else:
        for r in range(rows):
            o = base + r * s0
            for c in range(cols):
                dst[o + c * s1] = src[r, c]


@njit(cache=True, nogil=True)
def _copy_rows_corrected(src, dst, base, s0, s1, flat, use_flat, mask, use_mask, dummy):
    # pragma: no cover - jitted
    rows, cols = src.shape
    for r in range(rows):
        o = base + r * s0
        for c in range(cols):
            v = src[r, c] * flat[r, c] if use_flat else src[r, c]
            if use_mask and mask[r, c] != 0:
                v = dummy
            dst[o + c * s1] = v


@njit(cache=True, nogil=True)
def _fill_runs(dst, runs, value):  # pragma: no cover - jitted
    for k in range(runs.shape[0]):
        s = runs[k, 0]
        e = s + runs[k, 1]
        for i in range(s, e):
            dst[i] = value


@njit(cache=True, nogil=True, inline="always")
def _line_out(dst, line, mode, src, sbyte, item):  # pragma: no cover - jitted
    """Stream one 64-byte line of dst (starting at element ``line``) from ``src`` bytes."""
    if mode == 0:
        ntstore.nt_copy64(dst, line * item, src, sbyte)
    elif mode == 1:
        ntstore.nt_u16_to_f32_line(dst, line * item, src, sbyte)
    else:
        ntstore.nt_u32_to_f32_line(dst, line * item, src, sbyte)


@njit(cache=True, nogil=True)
def _stitch_stream(addrs, like, npx, dst, shift, runs, mode, pattern, temp):  # pragma: no cover
    """Write the whole image in order, in whole 64-byte lines, with streaming stores.

    ``runs`` covers the flattened image in order: (start, length, module or -1 for a gap,
    first source element). Lines inside one run are streamed straight from the module
    (converted on the way) or from ``pattern`` (64 bytes of the dummy value); lines that
    straddle a run boundary are assembled in ``temp`` (one line) and streamed when complete.
    ``shift`` = (address of dst[0] mod 64) / itemsize: element i starts a line when
    (i + shift) is a multiple of the line length; the partial first and last lines use
    ordinary stores. Modules are C-contiguous arrays given by address (``addrs``; ``like``
    is one of them, for the dtype; ``npx`` elements each).
    """
    item = dst.itemsize
    sitem = like.itemsize
    per = 64 // item
    mask = per - 1  # per is a power of two: masks, not divisions, in the edge loops
    dummy = pattern[0]
    total = dst.shape[0]
    for k in range(runs.shape[0]):
        s = runs[k, 0]
        e = s + runs[k, 1]
        mod = runs[k, 2]
        s0 = runs[k, 3] - s  # source element = s0 + destination element
        src = carray(ntstore.pointer_like(addrs[max(mod, 0)], like), (npx,))
        i = s
        # head: finish the line in progress
        while i < e and ((i + shift) & mask) != 0:
            temp[(i + shift) & mask] = src[s0 + i] if mod >= 0 else dummy
            i += 1
            if ((i + shift) & mask) == 0:
                ls = i - per
                if ls >= 0:
                    ntstore.nt_copy64(dst, ls * item, temp, 0)
                else:  # the partial first line: before dst[0] is not ours to write
                    for j in range(0, i):
                        dst[j] = temp[(j + shift) & mask]
        # body: whole lines straight from the source
        if mod >= 0:
            while i + per <= e:
                _line_out(dst, i, mode, src, (s0 + i) * sitem, item)
                i += per
        else:
            while i + per <= e:
                ntstore.nt_copy64(dst, i * item, pattern, 0)
                i += per
        # tail: start the next line
        while i < e:
            temp[(i + shift) & mask] = src[s0 + i] if mod >= 0 else dummy
            i += 1
    last = total - ((total + shift) & mask)
    for j in range(max(last, 0), total):
        dst[j] = temp[(j + shift) & mask]
    ntstore.sfence()


def gap_runs(valid: np.ndarray) -> np.ndarray:
    """(start, length) of every run of invalid pixels in the flattened image, as int64."""
    flat = np.concatenate([[True], valid.reshape(-1), [True]]).astype(np.int8)
    d = np.diff(flat)
    starts = np.flatnonzero(d == -1)
    ends = np.flatnonzero(d == 1)
    return np.stack([starts, ends - starts], axis=1).astype(np.int64)


class Stitcher:
    """Assemble module parts into an image according to a :class:`DetectorGeometry`.

    Parameters
    ----------
    geometry : DetectorGeometry
    input_dtype : dtype
        uint16 or uint32, the dtype of the parts.
    output_dtype : dtype or "same"
        float32 (default) or the input dtype (``"same"``).
    flat : array_like, optional
        Per-module multiplicative flat-field, shape (n_present, rows, cols) (the LAMBDA
        software's convention: corrected = raw * flatfield). Forces a float output.
    mask : array_like, optional
        Per-module pixel mask, same shape, nonzero = bad pixel (written as dummy).
    dummy : float, optional
        Gap value; defaults to the geometry's.
    """

    def __init__(
        self,
        geometry: DetectorGeometry,
        input_dtype: np.dtype | str = np.uint16,
        output_dtype: np.dtype | str = np.float32,
        flat: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        dummy: float | None = None,
    ) -> None:
        self.geometry = geometry
        self.input_dtype = np.dtype(input_dtype)
        if self.input_dtype not in INPUT_DTYPES:
            raise TypeError(f"parts must be uint16 or uint32, not {self.input_dtype}")
        self.output_dtype = (
            self.input_dtype if str(output_dtype) == "same" else np.dtype(output_dtype)
        )
        if self.output_dtype.kind not in "fu":
            raise TypeError(f"output dtype must be float or unsigned, not {self.output_dtype}")
        n = len(geometry.present)
        mshape = (n, *geometry.module_shape)
        self.flat = None if flat is None else np.ascontiguousarray(flat, dtype=np.float32)
        self.mask = None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8)
        for name, arr in (("flat", self.flat), ("mask", self.mask)):
            if arr is not None and arr.shape != mshape:
                raise ValueError(
                    f"{name} must have shape {mshape} (present modules), not {arr.shape}"
                )
        if self.flat is not None and self.output_dtype.kind != "f":
            raise TypeError("a flat-field correction needs a float output dtype")
        self.dummy = geometry.dummy if dummy is None else float(dummy)
        if self.output_dtype.kind == "u" and (
            self.dummy < 0
            or self.dummy > np.iinfo(self.output_dtype).max
            or self.dummy != int(self.dummy)
        ):
            raise ValueError(f"dummy {self.dummy} does not fit {self.output_dtype}")
        self.shape = geometry.shape
        self.part_shape = geometry.module_shape
        self.n_parts = n
        self._runs = gap_runs(geometry.valid_mask())
        # Offset and element strides of each module's view in the flattened image.
        probe = np.empty(self.shape, dtype=np.uint8)
        self._layout = []
        for v in geometry.module_views(probe):
            base = v.__array_interface__["data"][0] - probe.__array_interface__["data"][0]
            self._layout.append((base, v.strides[0], v.strides[1]))
        self._dummy_typed = self.output_dtype.type(self.dummy)
        # Streaming path: every module placed with unit column stride (no rotation and no
        # left-right flip; up-down flips are fine), same dtype or uint -> float32, x86-64.
        if self.output_dtype == self.input_dtype:
            self._mode = 0
        elif self.output_dtype == np.float32:
            self._mode = 1 if self.input_dtype == np.uint16 else 2
        else:
            self._mode = -1
        self.streaming = (
            ntstore.AVAILABLE and self._mode >= 0 and all(s1 == 1 for _, _, s1 in self._layout)
        )
        if self.streaming:
            self._stream_runs = self._runs_in_order()
            self._pattern = np.full(
                64 // self.output_dtype.itemsize, self.dummy, dtype=self.output_dtype
            )
            self._temp = np.empty_like(self._pattern)
        self._empty_f = np.ones((1, 1), np.float32)
        self._empty_m = np.zeros((1, 1), np.uint8)

    def _runs_in_order(self) -> np.ndarray:
        """(start, length, module or -1, source start) covering the flat image in order."""
        width = self.shape[1]
        cols = self.part_shape[1]
        spans = []  # (dst start, module, src start) of every module row
        for k, (base, s0, _) in enumerate(self._layout):
            for r in range(self.part_shape[0]):
                spans.append((base + r * s0, k, r * cols))
        spans.sort()
        runs = []
        pos = 0
        for start, k, src in spans:
            if start > pos:
                runs.append((pos, start - pos, -1, 0))
            runs.append((start, cols, k, src))
            pos = start + cols
        total = self.shape[0] * width
        if total > pos:
            runs.append((pos, total - pos, -1, 0))
        return np.array(runs, dtype=np.int64)

    def check_parts(self, parts: Sequence[np.ndarray]) -> None:
        """Raise ValueError/TypeError unless ``parts`` match the geometry."""
        if len(parts) != self.n_parts:
            raise ValueError(f"expected {self.n_parts} module parts, got {len(parts)}")
        for i, p in enumerate(parts):
            if p.shape != self.part_shape:
                raise ValueError(f"part {i} has shape {p.shape}, expected {self.part_shape}")
            if p.dtype != self.input_dtype:
                raise TypeError(f"part {i} has dtype {p.dtype}, expected {self.input_dtype}")

    def __call__(self, parts: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """Stitch ``parts`` into ``out`` (allocated if None) and return it."""
        self.check_parts(parts)
        if out is None:
            out = np.empty(self.shape, dtype=self.output_dtype)
        elif out.shape != self.shape or out.dtype != self.output_dtype:
            raise ValueError(
                f"out must be {self.shape} {self.output_dtype}, not {out.shape} {out.dtype}"
            )
        if not out.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        dst = out.reshape(-1)
        corrected = self.flat is not None or self.mask is not None
        addr = out.ctypes.data
        if (
            self.streaming
            and not corrected
            and addr % out.dtype.itemsize == 0
            and all(p.flags.c_contiguous for p in parts)
        ):
            addrs = np.array([p.ctypes.data for p in parts], dtype=np.int64)
            _stitch_stream(
                addrs,
                parts[0],
                parts[0].size,
                dst,
                (addr % 64) // out.itemsize,
                self._stream_runs,
                self._mode,
                self._pattern,
                self._temp,
            )
            return out
        for k, (p, (base, s0, s1)) in enumerate(zip(parts, self._layout, strict=True)):
            # Offsets and strides were measured on a uint8 probe, so bytes == elements.
            b, r, c = base, s0, s1
            if corrected:
                _copy_rows_corrected(
                    p,
                    dst,
                    b,
                    r,
                    c,
                    self.flat[k] if self.flat is not None else self._empty_f,
                    self.flat is not None,
                    self.mask[k] if self.mask is not None else self._empty_m,
                    self.mask is not None,
                    self._dummy_typed,
                )
            else:
                _copy_rows(p, dst, b, r, c)
        _fill_runs(dst, self._runs, self._dummy_typed)
        return out


def stitch(
    parts: Sequence[np.ndarray],
    geometry: DetectorGeometry | None = None,
    output_dtype: np.dtype | str = np.float32,
    flat: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Assemble module parts into one image (convenience wrapper around :class:`Stitcher`).

    Parameters
    ----------
    parts : sequence of numpy.ndarray
        One (rows, cols) uint16 or uint32 array per present module, in geometry order.
    geometry : DetectorGeometry, optional
        Defaults to the 12-module LAMBDA 9M layout.
    output_dtype : dtype or "same"
    flat, mask : numpy.ndarray, optional
        Per-module flat-field (multiplicative) and pixel mask, shape (n_parts, rows, cols).
    out : numpy.ndarray, optional
        Destination image.

    Returns
    -------
    numpy.ndarray
        The assembled image, gaps set to the geometry's dummy value.
    """
    geometry = geometry or DetectorGeometry.default_lambda9m()
    if not parts:
        raise ValueError("no parts to stitch")
    st = Stitcher(geometry, parts[0].dtype, output_dtype, flat, mask)
    return st(parts, out)
