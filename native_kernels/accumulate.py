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
frame: 1 copy 15.7 ms, 2 copies 12.5 ms, 4 copies 11.7 ms (signal and variance). Shapes
(bins ``nbins`` and ``nbins + 1`` are trash bins, so masked pixels need no branch in the hot
loop):

* no splitting: ``accs``/``accv`` (NCOPY, nbins + 2) (*separate*), or one packed ``acc``
  (NCOPY, 2 (nbins + 2)) of [signal, variance] pairs (*packed*);
* bbox splitting (lean loops): one ``acc`` of *slots* (NCOPY, SLOT (nbins + 2)): the slot of
  bin b sums what pixels whose lower bin is b give, [c0·s, c1·s, c0²·v, c1²·v] (``c1`` parts
  belong to bin b + 1, added there when the copies are summed). A pixel updates one slot of
  its own, never half of another's: with the pair [signal, variance] of bin b + 1 next to
  bin b's, the update of a pixel in bin b + 1 read half of what the previous pixel in bin b
  had just stored, a store-to-load forwarding failure, and the vector loop ran at half speed
  (LAMBDA 9M frame, AMD EPYC family 25 model 1: 20.5 ms against 9.5 ms with slots).

``removed``: (nbins + 2, 3) of [Σc, Σcω, Σc²ω²].

*Lean* loops handle no dark and an exact dummy value or none (the common streaming case);
*general* ones dark and a dummy with a tolerance (Numba does not reliably hoist invariant
flags out of a loop: the general loops' ``_is_bad`` test cost 25-90 % more per frame on a
LAMBDA 9M). The lean loops come in several variants (accumulator layout, table format) whose
speed order differs between CPUs and error models; :mod:`native_kernels.engines` registers
them and chooses per CPU model. All variants add the same numbers in the same order, so
their sums are bit for bit equal.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from native_kernels.tables import COEF_BITS, COEF_ONE

NCOPY = 4
SLOT = 4  # doubles per bin of a bbox accumulator: [c0·s, c1·s, c0²·v, c1²·v]
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


@njit(cache=True, nogil=True, inline="always")
def _is_gone(v, dummy):
    """A lean loop's per-frame mask: NaN/inf, or exactly the dummy value.

    ``dummy`` None is a different compilation (Numba prunes the ``is None`` branch), and for an
    integer image the NaN test folds away too, so such a loop has no test at all: with the
    compare against a NaN dummy left in, the same loop took 6.1-6.9 ms instead of 3.5 ms on a
    5.3 Mpx uint16 frame (AMD EPYC family 25 model 1), the regression against 9d992ba.
    """
    if dummy is None:
        return v - v != 0.0
    return v - v != 0.0 or v == dummy


# Every loop below is a deliberate hot-loop specialisation, named as such in its docstring:
# the lean ones (see the module docstring and native_kernels.engines, which registers them and
# chooses among them per CPU) differ in the accumulator layout and the table format they read,
# the general ones in the splitting; Numba compiles each as a loop of its own, so their bodies
# repeat each other on purpose (an inlined helper taking the array made a loop 9x slower: see
# _add4).


@njit(cache=True, nogil=True)
def nosplit_separate(img, base, s0, bins, norm, dummy, poisson, nbins, accs, accv, removed):
    """No splitting, no dark; signal and variance in separate arrays ``accs``/``accv``.

    Hot-loop specialisation: without Poisson errors LLVM unswitches ``poisson`` and the loop
    makes one update per pixel.
    """
    rows, cols = bins.shape
    for r in range(rows):
        o = base + r * s0
        for c in range(cols):
            b = bins[r, c]
            v = np.float64(np.float32(img[o + c]))
            if _is_gone(v, dummy):
                if b < nbins:
                    _remove(removed, b, 1.0, np.float64(norm[r, c]))
                continue
            k = c & (NCOPY - 1)
            accs[k, b] += v
            if poisson:
                accv[k, b] += max(v, 1.0)


@njit(cache=True, nogil=True)
def nosplit_packed(img, base, s0, bins, norm, dummy, poisson, nbins, acc, removed):
    """Hot-loop specialisation of :func:`nosplit_separate` into one packed ``acc``
    (NCOPY, 2 (nbins + 2)): [signal, variance] of bin b at 2b, 2b + 1, both always summed.
    """
    rows, cols = bins.shape
    for r in range(rows):
        o = base + r * s0
        for c in range(cols):
            b = bins[r, c]
            v = np.float64(np.float32(img[o + c]))
            if _is_gone(v, dummy):
                if b < nbins:
                    _remove(removed, b, 1.0, np.float64(norm[r, c]))
                continue
            k = c & (NCOPY - 1)
            acc[k, 2 * b] += v
            acc[k, 2 * b + 1] += max(v, 1.0)  # summed even when unused: no branch


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
    """No splitting with dark subtraction and/or the dummy test.

    Hot-loop specialisation *general, no splitting*: its pixel read (raw, dark, variance, the
    dummy test) repeats :func:`bbox_general`'s on purpose, each compiled as its own loop; the
    lean loops leave that read out (see the module docstring).
    """
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
def bbox_scalar(img, base, s0, bins, coef, norm, dummy, poisson, nbins, acc, removed):
    """bbox splitting, no dark: a pixel's parts into its slot (see the module docstring), one
    scalar update each: two without Poisson errors (LLVM unswitches ``poisson``), four with.
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
            if _is_gone(v, dummy):
                if b < nbins:
                    _remove_split(removed, b, c0, c1, np.float64(norm[r, c]))
                continue
            at = (c & (NCOPY - 1)) * stride + SLOT * b
            flat[at] += c0 * v
            flat[at + 1] += c1 * v
            if poisson:
                var = max(v, 1.0)
                flat[at + 2] += c0 * c0 * var
                flat[at + 3] += c1 * c1 * var


@njit(cache=True, nogil=True)
def bbox_vector(img, base, s0, bins, coef, norm, dummy, poisson, nbins, acc, removed):
    """Hot-loop specialisation of :func:`bbox_scalar`: a pixel's slot updated as one vector
    (:func:`_add4`), the variance summed even when unused.
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
            if _is_gone(v, dummy):
                if b < nbins:
                    _remove_split(removed, b, c0, c1, np.float64(norm[r, c]))
                continue
            var = max(v, 1.0)
            at = (c & (NCOPY - 1)) * stride + SLOT * b
            _add4(flat, at, c0 * v, c1 * v, c0 * c0 * var, c1 * c1 * var)


@njit(cache=True, nogil=True)
def bbox_vector_words(img, base, s0, words, norm, dummy, poisson, nbins, acc, removed):
    """:func:`bbox_vector` reading one packed word per pixel (``tables.pack_words``): the
    bin in the top ``32 - COEF_BITS`` bits, the weight of ``bin + 1``, ``c1``, as
    ``low bits · 2⁻²²`` (exact, as is ``c0 = 1 - c1``).

    Four bytes of table per pixel instead of six: 19 MB less memory traffic per LAMBDA 9M
    frame, for a shift, a mask and a conversion more per pixel (hot-loop specialisation).
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
            if _is_gone(v, dummy):
                if b < nbins:
                    _remove_split(removed, b, c0, c1, np.float64(norm[r, c]))
                continue
            var = max(v, 1.0)
            at = (c & (NCOPY - 1)) * stride + SLOT * b
            _add4(flat, at, c0 * v, c1 * v, c0 * c0 * var, c1 * c1 * var)


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
    """bbox splitting with dark subtraction and/or the dummy test.

    Hot-loop specialisation *general, bbox*: the pixel read repeats :func:`nosplit_general`'s
    on purpose (one compiled loop per splitting).
    """
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
    """The exception pixels ``lo:hi`` of a segment whose first flat pixel index is ``first``.

    Hot-loop specialisation *exceptions* (the explicit (bin, weight) lists of
    :mod:`native_kernels.tables`): the pixel read repeats :func:`bbox_general`'s on purpose,
    in a loop over a pixel list.
    """
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
