"""Module payload deserialisation: raw bytes or bitshuffle-LZ4.

Two bitshuffle-LZ4 framings are accepted:

* ``bslz4``: what ``bitshuffle.compress_lz4`` returns: blocks of ``block_size`` elements, each
  a 4-byte big-endian compressed length followed by LZ4 data; the last ``n % 8`` elements
  are stored verbatim at the end.
* ``bslz4_h5``: the same prefixed by the 12-byte header of the HDF5 filter (and Dectris
  streams): uncompressed size in bytes (big-endian uint64) and block size in bytes (uint32).

``auto`` picks by looking at the header. The blocks are decoded by one compiled loop around
the bitshuffle library's own LZ4 and untranspose routines (:mod:`native_kernels.bslz4_decode`,
the library build chosen per CPU), which checks each block length against the payload before
decoding the block: the library trusts the lengths, and a garbage length crashes the process
(measured: a random payload of the right size segfaults ``bitshuffle.decompress_lz4``). Where
no build of the library can be loaded, the block structure is walked and checked first and
``bitshuffle.decompress_lz4`` decodes. A payload that fails the checks, or that the decoder
rejects, raises :class:`PayloadError` for that frame only.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from native_kernels.bslz4_decode import (
    block_length,
    chosen_build,
    decode_into,
    default_block_size,
)

_H5_HEADER = 12


class PayloadError(ValueError):
    """A module payload that is truncated, corrupt or of the wrong size."""


@njit(cache=True, nogil=True)
def _walk_blocks(buf, start, n_elem, itemsize, block):  # pragma: no cover - jitted
    """Return the end offset of the compressed blocks, or -1 if a length does not fit."""
    pos = start
    n = buf.shape[0]
    full = n_elem // block
    rem = n_elem % block
    last = rem - rem % 8
    nblocks = full + (1 if last > 0 else 0)
    bound = block * itemsize + (block * itemsize) // 255 + 16  # LZ4_compressBound
    for _ in range(nblocks):
        if pos + 4 > n:
            return -1
        length = block_length(buf, pos)
        if length <= 0 or length > bound:
            return -1
        pos += 4 + length
        if pos > n:
            return -1
    return pos


def detect_framing(payload: np.ndarray, nbytes: int) -> str:
    """``"raw"``, ``"bslz4_h5"`` or ``"bslz4"`` for a payload expected to decode to nbytes."""
    if payload.size == nbytes:
        return "raw"
    if payload.size >= _H5_HEADER and int.from_bytes(payload[:8].tobytes(), "big") == nbytes:
        return "bslz4_h5"
    return "bslz4"


def decompress_into(
    payload: np.ndarray,
    out: np.ndarray,
    compression: str = "auto",
    block_size: int = 0,
) -> None:
    """Decode one module payload into ``out`` (shape and dtype say what to expect).

    Parameters
    ----------
    payload : numpy.ndarray
        The bytes of one part (any dtype; read as uint8). A part already of ``out``'s shape and
        dtype is copied as is.
    out : numpy.ndarray
        Destination, C-contiguous.
    compression : {"auto", "none", "bslz4", "bslz4_h5"}
    block_size : int
        Elements per bitshuffle block; 0 for bitshuffle's default (or the header's value).

    Raises
    ------
    PayloadError
        Wrong size, truncated or corrupt payload.
    """
    if payload.shape == out.shape and payload.dtype == out.dtype:
        np.copyto(out, payload)
        return
    buf = np.ascontiguousarray(payload).reshape(-1).view(np.uint8)
    kind = detect_framing(buf, out.nbytes) if compression == "auto" else compression
    itemsize = out.dtype.itemsize
    if kind in ("none", "raw"):
        if buf.size != out.nbytes:
            raise PayloadError(f"raw payload of {buf.size} bytes, expected {out.nbytes}")
        out.reshape(-1).view(np.uint8)[:] = buf
        return
    start = 0
    block = block_size or default_block_size(itemsize)
    if kind == "bslz4_h5":
        if buf.size < _H5_HEADER:
            raise PayloadError(f"payload of {buf.size} bytes is shorter than the bslz4 header")
        total = int.from_bytes(buf[:8].tobytes(), "big")
        if total != out.nbytes:
            raise PayloadError(f"bslz4 header says {total} bytes, expected {out.nbytes}")
        hdr_block = int.from_bytes(buf[8:12].tobytes(), "big")
        if hdr_block:
            if hdr_block % itemsize:
                raise PayloadError(
                    f"bslz4 block size {hdr_block} B is not a multiple of "
                    f"the element size {itemsize}"
                )
            block = hdr_block // itemsize
        start = _H5_HEADER
    elif kind != "bslz4":
        raise ValueError(f"unknown compression {compression!r}; use auto, none, bslz4, bslz4_h5")
    if block <= 0 or block % 8:
        raise PayloadError(f"bitshuffle block size {block} must be a positive multiple of 8")
    build = chosen_build(itemsize) if out.flags.c_contiguous else None
    if build is not None:
        # One compiled loop checks each block length and decodes it with the library's own
        # routines, straight into ``out`` (see bslz4_decode).
        if not decode_into(buf, start, out, block, build):
            raise PayloadError(
                f"bitshuffle-LZ4 payload of {buf.size} bytes is truncated or corrupt "
                f"(it does not decode to {out.shape} {out.dtype})"
            )
        return
    n_elem = out.size
    end = _walk_blocks(buf, start, n_elem, itemsize, block)
    tail = (n_elem % 8) * itemsize
    if end < 0 or end + tail != buf.size:
        raise PayloadError(
            f"bitshuffle-LZ4 payload of {buf.size} bytes is truncated or corrupt "
            f"(block structure does not match {out.shape} {out.dtype})"
        )
    import bitshuffle

    try:
        data = bitshuffle.decompress_lz4(buf[start:], out.shape, out.dtype, block)
    except (RuntimeError, ValueError) as exc:
        raise PayloadError(f"bitshuffle-LZ4 payload is corrupt: {exc}") from exc
    np.copyto(out, data)


def compress(module: np.ndarray, framing: str = "bslz4", block_size: int = 0) -> np.ndarray:
    """Encode a module as a bitshuffle-LZ4 payload (for producers, tests and benchmarks)."""
    import bitshuffle

    a = np.ascontiguousarray(module)
    block = block_size or default_block_size(a.dtype.itemsize)
    body = bitshuffle.compress_lz4(a, block)
    if framing == "bslz4":
        return body
    if framing == "bslz4_h5":
        hdr = a.nbytes.to_bytes(8, "big") + (block * a.dtype.itemsize).to_bytes(4, "big")
        return np.concatenate([np.frombuffer(hdr, np.uint8), body])
    raise ValueError(f"unknown framing {framing!r}")
