"""The raw frame binned straight from its modules equals binning the assembled image."""

from __future__ import annotations

import numpy as np
import pytest

from native_kernels.geometry import DetectorGeometry, ModulePlacement
from shmpipe.view.assemble import assemble
from shmpipe.view.rawbin import bin_modules, render_parts
from shmpipe.view.render import RenderParams, bin_image, clip_region, render

# Modules of 5 x 7 pixels: plain, quarter-turned both ways, flipped, half-turned and flipped,
# and one absent slot (its parts never arrive).
TURNED = DetectorGeometry(
    (5, 7),
    (
        ModulePlacement(0, 0),
        ModulePlacement(0, 9, rot90=1),
        ModulePlacement(9, 0, flip_ud=True),
        ModulePlacement(9, 9, rot90=3, flip_lr=True),
        ModulePlacement(17, 10, present=False),
        ModulePlacement(17, 2, rot90=2, flip_ud=True, flip_lr=True),
    ),
)


def _canvas(geometry: DetectorGeometry, parts: list[np.ndarray]) -> np.ndarray:
    canvas = np.full(geometry.shape, np.nan)
    for view, part in zip(geometry.module_views(canvas), parts, strict=True):
        view[...] = part
    return canvas


def _parts(kind: str) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    parts = [rng.integers(0, 5000, (5, 7)).astype(np.uint16) for _ in range(5)]
    if kind == "float":
        parts = [p.astype(np.float32) for p in parts]
        parts[0][1, 2] = np.nan
        parts[1][4, 6] = np.inf
        parts[3][0, :] = -np.inf
        parts[4][2:4, 1:4] = np.nan
    return parts


@pytest.mark.parametrize("kind", ["uint16", "float"])
@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("region", [None, (3, 2, 12, 19), (10, 0, 14, 5), (1, 15, 30, 30)])
def test_binned_modules_equal_the_binned_assembled_image(kind, factor, region):
    parts = _parts(kind)
    canvas = _canvas(TURNED, parts)
    x0, y0, x1, y1 = clipped = clip_region(TURNED.shape, region)
    for use_max in (False, True):
        got = bin_modules(parts, TURNED, factor, clipped, use_max)
        want = bin_image(canvas[y0:y1, x0:x1], factor, use_max)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)


def test_the_rendered_raw_frame_equals_rendering_the_assembled_frame():
    rng = np.random.default_rng(12)
    parts = [rng.poisson(40.0, (48, 64)).astype(np.uint32) for _ in range(12)]
    image = assemble(parts)  # the generic grid of 12 modules
    for params in (
        RenderParams(width=50),
        RenderParams(width=40, scale="log", binning="max"),
        RenderParams(width=64, region=(30, 20, 150, 200), scale="sqrt"),
    ):
        got, shape = render_parts(parts, params)
        want = render(image, params)
        assert shape == image.shape
        assert (got.vmin, got.vmax, got.factor, got.region) == (
            want.vmin,
            want.vmax,
            want.factor,
            want.region,
        )
        np.testing.assert_array_equal(got.indices, want.indices)


def test_a_single_image_or_mixed_modules_are_assembled_as_before():
    single = np.arange(20.0).reshape(4, 5)
    got, shape = render_parts([single], RenderParams(width=5, vmin=0, vmax=19))
    assert shape == (4, 5)
    np.testing.assert_array_equal(
        got.indices, render(single, RenderParams(vmin=0, vmax=19)).indices
    )
    mixed = [np.ones((3, 4)), np.ones((2, 6))]
    got, shape = render_parts(mixed, RenderParams(width=6))
    assert shape == assemble(mixed).shape
