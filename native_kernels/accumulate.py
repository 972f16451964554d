"""The per-frame loops of the integrator: stream pixels, add signal (and variance) into bins.

Each call handles one *segment*: the pixels of one module, either a module part or the region
of an assembled image that module occupies, given as a flat array, the offset of the module's
row 0 and the row stride in elements (negative for a flipped module), with unit column stride
so that LLVM sees a contiguous inner loop; the table rows are 2-D arrays of the module shape.
Only the frame-dependent sums are accumulated here (Σc·signal, Σc²·variance); the static
ones were precomputed (see :mod:`native_kernels.tables`). A pixel the frame itself masks (its
raw value is the dummy, or the signal is NaN/inf) adds its static contributions to
``removed`` so they can be taken back out.

Accumulators are float64 (as pyFAI's) with ``NCOPY`` interleaved copies selected by column:
neighbouring pixels usually fall into the same bin, and a single copy would chain every
addition on the previous one through memory (load, add, store, load...). Measured on a 9.6 Mpx
frame: 1 copy 15.7 ms, 2 copies 12.5 ms, 4 copies 11.7 ms (signal and variance). Shapes:
``accs``/``accv`` (NCOPY, nbins + 2), or for the lean loops one packed ``acc`` (NCOPY,
2 (nbins + 2)) of [signal, variance] pairs: bins ``nbins`` and ``nbins + 1`` are trash bins,
so masked pixels need no branch in the hot loop. ``removed``: (nbins + 2, 3) of [Σc, Σcω, Σc²ω²].

There are two variants of each loop: *lean* (no dark, an exact dummy value or none: the
common streaming case) and *general* (dark, a dummy with a tolerance). Numba does not
reliably hoist the invariant flags out of the loop, and the lean loops are what the
throughput figures are made of. The lean loops compare with the dummy as a float64 (NaN when
there is none): the general loops' ``_is_bad`` test and flag cost 25-90 % more per frame on
a LAMBDA 9M (measured 21.9 vs 17.6 ms on a stitched float32 image, 25.7 vs 13.5 ms on the
uint16 modules), which is most of the gap between the benchmark and the README's chain.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from native_kernels import ntstore
from native_kernels.tables import COEF_BITS, COEF_ONE

NCOPY = 4
COEF_MASK = COEF_ONE - 1
COEF_STEP = 1.0 / COEF_ONE


@intrinsic
def _add4(typingctx, flat, at, x0, x1, x2, x3):
    """``flat[at:at + 4] += (x0, x1, x2, x3)`` as one vector load, add and store.

    Written out as four scalar updates, LLVM keeps them scalar (three instructions each):
    with a pixel's four sums in neighbouring doubles one <4 x double> update does the same
    additions, in the same order, for a third of the instructions (measured on a LAMBDA 9M
    frame: 13.3 -> 12.7 ms, sums bit for bit equal). Building the operands as vectors too
    was slower (the shuffles cost more than the multiplies they save). Call it from the loop
    itself: behind an ``inline="always"`` helper taking the array, the loop ran 9x slower.
    """
    sig = types.void(flat, at, x0, x1, x2, x3)

    def codegen(context, builder, signature, args):
        arr, index, *xs = args
        data = context.make_array(signature.args[0])(context, builder, arr).data
        vt = ir.VectorType(ir.DoubleType(), 4)
        vec = ir.Constant(vt, ir.Undefined)
        for i, x in enumerate(xs):
            vec = builder.insert_element(vec, x, ir.Constant(ir.IntType(32), i))
        ptr = builder.bitcast(builder.gep(data, [index]), vt.as_pointer())
        builder.store(builder.fadd(builder.load(ptr, align=8), vec), ptr, align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def _remove(removed, b, c, w):
    removed[b, 0] += c
    removed[b, 1] += c * w
    removed[b, 2] += c * c * w * w


@njit(cache=True, nogil=True, inline="always")
def _remove_split(removed, b, c0, c1, w):
    """A masked split pixel takes its static parts back out of bins ``b`` and ``b + 1``."""
    _remove(removed, b, c0, w)
    _remove(removed, b + 1, c1, w)


@njit(cache=True, nogil=True, inline="always")
def _is_bad(raw, sig, check_dummy, dummy, delta_dummy):
    if sig - sig != 0.0:  # NaN or inf; constant-folded away for integer images
        return True
    if check_dummy:
        if delta_dummy == 0.0:
            return raw == dummy
        return abs(raw - dummy) <= delta_dummy
    return False


@njit(cache=True, nogil=True)
def nosplit_lean(img, base, s0, bins, norm, dummy, poisson, nbins, acc, removed):
    """No splitting, no dark: Σ signal (and Σ max(signal, 1)); ``dummy`` NaN for none.

    ``acc`` is packed (NCOPY, 2 (nbins + 2)): [signal, variance] of bin b at 2b, 2b + 1.
    """
    rows, cols = bins.shape
    for r in range(rows):
        o = base + r * s0
        for c in range(cols):
            b = bins[r, c]
            v = np.float64(np.float32(img[o + c]))
            if v - v != 0.0 or v == dummy:
                if b < nbins:
                    _remove(removed, b, 1.0, np.float64(norm[r, c]))
                continue
            k = c & (NCOPY - 1)
            acc[k, 2 * b] += v
            acc[k, 2 * b + 1] += max(v, 1.0)  # summed even when unused: no branch (bbox_lean)


@njit(cache=True, nogil=True)
def nosplit_general(
    img,
    base,
    s0,
    bins,
    dark,
    dbase,
    ds0,
    use_dark,
    norm,
    check_dummy,
    dummy,
    delta_dummy,
    poisson,
    nbins,
    accs,
    accv,
    removed,
):
    """No splitting with dark subtraction and/or the dummy test."""
    rows, cols = bins.shape
    for r in range(rows):
        o = base + r * s0
        do = dbase + r * ds0
        for c in range(cols):
            b = bins[r, c]
            raw = np.float32(img[o + c])
            sig = raw
            var = raw if raw > 1.0 else np.float32(1.0)
            if use_dark:
                sig = raw - dark[do + c]
            if _is_bad(raw, sig, check_dummy, dummy, delta_dummy):
                if b < nbins:
                    _remove(removed, b, 1.0, np.float64(norm[r, c]))
                continue
            k = c & (NCOPY - 1)
            accs[k, b] += sig
            if poisson:
                accv[k, b] += var


@njit(cache=True, nogil=True)
def bbox_lean(img, base, s0, bins, coef, norm, dummy, poisson, nbins, acc, removed):
    """bbox splitting, no dark: c0 to ``bin`` and 1 - c0 to ``bin + 1``; ``dummy`` NaN for
    none (a NaN compares unequal to every pixel, so the test costs one compare, no flag).

    ``acc`` is packed (NCOPY, 2 (nbins + 2)): [signal, variance] of bin b at 2b, 2b + 1, so a
    pixel's four sums are four neighbouring doubles, updated as one vector (:func:`_add4`;
    measured on a LAMBDA 9M frame with Poisson errors: 14.7 ms with separate signal and
    variance arrays, 13.1 ms packed, 12.7 ms with the vector update).
    """
    rows, cols = bins.shape
    stride = acc.shape[1]
    flat = acc.reshape(-1)  # C-contiguous: a view
    for r in range(rows):
        o = base + r * s0
        for c in range(cols):
            b = bins[r, c]
            v = np.float64(np.float32(img[o + c]))
            c0 = np.float64(coef[r, c])
            c1 = 1.0 - c0
            if v - v != 0.0 or v == dummy:
                if b < nbins:
                    _remove_split(removed, b, c0, c1, np.float64(norm[r, c]))
                continue
            # The variance is summed even when unused: no branch on ``poisson`` in the loop.
            var = max(v, 1.0)
            at = (c & (NCOPY - 1)) * stride + 2 * b
            _add4(flat, at, c0 * v, c0 * c0 * var, c1 * v, c1 * c1 * var)


@njit(cache=True, nogil=True)
def bbox_lean_words(img, base, s0, words, norm, dummy, nbins, acc, removed):
    """:func:`bbox_lean` reading one packed word per pixel (``tables.pack_words``): the
    bin in the top ``32 - COEF_BITS`` bits, the weight of ``bin + 1``, ``c1``, as
    ``low bits · 2⁻²²`` (exact, as is ``c0 = 1 - c1``).

    Four bytes of table per pixel instead of six: 19 MB less memory traffic per LAMBDA 9M
    frame, for a shift, a mask and a conversion more per pixel; the four sums of a pixel are
    one vector update (:func:`_add4`).
    """
    rows, cols = words.shape
    stride = acc.shape[1]
    flat = acc.reshape(-1)  # C-contiguous: a view
    for r in range(rows):
        o = base + r * s0
        for c in range(cols):
            w = np.int64(words[r, c])
            b = w >> COEF_BITS
            v = np.float64(np.float32(img[o + c]))
            c1 = np.float64(w & COEF_MASK) * COEF_STEP
            c0 = 1.0 - c1
            if v - v != 0.0 or v == dummy:
                if b < nbins:
                    _remove_split(removed, b, c0, c1, np.float64(norm[r, c]))
                continue
            var = max(v, 1.0)
            at = (c & (NCOPY - 1)) * stride + 2 * b
            _add4(flat, at, c0 * v, c0 * c0 * var, c1 * v, c1 * c1 * var)


@njit(cache=True, nogil=True)
def bbox_general(
    img,
    base,
    s0,
    bins,
    coef,
    dark,
    dbase,
    ds0,
    use_dark,
    norm,
    check_dummy,
    dummy,
    delta_dummy,
    poisson,
    nbins,
    accs,
    accv,
    removed,
):
    """bbox splitting with dark subtraction and/or the dummy test."""
    rows, cols = bins.shape
    for r in range(rows):
        o = base + r * s0
        do = dbase + r * ds0
        for c in range(cols):
            b = bins[r, c]
            raw = np.float32(img[o + c])
            sig = raw
            var = raw if raw > 1.0 else np.float32(1.0)
            if use_dark:
                sig = raw - dark[do + c]
            c0 = np.float64(coef[r, c])
            c1 = 1.0 - c0
            if _is_bad(raw, sig, check_dummy, dummy, delta_dummy):
                if b < nbins:
                    w = np.float64(norm[r, c])
                    _remove(removed, b, c0, w)
                    _remove(removed, b + 1, c1, w)
                continue
            k = c & (NCOPY - 1)
            accs[k, b] += c0 * sig
            accs[k, b + 1] += c1 * sig
            if poisson:
                accv[k, b] += c0 * c0 * var
                accv[k, b + 1] += c1 * c1 * var


@njit(cache=True, nogil=True)
def bbox_exceptions(
    img,
    base,
    s0,
    first,
    pix,
    ptr,
    ebin,
    ecoef,
    lo,
    hi,
    dark,
    dbase,
    ds0,
    use_dark,
    norm,
    check_dummy,
    dummy,
    delta_dummy,
    poisson,
    accs,
    accv,
    removed,
):
    """The exception pixels ``lo:hi`` of a segment whose first flat pixel index is ``first``."""
    cols = norm.shape[1]
    for i in range(lo, hi):
        li = pix[i] - first
        r = li // cols
        c = li - r * cols
        o = base + r * s0
        do = dbase + r * ds0
        raw = np.float32(img[o + c])
        sig = raw
        var = raw if raw > 1.0 else np.float32(1.0)
        if use_dark:
            sig = raw - dark[do + c]
        bad = _is_bad(raw, sig, check_dummy, dummy, delta_dummy)
        w = np.float64(norm[r, c])
        for m in range(ptr[i], ptr[i + 1]):
            cm = np.float64(ecoef[m])
            b = ebin[m]
            if bad:
                _remove(removed, b, cm, w)
            else:
                accs[0, b] += cm * sig
                if poisson:
                    accv[0, b] += cm * cm * var


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
