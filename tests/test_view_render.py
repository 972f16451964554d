"""The view's image path on its own: binning, contrast, scaling, raw assembly, parameters."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from native_kernels.geometry import LAMBDA_MODULE_SHAPE, DetectorGeometry
from shmpipe.view.assemble import assemble
from shmpipe.view.binning import SCALE_CODES, to_indices
from shmpipe.view.render import (
    EXACT_PERCENTILE_MAX,
    RenderError,
    RenderParams,
    bin_image,
    contrast,
    render,
    scaled,
)
from tests.view_helpers import reference_indices


def _numpy_bin(img, f, how):
    h, w = img.shape
    oh, ow = -(-h // f), -(-w // f)
    pad = np.full((oh * f, ow * f), np.nan)
    pad[:h, :w] = np.where(np.isfinite(img), img, np.nan)
    blocks = pad.reshape(oh, f, ow, f)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        return how(blocks, axis=(1, 3))


@pytest.mark.parametrize("factor", [1, 3, 4])
def test_binning_matches_numpy_with_gaps_and_ragged_edges(factor):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 1000, (23, 37)).astype(np.float32)
    img[2:5, :] = np.nan  # a gap row band
    img[10, 11] = np.inf
    img[:, 36] = np.nan  # a whole column block may be empty
    for use_max, how in ((False, np.nanmean), (True, np.nanmax)):
        got = bin_image(img, factor, use_max)
        np.testing.assert_allclose(got, _numpy_bin(img, factor, how), equal_nan=True)


@pytest.mark.parametrize("scale", ["linear", "sqrt", "log"])
def test_png_is_the_binned_scaled_frame(scale):
    img = np.random.default_rng(2).gamma(2.0, 30.0, (90, 130))
    r = render(img, RenderParams(width=40, scale=scale, vmin=5.0, vmax=150.0, cmap="gray"))
    got = np.asarray(Image.open(io.BytesIO(r.png())))
    assert r.factor == 4 and got.shape == (23, 33)
    diff = np.abs(got.astype(int) - reference_indices(img, 4, 5.0, 150.0, scale).astype(int))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 1


def test_contrast_from_percentiles_and_a_flat_frame():
    img = np.arange(10000, dtype=np.float64).reshape(100, 100)
    r = render(img, RenderParams(width=100, pmin=1, pmax=99))
    assert (r.vmin, r.vmax) == pytest.approx(tuple(np.percentile(img, [1, 99])))
    flat = render(np.full((10, 10), 7.0), RenderParams(width=10))
    assert flat.vmax > flat.vmin == 7.0


def test_zoom_is_full_resolution_and_clipped_to_the_frame():
    img = np.random.default_rng(3).random((50, 80))
    r = render(img, RenderParams(width=1000, region=(70, 40, 200, 200), vmin=0, vmax=1))
    assert r.factor == 1 and r.region == (70, 40, 80, 50) and r.indices.shape == (10, 10)
    with pytest.raises(RenderError, match="outside"):
        render(img, RenderParams(region=(90, 0, 100, 10)))


@pytest.mark.parametrize(
    "query, words",
    [
        ({"width": "0"}, "width"),
        ({"scale": "cubic"}, "scale"),
        ({"vmin": "3", "vmax": "2"}, "greater"),
        ({"pmin": "50", "pmax": "10"}, "pmin"),
        ({"x0": "1"}, "x0, y0, x1, y1"),
        ({"x0": "5", "y0": "0", "x1": "5", "y1": "3"}, "empty"),
        ({"zoom": "2"}, "unknown parameter"),
    ],
)
def test_bad_parameters_name_what_is_wrong(query, words):
    with pytest.raises(RenderError, match=words):
        RenderParams.from_query(query)


def test_twelve_lambda_modules_take_the_lambda_layout():
    geo = DetectorGeometry.default_lambda9m()
    parts = [np.full(LAMBDA_MODULE_SHAPE, i, np.uint16) for i in range(12)]
    img = assemble(parts)
    assert img.shape == geo.shape
    for i, view in enumerate(geo.module_views(img)):
        assert np.all(view == i)
    assert np.isnan(img[LAMBDA_MODULE_SHAPE[0] + 1, 0])  # a gap
    single = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(assemble([single]), single)


@pytest.mark.parametrize("factor", [2, 5])
def test_binning_leaves_out_nan_and_both_infinities(factor):
    rng = np.random.default_rng(4)
    img = rng.normal(0.0, 100.0, (17, 26))
    img[0, 0] = np.inf  # larger than anything: would win every max
    img[1, 7] = -np.inf
    img[5, 3] = np.nan
    img[10 : 10 + factor, 10 : 10 + factor] = np.inf  # a block (or more) with nothing finite
    img[-1, :] = -np.inf  # the ragged last block row
    for use_max, how in ((False, np.nanmean), (True, np.nanmax)):
        got = bin_image(img, factor, use_max)
        want = _numpy_bin(img, factor, how)
        assert np.isnan(got).any()
        np.testing.assert_allclose(got, want, equal_nan=True, rtol=1e-12)


def test_binning_integer_frames_like_float_ones():
    img = np.random.default_rng(5).integers(0, 60000, (31, 45)).astype(np.uint16)
    for use_max in (False, True):
        got = bin_image(img, 4, use_max)
        np.testing.assert_array_equal(got, bin_image(img.astype(np.float64), 4, use_max))


@pytest.mark.parametrize("scale", ["linear", "sqrt", "log"])
def test_fused_indices_equal_the_numpy_scaling(scale):
    values = np.random.default_rng(6).uniform(-50.0, 250.0, (40, 61))
    values[3, :10] = np.nan  # NaN is index 0; below vmin 0, above vmax 255
    got = to_indices(values, 10.0, 200.0, SCALE_CODES[scale])
    want = scaled(values, 10.0, 200.0, scale)
    assert got.min() == 0 and got.max() == 255
    np.testing.assert_array_equal(got, want)


def test_percentiles_of_a_large_image_come_from_an_even_sample():
    rng = np.random.default_rng(7)
    values = rng.gamma(2.0, 30.0, (600, 400))  # 240 000 values: above the exact limit
    values[::7, ::3] = np.nan
    params = RenderParams(width=400, pmin=2, pmax=98)
    lo, hi = contrast(values, params)
    finite = values[np.isfinite(values)]
    assert finite.size > EXACT_PERCENTILE_MAX
    kept = finite[:: -(-finite.size // EXACT_PERCENTILE_MAX)]
    assert kept.size <= EXACT_PERCENTILE_MAX
    assert (lo, hi) == tuple(np.percentile(kept, [2, 98]))
    # ... and they are close to the exact ones: within 2 % of the contrast range.
    exact = np.percentile(finite, [2, 98])
    tolerance = 0.02 * (exact[1] - exact[0])
    assert abs(lo - exact[0]) < tolerance and abs(hi - exact[1]) < tolerance
