"""Numba kernels and detector geometry (the LAMBDA 9M and pyFAI's named detectors), usable with
or without shmpipe.

>>> from native_kernels import AzimuthalIntegrator, DetectorGeometry, stitch
>>> geo = DetectorGeometry.default_lambda9m(missing=(11,))
>>> image = stitch(parts, geo)
>>> ai = AzimuthalIntegrator.from_poni("calib.poni", geometry=geo)
>>> q, I, sigma = ai.integrate1d(parts, 1000, unit="q_nm^-1", error_model="poisson")

The shmpipe adapters live in :mod:`native_kernels.shmpipe_kernels` (imported on demand, so
the kernels work without the engine).
"""

from native_kernels.compression import PayloadError, decompress_into
from native_kernels.detectors import DetectorError, detector_geometry
from native_kernels.geometry import DetectorGeometry, GeometryError, ModulePlacement
from native_kernels.integrator import (
    AzimuthalIntegrator,
    Integrate1dResult,
    Integrate2dResult,
    PoniMismatchWarning,
    RadialPlan,
)
from native_kernels.poni import Poni, PoniError, read_poni
from native_kernels.stats import frame_statistics
from native_kernels.stitch import Stitcher, stitch

__all__ = [
    "AzimuthalIntegrator",
    "DetectorError",
    "DetectorGeometry",
    "GeometryError",
    "Integrate1dResult",
    "Integrate2dResult",
    "ModulePlacement",
    "PayloadError",
    "Poni",
    "PoniError",
    "PoniMismatchWarning",
    "RadialPlan",
    "Stitcher",
    "decompress_into",
    "detector_geometry",
    "frame_statistics",
    "read_poni",
    "stitch",
]
