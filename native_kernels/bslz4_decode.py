"""bitshuffle-LZ4 decoding in one compiled loop over the blocks, with the library's own routines.

A bitshuffle-LZ4 payload is a run of blocks (4-byte big-endian compressed length, LZ4 data)
and a verbatim tail. The library's ``bshuf_decompress_lz4`` decodes them, but called per module
from Python it needs our separate walk over the block lengths first (the library trusts them:
a garbage length crashes it) and it goes through OpenMP and a malloc per block. Here one
Numba loop walks the blocks, checks each length against the payload, LZ4-decodes the block into
a small buffer that stays in L1 (``LZ4_decompress_safe``: bounded by the block's size whatever
the bytes say) and bit-untransposes it into the destination, with the library's
``bshuf_untrans_bit_elem`` or with :mod:`native_kernels.bit_untranspose` (twice as fast on
AMD EPYC family 25, three times where counts stay below 256). LZ4 stays the library's.

Two builds of the library may be installed: the ``bitshuffle`` wheel's extension and
hdf5plugin's HDF5 filter. They differ in compiler, LZ4 version and SIMD path (on AMD EPYC family
25 the wheel's AVX2 untranspose lost to hdf5plugin's SSE2 one), so :func:`chosen_build` times
each once per process on a probe module, interleaved, with the library's untranspose and with
the compiled one, and keeps the registry's first unless another is ``engine_choice.MARGIN``
faster, as the integrator chooses its engines.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from native_kernels import ntstore
from native_kernels.bit_untranspose import (
    interleave_planes,
    nonzero_planes,
    untranspose_planes,
)
from native_kernels.cpu import cpu_model
from native_kernels.engine_choice import MARGIN, TIMING_ROUNDS, timer

log = logging.getLogger(__name__)

STREAM = True  # the compiled untranspose writes whole lines with streaming stores


@dataclass(frozen=True)
class Bslz4Build:
    """One installed build of the bitshuffle library (its name and two routines' addresses),
    or its LZ4 with :mod:`native_kernels.bit_untranspose`."""

    name: str
    path: str
    lz4_decompress_safe: int
    untrans_bit_elem: int
    own_untranspose: bool = False  # the library's LZ4, our compiled bit untranspose


def _load(name: str, path: str) -> Bslz4Build | None:
    try:
        lib = ctypes.CDLL(path)
        lz4 = ctypes.cast(lib.LZ4_decompress_safe, ctypes.c_void_p).value
        untrans = ctypes.cast(lib.bshuf_untrans_bit_elem, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None
    if not lz4 or not untrans:
        return None
    return Bslz4Build(name, path, int(lz4), int(untrans))


@functools.lru_cache(maxsize=1)
def builds() -> tuple[Bslz4Build, ...]:
    """The installed builds, the default first: the ``bitshuffle`` wheel, then hdf5plugin's,
    then each one's LZ4 with the compiled untranspose."""
    found = []
    try:
        import bitshuffle.ext

        found.append(_load("bitshuffle", bitshuffle.ext.__file__))
    except ImportError:
        pass
    try:
        import hdf5plugin  # imports h5py, which loads the HDF5 library the filter links

        found.append(_load("hdf5plugin", os.path.join(hdf5plugin.PLUGIN_PATH, "libh5bshuf.so")))
    except ImportError:
        pass
    found = [b for b in found if b is not None]
    own = [
        dataclasses.replace(b, name=f"{b.name} LZ4, compiled untranspose", own_untranspose=True)
        for b in found
    ]
    return tuple(found + own)


def _c_call(ret_bits: int, int_bits: int, doc: str):
    """An intrinsic ``call(fn, src, dst, x, y)`` calling the C function at address ``fn`` as
    ``int<ret_bits> f(void *src, void *dst, int<int_bits> x, int<int_bits> y)``.

    The address is an argument, not a constant: the compiled loop is cached on disk and serves
    whichever build (and wherever it is mapped) the process chose.
    """

    @intrinsic
    def call(typingctx, fn, src, dst, x, y):
        sig = getattr(types, f"int{ret_bits}")(fn, src, dst, x, y)

        def codegen(context, builder, signature, args):
            f, s, d, *xy = args
            i8p = ir.IntType(8).as_pointer()
            it = ir.IntType(int_bits)
            fnty = ir.FunctionType(ir.IntType(ret_bits), [i8p, i8p, it, it])
            conv = [builder.inttoptr(s, i8p), builder.inttoptr(d, i8p)]
            conv += [builder.trunc(v, it) if int_bits < 64 else v for v in xy]
            return builder.call(builder.inttoptr(f, fnty.as_pointer()), conv)

        return sig, codegen

    call.__doc__ = doc
    return call


_call_lz4 = _c_call(32, 32, "``LZ4_decompress_safe(src, dst, src_size, capacity)``")
_call_untrans = _c_call(64, 64, "``bshuf_untrans_bit_elem(src, dst, size, elem_size)``")


@njit(cache=True, nogil=True, inline="always")
def block_length(buf, pos):  # pragma: no cover - jitted
    """The 4-byte big-endian compressed length of the block at ``buf[pos]``."""
    return (
        (np.int64(buf[pos]) << 24)
        | (np.int64(buf[pos + 1]) << 16)
        | (np.int64(buf[pos + 2]) << 8)
        | np.int64(buf[pos + 3])
    )


@njit(cache=True, nogil=True)
def _decode(  # pragma: no cover - jitted
    buf, start, out, wide, itemsize, block, scratch, planes, staged, lz4, untrans, own, stream
):
    """Decode ``buf[start:]`` into the bytes ``out`` (``wide``: the same memory as unsigned
    elements); the end offset, or -1 if it does not fit. ``own``: untranspose with
    :mod:`native_kernels.bit_untranspose` (element sizes 1, 2 and 4), not the library."""
    n = np.int64(buf.shape[0])
    n_elem = np.int64(out.shape[0]) // itemsize
    src = buf.ctypes.data
    dst = out.ctypes.data
    tmp = scratch.ctypes.data
    words = scratch.view(np.uint64)
    plane_words = planes.view(np.uint64)
    staged_bytes = staged.view(np.uint8)
    own = own and (itemsize == 1 or itemsize == 2 or itemsize == 4)
    pos = np.int64(start)
    done = np.int64(0)
    while n_elem - done >= 8:
        b = min(np.int64(block), n_elem - done)
        b -= b % 8
        if pos + 4 > n:
            return -1
        length = block_length(buf, pos)
        pos += 4
        nbytes = b * itemsize
        if length <= 0 or pos + length > n or nbytes > scratch.shape[0]:
            return -1
        if _call_lz4(lz4, src + pos, tmp, length, nbytes) != nbytes:
            return -1
        if own:
            # counts mostly below 256: only the low byte plane holds bits (the test reads
            # the block once more, in L1; the untranspose is most of the decoding)
            count = nonzero_planes(words, b, itemsize)
            untranspose_planes(scratch, plane_words, b, count)
            if stream:
                interleave_planes(planes, staged, 0, b, count)
                _stream(staged_bytes, out, done * itemsize, nbytes)
            else:
                interleave_planes(planes, wide, done, b, count)
        elif _call_untrans(untrans, tmp, dst + done * itemsize, b, np.int64(itemsize)) < 0:
            return -1
        pos += length
        done += b
    if stream:
        ntstore.sfence()
    tail = (n_elem - done) * itemsize
    if pos + tail != n:
        return -1
    for k in range(tail):
        out[done * itemsize + k] = buf[pos + k]
    return pos + tail


@njit(cache=True, nogil=True)
def _stream(src, out, at, nbytes):  # pragma: no cover - jitted
    """``out[at:at + nbytes] = src[:nbytes]``, the whole 64-byte lines of ``out`` with
    streaming stores (no read for ownership of lines the next stage reads from memory anyway),
    the partial lines at either end with ordinary ones."""
    head = min((-(out.ctypes.data + at)) & 63, nbytes)
    for k in range(head):
        out[at + k] = src[k]
    lines = (nbytes - head) // 64
    for i in range(lines):
        ntstore.nt_copy64(out, at + head + 64 * i, src, head + 64 * i)
    for k in range(head + 64 * lines, nbytes):
        out[at + k] = src[k]


def decode_into(
    buf: np.ndarray, start: int, out: np.ndarray, block: int, build: Bslz4Build
) -> bool:
    """Decode the blocks of ``buf[start:]`` (uint8) into C-contiguous ``out``.

    Parameters
    ----------
    buf : numpy.ndarray
        The payload, uint8, contiguous.
    start : int
        Offset of the first block (after any header).
    out : numpy.ndarray
        Destination, C-contiguous; its size and dtype say how many elements of what size.
    block : int
        Elements per bitshuffle block (a positive multiple of 8).
    build : Bslz4Build
        Whose LZ4 and untranspose routines to call.

    Returns
    -------
    bool
        False if the payload does not decode to exactly ``out`` (truncated, corrupt, wrong
        size); ``out`` may then be partly written.

    Raises
    ------
    ValueError
        ``buf`` not contiguous uint8, or ``out`` not C-contiguous.
    """
    if not (out.flags.c_contiguous and buf.flags.c_contiguous and buf.dtype == np.uint8):
        raise ValueError("decode_into needs a contiguous uint8 payload and a C-contiguous out")
    item = out.dtype.itemsize
    scratch, planes, staged = _scratch(block * item)
    flat = out.reshape(-1)
    # the elements as unsigned integers of their size (the compiled untranspose writes them)
    wide = flat.view(f"u{item}") if item in (2, 4) else flat.view(np.uint8)
    staged = staged.view(wide.dtype)  # a block's elements, before they are streamed out
    end = _decode(
        buf, start, flat.view(np.uint8), wide, item, block, scratch, planes, staged,
        build.lz4_decompress_safe, build.untrans_bit_elem, build.own_untranspose,
        STREAM and ntstore.AVAILABLE,
    )  # fmt: skip
    return end >= 0


_PER_THREAD = threading.local()


def _scratch(nbytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A block's decoding buffer and its untransposed byte planes, one pair per thread
    (reused: they stay in cache; per thread, as two threads decoding at once must not share
    them); 8-byte aligned, as the compiled untranspose reads and writes them as words."""
    bufs = getattr(_PER_THREAD, "scratch", None)
    if bufs is None or bufs[0].size < nbytes:
        words = -(-nbytes // 8)
        bufs = _PER_THREAD.scratch = tuple(np.empty(words, np.uint64).view(np.uint8) for _ in "abc")
    return bufs


BSHUF_TARGET_BLOCK_BYTES = 8192  # bitshuffle's default block size, in bytes


def default_block_size(itemsize: int) -> int:
    """bitshuffle's default block size in elements for an element size in bytes."""
    return max(8, (BSHUF_TARGET_BLOCK_BYTES // itemsize) // 8 * 8)


def _probe(itemsize: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A LAMBDA-like module (Poisson counts, 516 x 1556), its payload and block size."""
    import bitshuffle

    dtype = np.dtype(f"u{itemsize}")
    rng = np.random.default_rng(0)
    rate = np.linspace(0.5, 20.0, 1556)[None, :].repeat(516, 0)
    module = rng.poisson(rate).astype(dtype)
    block = default_block_size(itemsize)
    return module, bitshuffle.compress_lz4(module, block), block


def chosen_build(itemsize: int = 2) -> Bslz4Build | None:
    """The fastest installed build on this CPU for elements of ``itemsize`` bytes, timed once
    per process (None where no build could be loaded); see :func:`choice`."""
    return _choose(itemsize)[0]


def choice(itemsize: int = 2) -> dict:
    """The build chosen, how (``"timed"``, ``"only"``) and each build's best time on the probe
    module in ms, shaped as the integrator's engine choices are reported."""
    build, times = _choose(itemsize)
    name = "python fallback" if build is None else build.name
    return {"engine": name, "how": "timed" if times else "only", "times_ms": times}


@functools.lru_cache(maxsize=4)
def _choose(itemsize: int) -> tuple[Bslz4Build | None, dict[str, float]]:
    """Each build decodes a probe module once untimed (compilation, first touch) and must get
    it bit for bit right; then ``TIMING_ROUNDS`` interleaved rounds keep each one's best; the
    registry's first is kept unless another is ``MARGIN`` faster."""
    module, payload, block = _probe(itemsize)
    out = np.empty_like(module)
    usable = []
    for b in builds():
        out[...] = 0
        if decode_into(payload, 0, out, block, b) and np.array_equal(out, module):
            usable.append(b)
        else:
            log.warning(
                "bitshuffle build %s (%s) decodes the probe wrongly: not used", b.name, b.path
            )
    if len(usable) <= 1:
        return (usable[0] if usable else None), {}
    times = {b.name: float("inf") for b in usable}
    for _ in range(TIMING_ROUNDS):
        for b in usable:
            t = timer(lambda b=b: decode_into(payload, 0, out, block, b))
            times[b.name] = min(times[b.name], t * 1e3)
    best = min(usable, key=lambda b: times[b.name])
    if times[best.name] > times[usable[0].name] * (1.0 - MARGIN):
        best = usable[0]
    times = {n: round(t, 3) for n, t in times.items()}
    log.info(
        "bitshuffle-LZ4 decoder on %s: %s (%s)",
        cpu_model(),
        best.name,
        ", ".join(f"{n} {t:.2f} ms" for n, t in times.items()),
    )
    return best, times
