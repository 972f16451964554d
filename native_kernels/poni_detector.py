"""The detector a PONI file describes, checked against an explicit geometry."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from native_kernels.declared import poni_layout
from native_kernels.detectors import detector_geometry
from native_kernels.geometry import (
    DetectorGeometry,
    GeometryError,
    ModulePlacement,
    load_geometry,
)
from native_kernels.poni import Poni, PoniError


class PoniMismatchWarning(UserWarning):
    """An explicit geometry that contradicts the detector its PONI file describes."""


def resolve_geometry(geometry, missing_modules: Sequence[int]) -> DetectorGeometry:
    """A geometry object from an object, a file, "lambda9m", or a plain (rows, cols) shape."""
    if (
        isinstance(geometry, tuple)
        and len(geometry) == 2
        and all(isinstance(n, (int, np.integer)) for n in geometry)
    ):
        geometry = DetectorGeometry(
            (int(geometry[0]), int(geometry[1])), (ModulePlacement(0, 0),), name="image"
        )
    return load_geometry(geometry, missing_modules)


def with_pixel_size(geo: DetectorGeometry, px: tuple[float, float]) -> DetectorGeometry:
    return DetectorGeometry(geo.module_shape, geo.modules, px, geo.dummy, geo.name, geo.shape)


def _warn_if_contradicts(
    geo: DetectorGeometry,
    described: DetectorGeometry | None,
    px: tuple[float, float] | None,
    source: str,
) -> None:
    """Warn when an explicit geometry disagrees with the PONI's shape or pixel size."""
    problems = []
    if described is not None and tuple(described.shape) != tuple(geo.shape):
        problems.append(f"shape {described.shape} (detector {described.name})")
    ref_px = described.pixel_size if described is not None else px
    if ref_px is not None and not np.allclose(ref_px, geo.pixel_size, rtol=1e-6, atol=0):
        problems.append(f"pixel size {tuple(ref_px)}")
    if problems:
        warnings.warn(
            f"{source}: the PONI describes {' and '.join(problems)}; using the explicit geometry "
            f"{geo.name!r} of shape {geo.shape} with pixel size {geo.pixel_size}",
            PoniMismatchWarning,
            stacklevel=4,
        )


def poni_geometry(
    p: Poni, source: str, geometry=None, use_poni_pixel_size: bool = False
) -> DetectorGeometry:
    """The detector layout of an integrator built from PONI ``p`` (read from ``source``).

    See :meth:`native_kernels.integrator.AzimuthalIntegrator.from_poni` for the rules.
    """
    px = p.pixel_size
    try:
        described = detector_geometry(p.detector, p.detector_config)
    except GeometryError as exc:
        if geometry is None:
            raise PoniError(f"{source}: {exc}") from exc
        warnings.warn(
            f"{source}: cannot check the PONI's detector against the given geometry: {exc}",
            PoniMismatchWarning,
            stacklevel=3,
        )
        described = None
    if geometry is None:
        geo = poni_layout(described, px, source)
    else:
        geo = resolve_geometry(geometry, ())
        if use_poni_pixel_size:
            if px is None:
                raise PoniError(f"{source}: the PONI file gives no pixel size")
            geo = with_pixel_size(geo, px)
        _warn_if_contradicts(geo, described, px, source)
    return geo
