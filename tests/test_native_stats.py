"""frame statistics: the vectorised float32 path against numpy and against the general path."""

from __future__ import annotations

import numpy as np
import pytest

from native_kernels.stats import _stats, accumulate_stats, frame_statistics


def reference(img: np.ndarray, threshold: float, dummy: float | None) -> list[float]:
    v = img.astype(np.float64)
    valid = np.isfinite(v) & ((v != dummy) if dummy is not None else True)
    x = v[valid]
    return [x.sum(), x.max() if len(x) else -np.inf, float((x > threshold).sum()), len(x)]


def image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.poisson(20, (97, 301)) + rng.random((97, 301))).astype(np.float32) - 5.0
    img[::7, ::5] = -1.0
    img[3, :40] = 0.0
    img[4, :40] = -0.0
    img[10, 10], img[11, 11], img[12, 12] = np.nan, np.inf, -np.inf
    img[13, 13] = np.float32(0.1)
    return img


@pytest.mark.parametrize("dummy", [None, -1.0, 0.0, -0.0, 0.1, np.float32(0.1), np.nan, 1e40])
@pytest.mark.parametrize("threshold", [20.0, 20.1, "pixel", -np.inf, np.nan, 1e39, -1.0])
def test_float32_path_equals_numpy_and_the_general_path(dummy, threshold):
    img = image()
    if threshold == "pixel":
        threshold = float(img[50, 50])  # a value a pixel has exactly: strictly above counts
    dummy = None if dummy is None else float(dummy)
    fast = np.array([0.0, -np.inf, 0.0, 0.0])
    accumulate_stats(img, threshold, dummy, fast)
    general = np.array([0.0, -np.inf, 0.0, 0.0])
    _stats(img, float(threshold), dummy is not None, dummy if dummy is not None else 0.0, general)
    ref = reference(img, threshold, dummy)
    assert fast[1:].tolist() == general[1:].tolist() == ref[1:]
    assert fast[0] == pytest.approx(ref[0], rel=1e-12) and general[0] == pytest.approx(ref[0])


def test_negative_values_all_invalid_and_strided_arrays():
    neg = -np.abs(image(1)) - 3.0
    out = np.array([0.0, -np.inf, 0.0, 0.0])
    accumulate_stats(neg, 0.0, None, out)
    assert out.tolist()[1:] == reference(neg, 0.0, None)[1:]
    bad = np.full((4, 8), np.nan, np.float32)
    bad[0] = np.inf
    out = np.array([0.0, -np.inf, 0.0, 0.0])
    accumulate_stats(bad, 0.0, None, out)
    assert out.tolist() == [0.0, -np.inf, 0.0, 0.0]
    strided = image(2)[:, ::3]  # not contiguous: the general path
    out = np.array([0.0, -np.inf, 0.0, 0.0])
    accumulate_stats(strided, 10.0, -1.0, out)
    ref = reference(strided, 10.0, -1.0)
    assert out.tolist()[1:] == ref[1:] and out[0] == pytest.approx(ref[0])


def test_frame_statistics_over_parts_of_several_dtypes():
    img = image(3)
    parts = [img[:50], np.ascontiguousarray(img[50:]).astype(np.float64)]
    st = frame_statistics(parts, threshold=15.0, dummy=-1.0)
    ref = reference(img, 15.0, -1.0)
    assert (st.max, st.count_above, st.n_valid) == (ref[1], ref[2], ref[3])
    assert st.sum == pytest.approx(ref[0], rel=1e-12)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32"])
@pytest.mark.parametrize("dummy", [None, 0.0, 65535.0, 7.0, -1.0, 0.5, 70000.0, np.nan])
def test_integer_paths_equal_numpy(dtype, dummy):
    """uint8/uint16 rows go through 32-bit lanes, other integers through int64 ones: both
    exact, whatever the threshold and the dummy (values only an integer of another range or a
    non-integer could equal), rows wider than the 32-bit path allows and strided views too."""
    rng = np.random.default_rng(4)
    top = np.iinfo(dtype).max
    img = rng.poisson(30, (41, 333)).astype(dtype)
    img[2, :7] = top  # a full row of the largest value still sums in 32 bits
    img[5] = 0
    img[6, ::3] = 7
    if dtype == "int16":
        img[8, 10:20] = -300
    wide = np.full((2, 2**15 + 5), top, dtype)  # the int64 path for uint16 too
    wide[1, ::2] = 3
    for a in (img, img[:, ::2], img[3:4], wide):
        for threshold in (-np.inf, -5.0, 0.0, 20.5, 30.0, 65535.0, 1e9, np.nan):
            out = np.array([0.0, -np.inf, 0.0, 0.0])
            accumulate_stats(a, threshold, None if dummy is None else float(dummy), out)
            assert out.tolist() == reference(a, threshold, dummy), (a.shape, threshold)
    gone = np.full((3, 9), 7, dtype)  # every pixel the dummy: nothing counted, max -inf
    out = np.array([0.0, -np.inf, 0.0, 0.0])
    accumulate_stats(gone, 1.0, 7.0, out)
    assert out.tolist() == [0.0, -np.inf, 0.0, 0.0]
