"""Stitching and payload decoding."""

from __future__ import annotations

import numpy as np
import pytest

from native_kernels.compression import PayloadError, compress, decompress_into
from native_kernels.geometry import DetectorGeometry, ModulePlacement
from native_kernels.stitch import Stitcher, stitch


def reference_stitch(parts, geo, dtype=np.float32, dummy=0.0):
    """Hand-built reference: plain numpy, module by module, flips then np.rot90."""
    img = np.full(geo.shape, dummy, dtype=dtype)
    for part, i in zip(parts, geo.present, strict=True):
        m = geo.modules[i]
        a = part
        if m.flip_ud:
            a = np.flipud(a)
        if m.flip_lr:
            a = np.fliplr(a)
        a = np.rot90(a, m.rot90)
        img[m.y : m.y + a.shape[0], m.x : m.x + a.shape[1]] = a
    return img


@pytest.fixture(scope="module")
def mixed_geometry():
    # 6 slots of 12 x 20: one rotated by 90 and one by 270, flips, slot 4 absent.
    mods = (
        ModulePlacement(0, 0),
        ModulePlacement(0, 24, rot90=1),
        ModulePlacement(0, 40, flip_lr=True),
        ModulePlacement(16, 0, flip_ud=True),
        ModulePlacement(16, 24, present=False),
        ModulePlacement(22, 44, rot90=3, flip_ud=True),
    )
    return DetectorGeometry((12, 20), mods, dummy=-1.0)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_stitch_matches_hand_built_layout(mixed_geometry, dtype):
    g = mixed_geometry
    rng = np.random.default_rng(1)
    parts = [rng.integers(1, 60000, g.module_shape).astype(dtype) for _ in g.present]
    ref = reference_stitch(parts, g, np.float32, -1.0)
    out = stitch(parts, g)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)
    # The absent module's area and the gaps hold the dummy value.
    assert (out[20:28, 24:44] == -1).all()
    same = Stitcher(g, dtype, "same", dummy=0)(parts)
    assert same.dtype == dtype
    np.testing.assert_array_equal(same, reference_stitch(parts, g, dtype, 0))


def test_stitch_full_lambda9m_with_missing_module():
    g = DetectorGeometry.default_lambda9m(missing=(5,))
    rng = np.random.default_rng(2)
    parts = [rng.integers(0, 4096, g.module_shape, dtype=np.uint16) for _ in g.present]
    st = Stitcher(g, np.uint16)
    out = np.full(g.shape, np.nan, np.float32)  # reused output: every pixel must be written
    st(parts, out)
    np.testing.assert_array_equal(out, reference_stitch(parts, g))
    # module_pixel_index is the same mapping, as flat indices
    idx = g.module_pixel_index()
    np.testing.assert_array_equal(out.reshape(-1)[idx[3]], parts[3])


def test_flat_field_and_pixel_mask(mixed_geometry):
    g = mixed_geometry
    n = len(g.present)
    rng = np.random.default_rng(3)
    parts = [rng.integers(0, 1000, g.module_shape).astype(np.uint16) for _ in range(n)]
    flat = rng.uniform(0.5, 1.5, (n, *g.module_shape)).astype(np.float32)
    mask = (rng.random((n, *g.module_shape)) < 0.1).astype(np.uint8)
    out = Stitcher(g, np.uint16, flat=flat, mask=mask)(parts)
    corrected = [
        np.where(m != 0, -1.0, p * f).astype(np.float32)
        for p, f, m in zip(parts, flat, mask, strict=True)
    ]
    np.testing.assert_allclose(out, reference_stitch(corrected, g, np.float32, -1.0), rtol=1e-6)


def test_stitch_bad_input(mixed_geometry):
    g = mixed_geometry
    st = Stitcher(g, np.uint16)
    good = [np.zeros(g.module_shape, np.uint16) for _ in g.present]
    with pytest.raises(ValueError, match="expected 5 module parts"):
        st(good[:-1])
    with pytest.raises(ValueError, match="shape"):
        st(good[:-1] + [np.zeros((20, 12), np.uint16)])
    with pytest.raises(TypeError, match="dtype"):
        st(good[:-1] + [np.zeros(g.module_shape, np.int16)])
    with pytest.raises(ValueError, match="out must be"):
        st(good, np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError):
        Stitcher(g, np.float32)
    with pytest.raises(ValueError, match="flat"):
        Stitcher(g, np.uint16, flat=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        Stitcher(g, np.uint16, "same", dummy=-1)


@pytest.mark.parametrize("framing", ["bslz4", "bslz4_h5"])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_bitshuffle_roundtrip(framing, dtype):
    rng = np.random.default_rng(4)
    module = rng.poisson(20, (516, 1556)).astype(dtype)
    payload = compress(module, framing)
    assert payload.nbytes < module.nbytes
    out = np.empty_like(module)
    decompress_into(payload, out)  # auto-detected framing
    np.testing.assert_array_equal(out, module)
    out[...] = 0
    decompress_into(payload, out, framing)
    np.testing.assert_array_equal(out, module)


def test_odd_sized_payload_and_raw():
    module = np.arange(1003, dtype=np.uint16).reshape(17, 59)  # n % 8 != 0: verbatim tail
    out = np.empty_like(module)
    decompress_into(compress(module), out)
    np.testing.assert_array_equal(out, module)
    decompress_into(module.reshape(-1).view(np.uint8), out, "none")
    np.testing.assert_array_equal(out, module)


def _bslz4_builds():
    from native_kernels.bslz4_decode import builds

    return builds()


@pytest.mark.parametrize("shape", [(516, 1556), (17, 59), (3,)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_decoding_into_place_equals_bitshuffle_python_api(shape, dtype):
    """The slot is filled by our block loop around the library's LZ4 and untranspose
    routines, with every installed build (the one chosen at run time among them): bit for bit
    what bitshuffle's Python API returns, on random data too (no compression to speak of)
    and with a verbatim tail."""
    import bitshuffle

    from native_kernels.bslz4_decode import chosen_build, decode_into
    from native_kernels.compression import default_block_size

    builds = _bslz4_builds()
    assert builds, "no bitshuffle build found (the wheel's extension at least)"
    assert chosen_build(np.dtype(dtype).itemsize) in builds
    block = default_block_size(np.dtype(dtype).itemsize)
    rng = np.random.default_rng(9)
    for module in (
        rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True),
        rng.poisson(3, shape).astype(dtype),
    ):
        payload = compress(module)
        expected = bitshuffle.decompress_lz4(payload, module.shape, module.dtype, block)
        np.testing.assert_array_equal(expected, module)
        out = np.full_like(module, 7)
        decompress_into(payload, out)
        np.testing.assert_array_equal(out, expected)
        for build in builds:
            out[...] = 7
            assert decode_into(payload, 0, out, block, build), build.name
            np.testing.assert_array_equal(out, expected, err_msg=build.name)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint32, np.float32])
def test_the_compiled_untranspose_untransposes_only_the_planes_that_hold_bits(dtype, monkeypatch):
    """Blocks whose values all fit the low byte (or two) take the narrow path, the others the
    full one, in the same module: a hot pixel in some blocks, counts up to 65535 in others
    (4-byte elements), negative and float values (every byte plane used). Each gives the module
    bit for bit, and the test of which planes are zero says what the data hold."""
    import bitshuffle

    from native_kernels import bslz4_decode
    from native_kernels.bit_untranspose import nonzero_planes
    from native_kernels.bslz4_decode import decode_into
    from native_kernels.compression import default_block_size

    rng = np.random.default_rng(12)
    item = np.dtype(dtype).itemsize
    block = default_block_size(item)
    module = rng.poisson(4, (60, 1000)).astype(dtype)
    flat = module.reshape(-1)
    flat[5 * block + 17] = 300  # block 5: the second byte plane
    if item == 4:
        flat[9 * block + 3] = 70000  # block 9: the third
        flat[10 * block : 11 * block] = rng.integers(256, 65536, block)  # block 10: two planes
    if np.dtype(dtype).kind in "if":
        flat[12 * block + 1] = -3
    payload = compress(module)
    own = [b for b in _bslz4_builds() if b.own_untranspose]
    assert own and len(own) == len(_bslz4_builds()) // 2
    # into an array, and into a view 1 element past a 64-byte line (streaming stores write
    # whole lines only: the partial ones at either end are ordinary stores)
    room = np.zeros(module.size + 64, dtype)
    for build in own:
        for stream in (True, False):
            monkeypatch.setattr(bslz4_decode, "STREAM", stream)
            out = np.full_like(module, 7)
            assert decode_into(payload, 0, out, block, build), build.name
            np.testing.assert_array_equal(out, module, err_msg=build.name)
            room[...] = 7
            inside = room[1 : 1 + module.size]
            assert decode_into(payload, 0, inside, block, build), build.name
            np.testing.assert_array_equal(inside.reshape(module.shape), module)
            assert room[0] == 7 and (room[1 + module.size :] == 7).all()

    def planes(values):
        shuffled = np.frombuffer(bitshuffle.bitshuffle(values, block).tobytes(), np.uint8)
        return nonzero_planes(shuffled.copy().view(np.uint64), block, item)

    blocks = flat[: 13 * block].reshape(13, block)
    if np.dtype(dtype).kind == "f":  # the exponent is in the top byte: every plane holds bits
        assert {planes(b) for b in blocks} == {item}
        return
    assert planes(blocks[0]) == 1
    assert planes(blocks[5]) == (2 if item == 4 else item)
    if item == 4:
        assert planes(blocks[9]) == 4 and planes(blocks[10]) == 2
    if np.dtype(dtype).kind == "i":
        assert planes(blocks[12]) == item


def test_threads_decoding_at_once_each_get_their_modules():
    """The block buffer is per thread: two threads decoding at once (the loop releases the
    GIL) each get their own module back, bit for bit."""
    import threading

    from native_kernels.bslz4_decode import chosen_build, decode_into

    rng = np.random.default_rng(8)
    modules = [rng.poisson(9 + 20 * i, (516, 1556)).astype(np.uint16) for i in range(2)]
    payloads = [compress(m) for m in modules]
    build = chosen_build(2)
    wrong = []

    def decode(i):
        out = np.empty_like(modules[i])
        for _ in range(20):
            if not decode_into(payloads[i], 0, out, 4096, build) or not np.array_equal(
                out, modules[i]
            ):
                wrong.append(i)

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    with pytest.raises(ValueError, match="C-contiguous"):
        decode_into(payloads[0], 0, np.empty((1556, 516), np.uint16).T, 4096, build)


def test_every_build_rejects_corrupt_payloads():
    """A payload that does not decode to exactly the module fails with every build, no crash."""
    from native_kernels.bslz4_decode import decode_into

    rng = np.random.default_rng(6)
    module = rng.poisson(20, (516, 1556)).astype(np.uint16)
    payload = compress(module)
    out = np.empty_like(module)
    bad = [
        payload[: payload.size // 2],
        payload[:-1],
        np.concatenate([payload, payload[:1]]),
        rng.integers(0, 256, payload.size, dtype=np.uint8),
        payload[:0],
    ]
    lengths_garbled = payload.copy()
    lengths_garbled[:4] = 0x7F  # the first block length far past the payload
    bad.append(lengths_garbled)
    for build in _bslz4_builds():
        for p in bad:
            assert not decode_into(p, 0, out, 4096, build), build.name


def test_corrupt_or_truncated_payloads_raise_not_crash():
    rng = np.random.default_rng(5)
    module = rng.poisson(20, (516, 1556)).astype(np.uint16)
    payload = compress(module)
    out = np.empty_like(module)
    bad = {
        "truncated": payload[: payload.size // 2],
        "one byte short": payload[:-1],
        "garbage": rng.integers(0, 256, payload.size, dtype=np.uint8),  # segfaults bitshuffle
        "empty": payload[:0],
        "bad h5 header": compress(module, "bslz4_h5")[:10],
    }
    for name, p in bad.items():
        with pytest.raises(PayloadError):
            decompress_into(p, out, "auto" if name != "bad h5 header" else "bslz4_h5")
    flipped = payload.copy()
    flipped[6:14] ^= 0xFF  # inside the first LZ4 block: decoder error or wrong data, no crash
    try:
        decompress_into(flipped, out)
    except PayloadError:
        pass
    with pytest.raises(PayloadError, match="raw payload"):
        decompress_into(np.zeros(10, np.uint8), out, "none")


@pytest.mark.parametrize("out_dtype", ["same", "float32"])
@pytest.mark.parametrize("in_dtype", [np.uint16, np.uint32])
def test_streaming_path_any_alignment(in_dtype, out_dtype):
    """The streaming-store path (unit column stride layouts) for every output alignment."""
    g = DetectorGeometry(
        (7, 45),
        (
            ModulePlacement(0, 0),
            ModulePlacement(0, 50, flip_ud=True),
            ModulePlacement(9, 3),
            ModulePlacement(9, 60, present=False),
        ),
        dummy=3,
    )
    st = Stitcher(g, in_dtype, out_dtype)
    assert st.streaming
    rng = np.random.default_rng(6)
    parts = [rng.integers(0, 60000, g.module_shape).astype(in_dtype) for _ in g.present]
    ref = reference_stitch(parts, g, st.output_dtype, 3)
    n = ref.size
    for offset in range(17):  # every alignment of the output within a 64-byte line
        buf = np.full(n + 40, 7, dtype=st.output_dtype)
        out = buf[offset : offset + n].reshape(g.shape)
        st(parts, out)
        np.testing.assert_array_equal(out, ref)
        assert (buf[:offset] == 7).all() and (buf[offset + n :] == 7).all()  # nothing outside


def test_the_streaming_fence_compiles_where_there_is_no_x86_sfence(monkeypatch):
    """The decoder's loop calls ``sfence`` whether it streamed or not: on a CPU without x86's
    instruction it must still compile (a fence of LLVM's own), or no payload would decode."""
    from numba import njit

    from native_kernels import ntstore

    for available in (False, True):
        monkeypatch.setattr(ntstore, "AVAILABLE", available)

        @njit
        def fenced(x):
            ntstore.sfence()
            return x + 1

        assert fenced(1) == 2
        ops = {
            line.split()[0]
            for line in next(iter(fenced.inspect_asm().values())).splitlines()
            if line.strip() and not line.lstrip().startswith((".", "#", "_"))
        }
        # here (x86-64): sfence, or the portable fence (LLVM lowers it to a locked or)
        assert ("sfence" in ops) == available and ("lock" in ops) != available
