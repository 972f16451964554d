"""The raw frame as an image: its modules placed with the detector geometry.

The run's geometry file places the modules when it describes them (``view.geometry``, else
the chain's own geometry file); otherwise twelve LAMBDA-sized modules take the LAMBDA 9M
layout of ``native_kernels`` and other module sets are laid out in a grid of the same kind
(three columns when the count allows); one 2-D part is its own image. Gaps are NaN so that
they stay out of contrast and binning.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from native_kernels.geometry import LAMBDA_MODULE_SHAPE, DetectorGeometry, ModulePlacement

GAP = 4  # pixels between modules of a generic grid


def geometry_for(
    n: int, module_shape: tuple[int, int], configured: DetectorGeometry | None = None
) -> DetectorGeometry:
    """The geometry used to assemble ``n`` modules of ``module_shape``: the run's own
    (``configured``, from ``view.geometry`` or the chain's geometry file) when it has as
    many modules of that shape, else a built-in layout."""
    if (
        configured is not None
        and len(configured.present) == n
        and tuple(configured.module_shape) == tuple(module_shape)
    ):
        return configured
    return _builtin_geometry(n, tuple(module_shape))


@lru_cache(maxsize=8)
def _builtin_geometry(n: int, module_shape: tuple[int, int]) -> DetectorGeometry:
    if n == 12 and tuple(module_shape) == LAMBDA_MODULE_SHAPE:
        return DetectorGeometry.default_lambda9m()
    cols = 3 if n % 3 == 0 else math.ceil(math.sqrt(n))
    r, c = module_shape
    mods = tuple(
        ModulePlacement(y=(i // cols) * (r + GAP), x=(i % cols) * (c + GAP)) for i in range(n)
    )
    return DetectorGeometry(module_shape, mods, name=f"{n} modules")


def assemble(parts: list[np.ndarray], geometry: DetectorGeometry | None = None) -> np.ndarray:
    """One float32 image of the raw parts (see the module docstring), laid out with
    ``geometry`` when it fits them (:func:`geometry_for`)."""
    if not parts:
        raise ValueError("no raw parts")
    if len(parts) == 1 and parts[0].ndim == 2:
        return parts[0].astype(np.float32)
    shapes = {p.shape for p in parts}
    if len(shapes) != 1 or parts[0].ndim != 2:
        # Modules of different shapes: stack them, each flattened to its own row block.
        width = max(p.shape[-1] if p.ndim else 1 for p in parts)
        rows = [np.atleast_2d(p).reshape(-1, np.atleast_2d(p).shape[-1]) for p in parts]
        out = np.full((sum(r.shape[0] + GAP for r in rows), width), np.nan, np.float32)
        y = 0
        for r in rows:
            out[y : y + r.shape[0], : r.shape[1]] = r
            y += r.shape[0] + GAP
        return out
    geometry = geometry_for(len(parts), parts[0].shape, geometry)
    canvas = np.full(geometry.shape, np.nan, np.float32)
    for view, part in zip(geometry.module_views(canvas), parts, strict=True):
        view[...] = part
    return canvas
