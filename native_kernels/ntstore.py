"""Non-temporal (streaming) stores of whole 64-byte lines for Numba, used by the stitcher.

Why: an ordinary store to memory that is not in cache first reads the cache line (read for
ownership), so writing an image costs twice its size in memory traffic. ``memcpy`` avoids that
on large copies with non-temporal stores, which is why a plain copy of the module bytes is the
yardstick: stitching with ordinary stores measured 2.0x the copy time, beyond the 1.5x target.
These intrinsics emit ``store <64 x i8> ..., !nontemporal`` (``vmovntdq`` on x86-64) from
LLVM IR; destinations must be 64-byte aligned (the caller assembles partial lines itself).
Measured here: streaming copy of 19 MB 0.88 ms, ``memcpy`` 1.42 ms, a plain loop 1.64 ms.
After a batch of streaming stores :func:`sfence` orders them before later stores (for
example the slot state that tells another process the image is ready).

Only x86-64 is supported (``AVAILABLE``); elsewhere the stitcher uses ordinary stores.
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

AVAILABLE = platform.machine().lower() in ("x86_64", "amd64")

_I8P = ir.IntType(8).as_pointer()


def _byte_ptr(context, builder, arrtype, arr, offset):
    ary = context.make_array(arrtype)(context, builder, arr)
    return builder.gep(builder.bitcast(ary.data, _I8P), [offset])


def _nontemporal(builder, inst):
    inst.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


def _copy_intrinsic(nbytes: int):
    @intrinsic
    def nt_copy(typingctx, dst, dst_byte, src, src_byte):
        sig = types.void(dst, types.intp, src, types.intp)

        def codegen(context, builder, signature, args):
            d, doff, s, soff = args
            vt = ir.VectorType(ir.IntType(8), nbytes)
            sp = builder.bitcast(
                _byte_ptr(context, builder, signature.args[2], s, soff), vt.as_pointer()
            )
            dp = builder.bitcast(
                _byte_ptr(context, builder, signature.args[0], d, doff), vt.as_pointer()
            )
            v = builder.load(sp, align=1)
            _nontemporal(builder, builder.store(v, dp, align=nbytes))
            return context.get_dummy_value()

        return sig, codegen

    return nt_copy


nt_copy64 = _copy_intrinsic(64)
nt_copy64.__doc__ = "Copy 64 bytes (a cache line) from ``src`` to 64-byte aligned ``dst``."


def _convert_intrinsic(src_bits: int, lanes: int):

    @intrinsic
    def nt_convert16(typingctx, dst, dst_byte, src, src_byte):
        sig = types.void(dst, types.intp, src, types.intp)

        def codegen(context, builder, signature, args):
            d, doff, s, soff = args
            vin = ir.VectorType(ir.IntType(src_bits), lanes)
            sp = builder.bitcast(
                _byte_ptr(context, builder, signature.args[2], s, soff), vin.as_pointer()
            )
            v = builder.load(sp, align=1)
            if src_bits < 32:
                v = builder.zext(v, ir.VectorType(ir.IntType(32), lanes))
            f = builder.uitofp(v, ir.VectorType(ir.FloatType(), lanes))
            dp = builder.bitcast(
                _byte_ptr(context, builder, signature.args[0], d, doff),
                ir.VectorType(ir.FloatType(), lanes).as_pointer(),
            )
            _nontemporal(builder, builder.store(f, dp, align=4 * lanes))
            return context.get_dummy_value()

        return sig, codegen

    return nt_convert16


nt_u16_to_f32_line = _convert_intrinsic(16, 16)
nt_u16_to_f32_line.__doc__ = "Convert 16 uint16 to 16 float32: one 64-byte line (streaming)."
nt_u32_to_f32_line = _convert_intrinsic(32, 16)
nt_u32_to_f32_line.__doc__ = "Convert 16 uint32 to 16 float32: one 64-byte line (streaming)."


@intrinsic
def sfence(typingctx):
    """Order all earlier streaming stores before any later store (``sfence``; elsewhere a
    sequentially consistent fence, so that a loop calling it compiles on any CPU)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if not AVAILABLE:
            builder.fence("seq_cst")
            return context.get_dummy_value()
        fnty = ir.FunctionType(ir.VoidType(), [])
        fn = builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=fnty)
        builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pointer_like(typingctx, address, like):
    """A typed pointer (``CPointer`` of ``like``'s dtype) from an integer address.

    Lets a jitted loop read a list of separately allocated module arrays by address
    (``numba.carray(pointer_like(addr, part), n)``) without a tuple of arrays, whose dynamic
    indexing defeats vectorisation.
    """
    sig = types.CPointer(like.dtype)(types.intp, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen
