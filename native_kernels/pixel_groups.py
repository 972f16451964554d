"""The bbox loop over groups of four pixels: their products as vectors, one slot update each.

A pixel of the lean bbox loops (:mod:`native_kernels.accumulate`) costs about 35 scalar
instructions, most of them for the four products ``c0·s, c1·s, c0²·v, c1²·v`` and for
assembling them into the vector that updates the pixel's slot. Four neighbouring pixels
have their values, weights and products side by side instead: one vector load each of the
pixels and of the weights, one vector operation per product for all four, a 4 × 4 transpose
(eight shuffles) that turns "one product of four pixels" into "four products of one pixel",
and four slot updates, about 12 instructions a pixel. Pixel ``j`` of a group goes to
accumulator copy ``j`` (the groups start at column 0, so ``c & 3 == j``), and each copy
receives the same products in the same order as from the scalar loops: the sums are bit for
bit theirs.

A group with a pixel that is gone (the dummy value, or NaN/inf) updates nothing and is
handled pixel by pixel, as are the last ``cols % 4`` pixels of a row. Measured on a LAMBDA 9M
frame (uint16 modules, dummy 0, Poisson errors; AMD EPYC family 25 model 1, same run): 10.1 ms
against 19.5 ms for the one-pixel vector loop and 28.4 ms for the scalar one. LLVM does not
vectorise this by itself (the four slot addresses are data dependent), so the group is an
intrinsic written in LLVM IR (llvmlite), as :func:`native_kernels.accumulate._add4` is.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from native_kernels.accumulate import NCOPY, SLOT, _add4, _is_gone, _remove_split

_I1 = ir.IntType(1)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F4 = ir.VectorType(ir.FloatType(), 4)
_D4 = ir.VectorType(ir.DoubleType(), 4)
_D2 = ir.VectorType(ir.DoubleType(), 2)


def _lanes(*idx: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(idx)), [ir.Constant(_I32, i) for i in idx])


def _load4(builder, base, index, element, align: int):
    """Four neighbouring elements from ``base[index]`` as one vector load."""
    ptr = builder.bitcast(builder.gep(base, [index]), ir.VectorType(element, 4).as_pointer())
    return builder.load(ptr, align=align)


def _pixels(builder, raw, dtype) -> ir.Value:
    """The scalar loops' ``float64(float32(pixel))`` for four pixels at once."""
    if isinstance(dtype, types.Float):
        as32 = raw if dtype.bitwidth == 32 else builder.fptrunc(raw, _F4)
    elif dtype.signed:
        as32 = builder.sitofp(raw, _F4)
    else:
        as32 = builder.uitofp(raw, _F4)
    return builder.fpext(as32, _D4)


def _any_gone(builder, v, dtype, dummy_type, dummy) -> ir.Value:
    """Whether any of the four values is NaN/inf (floats only) or exactly ``dummy``."""
    gone = None
    if isinstance(dtype, types.Float):
        gone = builder.fcmp_unordered("!=", builder.fsub(v, v), ir.Constant(_D4, [0.0] * 4))
    if not isinstance(dummy_type, (types.NoneType, types.Omitted)):
        splat = builder.insert_element(ir.Constant(_D4, ir.Undefined), dummy, ir.Constant(_I32, 0))
        splat = builder.shuffle_vector(splat, splat, _lanes(0, 0, 0, 0))
        eq = builder.fcmp_ordered("==", v, splat)
        gone = eq if gone is None else builder.or_(gone, eq)
    if gone is None:  # an integer frame without a dummy: nothing is ever gone
        return ir.Constant(_I1, 0)
    bits = builder.bitcast(gone, ir.IntType(4))
    return builder.icmp_unsigned("!=", bits, ir.Constant(ir.IntType(4), 0))


def _slot_updates(builder, c0, c1, v, variance: bool) -> list[ir.Value]:
    """Pixel j's slot update, for j = 0..3: [c0·s, c1·s, c0²·v, c1²·v] (or the first two)."""
    lo = builder.fmul(c0, v)
    hi = builder.fmul(c1, v)
    # (a0 b0 a2 b2), (a1 b1 a3 b3): the first half of each pixel's update
    even = builder.shuffle_vector(lo, hi, _lanes(0, 4, 2, 6))
    odd = builder.shuffle_vector(lo, hi, _lanes(1, 5, 3, 7))
    if not variance:
        half = {0: (even, (0, 1)), 1: (odd, (0, 1)), 2: (even, (2, 3)), 3: (odd, (2, 3))}
        return [builder.shuffle_vector(x, x, _lanes(*h)) for x, h in half.values()]
    one = ir.Constant(_D4, [1.0] * 4)
    var = builder.select(builder.fcmp_ordered(">", v, one), v, one)  # max(v, 1)
    vlo = builder.fmul(builder.fmul(c0, c0), var)
    vhi = builder.fmul(builder.fmul(c1, c1), var)
    veven = builder.shuffle_vector(vlo, vhi, _lanes(0, 4, 2, 6))
    vodd = builder.shuffle_vector(vlo, vhi, _lanes(1, 5, 3, 7))
    return [
        builder.shuffle_vector(even, veven, _lanes(0, 1, 4, 5)),
        builder.shuffle_vector(odd, vodd, _lanes(0, 1, 4, 5)),
        builder.shuffle_vector(even, veven, _lanes(2, 3, 6, 7)),
        builder.shuffle_vector(odd, vodd, _lanes(2, 3, 6, 7)),
    ]


def _group_intrinsic(variance: bool):
    width = _D4 if variance else _D2

    @intrinsic
    def group(typingctx, flat, first, stride, img, at_img, bins, coef, at_table, dummy):
        """Pixels ``img[at_img:at_img + 4]`` (table entries ``at_table..``) into their slots
        of ``flat`` (pixel j's copy at ``first + j · stride``); True, and nothing added, when
        one of them is gone."""
        sig = types.boolean(flat, first, stride, img, at_img, bins, coef, at_table, dummy)
        dtype, bin_signed = img.dtype, bins.dtype.signed

        def codegen(context, builder, signature, args):
            aflat, afirst, astride, aimg, aat, abins, acoef, atab, adummy = args

            def data(i: int, value) -> ir.Value:
                return context.make_array(signature.args[i])(context, builder, value).data

            raw = _load4(builder, data(3, aimg), aat, context.get_data_type(dtype), 1)
            v = _pixels(builder, raw, dtype)
            gone = _any_gone(builder, v, dtype, signature.args[8], adummy)
            with builder.if_then(builder.not_(gone), likely=True):
                c0 = builder.fpext(_load4(builder, data(6, acoef), atab, ir.FloatType(), 4), _D4)
                c1 = builder.fsub(ir.Constant(_D4, [1.0] * 4), c0)
                updates = _slot_updates(builder, c0, c1, v, variance)
                pflat, pbins = data(0, aflat), data(5, abins)
                for j, upd in enumerate(updates):
                    b = builder.load(builder.gep(pbins, [builder.add(atab, ir.Constant(_I64, j))]))
                    b = builder.sext(b, _I64) if bin_signed else builder.zext(b, _I64)
                    at = builder.add(
                        builder.add(afirst, builder.mul(astride, ir.Constant(_I64, j))),
                        builder.mul(b, ir.Constant(_I64, SLOT)),
                    )
                    ptr = builder.bitcast(builder.gep(pflat, [at]), width.as_pointer())
                    builder.store(builder.fadd(builder.load(ptr, align=8), upd), ptr, align=8)
            return gone

        return sig, codegen

    return group


_group_with_variance = _group_intrinsic(True)
_group_signal = _group_intrinsic(False)


# The two loops below differ only in the group they call and in what a pixel of the scalar
# body adds; each repeats bbox_scalar's pixel read on purpose: with one loop switching on
# ``poisson`` (and a scalar body updating two or four sums), the frame took 12.1 ms instead of
# 10.1 (LAMBDA 9M, AMD EPYC family 25 model 1): the cold path's code slows the hot one.


@njit(cache=True, nogil=True)
def bbox_groups(img, base, s0, bins, coef, norm, dummy, poisson, nbins, acc, removed):
    """bbox splitting, no dark, four pixels at a time (see the module docstring), the variance
    summed even when unused; the slots of :func:`native_kernels.accumulate.bbox_scalar`, the
    same sums bit for bit (hot-loop specialisation).
    """
    rows, cols = bins.shape
    stride = acc.shape[1]
    flat = acc.reshape(-1)  # C-contiguous: views
    bflat = bins.reshape(-1)
    cflat = coef.reshape(-1)
    for r in range(rows):
        o = base + r * s0
        t = r * cols
        c = 0
        while c + 4 <= cols:
            if _group_with_variance(
                flat, (c & (NCOPY - 1)) * stride, stride, img, o + c, bflat, cflat, t + c, dummy
            ):
                for cc in range(c, c + 4):
                    b = bins[r, cc]
                    v = np.float64(np.float32(img[o + cc]))
                    c0 = np.float64(coef[r, cc])
                    c1 = 1.0 - c0
                    if _is_gone(v, dummy):
                        if b < nbins:
                            _remove_split(removed, b, c0, c1, np.float64(norm[r, cc]))
                        continue
                    var = max(v, 1.0)
                    at = (cc & (NCOPY - 1)) * stride + SLOT * b
                    _add4(flat, at, c0 * v, c1 * v, c0 * c0 * var, c1 * c1 * var)
            c += 4
        for cc in range(c, cols):
            b = bins[r, cc]
            v = np.float64(np.float32(img[o + cc]))
            c0 = np.float64(coef[r, cc])
            c1 = 1.0 - c0
            if _is_gone(v, dummy):
                if b < nbins:
                    _remove_split(removed, b, c0, c1, np.float64(norm[r, cc]))
                continue
            var = max(v, 1.0)
            at = (cc & (NCOPY - 1)) * stride + SLOT * b
            _add4(flat, at, c0 * v, c1 * v, c0 * c0 * var, c1 * c1 * var)


@njit(cache=True, nogil=True)
def bbox_groups_signal(img, base, s0, bins, coef, norm, dummy, poisson, nbins, acc, removed):
    """:func:`bbox_groups` without the variance (frames without Poisson errors): two sums a
    pixel, ``c0·s`` and ``c1·s`` (hot-loop specialisation).
    """
    rows, cols = bins.shape
    stride = acc.shape[1]
    flat = acc.reshape(-1)  # C-contiguous: views
    bflat = bins.reshape(-1)
    cflat = coef.reshape(-1)
    for r in range(rows):
        o = base + r * s0
        t = r * cols
        c = 0
        while c + 4 <= cols:
            if _group_signal(
                flat, (c & (NCOPY - 1)) * stride, stride, img, o + c, bflat, cflat, t + c, dummy
            ):
                for cc in range(c, c + 4):
                    b = bins[r, cc]
                    v = np.float64(np.float32(img[o + cc]))
                    c0 = np.float64(coef[r, cc])
                    c1 = 1.0 - c0
                    if _is_gone(v, dummy):
                        if b < nbins:
                            _remove_split(removed, b, c0, c1, np.float64(norm[r, cc]))
                        continue
                    at = (cc & (NCOPY - 1)) * stride + SLOT * b
                    flat[at] += c0 * v
                    flat[at + 1] += c1 * v
            c += 4
        for cc in range(c, cols):
            b = bins[r, cc]
            v = np.float64(np.float32(img[o + cc]))
            c0 = np.float64(coef[r, cc])
            c1 = 1.0 - c0
            if _is_gone(v, dummy):
                if b < nbins:
                    _remove_split(removed, b, c0, c1, np.float64(norm[r, cc]))
                continue
            at = (cc & (NCOPY - 1)) * stride + SLOT * b
            flat[at] += c0 * v
            flat[at + 1] += c1 * v
