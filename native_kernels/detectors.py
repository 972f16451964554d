"""Named detectors: shape, pixel size and module gaps as pyFAI defines them.

A PONI file names its detector (``Detector: Eiger2_4M``) or describes a generic one
(``Detector: Detector`` with ``pixel1``, ``pixel2`` and ``max_shape`` in ``Detector_config``).
:func:`detector_geometry` turns either into a :class:`~native_kernels.geometry.DetectorGeometry`
whose modules are the sensitive areas and whose gaps are what pyFAI masks.

Named detectors come from pyFAI's own definitions when pyFAI is installed (its static mask is
turned into a grid of modules, and refused if it is not one), otherwise from :data:`CATALOGUE`,
a built-in list of the common detectors that the tests check against pyFAI.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from native_kernels.geometry import DetectorGeometry, GeometryError, ModulePlacement


class DetectorError(GeometryError):
    """A detector that is unknown or cannot be described as a grid of modules."""


@dataclass(frozen=True)
class GridDetector:
    """A detector made of ``grid`` equal modules separated by constant gaps.

    Parameters
    ----------
    name : str
        pyFAI's name of the detector.
    module : (int, int)
        Rows and columns of one module (the sensitive area between two gaps).
    gap : (int, int)
        Rows between module rows and columns between module columns.
    grid : (int, int)
        Module rows and module columns.
    pixel : float
        Pixel size in metres (square pixels).
    """

    name: str
    module: tuple[int, int]
    gap: tuple[int, int]
    grid: tuple[int, int]
    pixel: float

    def geometry(self) -> DetectorGeometry:
        (mr, mc), (gr, gc), (nr, nc) = self.module, self.gap, self.grid
        mods = tuple(
            ModulePlacement(i * (mr + gr), j * (mc + gc)) for i in range(nr) for j in range(nc)
        )
        return DetectorGeometry((mr, mc), mods, (self.pixel, self.pixel), name=self.name)


def _family(prefix, module, gap, pixel, sizes) -> list[GridDetector]:
    return [GridDetector(prefix + s, module, gap, grid, pixel) for s, grid in sizes.items()]


_PILATUS = dict(module=(195, 487), gap=(17, 7), pixel=172e-6)
_EIGER = dict(module=(514, 1030), gap=(37, 10), pixel=75e-6)
_EIGER2 = dict(module=(512, 1028), gap=(38, 12), pixel=75e-6)
_JUNGFRAU = dict(module=(514, 1030), gap=(36, 8), pixel=75e-6)
# LAMBDA: pyFAI masks the 4-pixel seams between the 256 x 256 chips.
_LAMBDA_CHIP = dict(module=(256, 256), gap=(4, 4), pixel=55e-6)

CATALOGUE: dict[str, GridDetector] = {
    d.name: d
    for d in (
        _family(
            "Pilatus",
            sizes={"100k": (1, 1), "300k": (3, 1), "1M": (5, 2), "2M": (8, 3), "6M": (12, 5)},
            **_PILATUS,
        )
        + _family(
            "Eiger",
            sizes={"500k": (1, 1), "1M": (2, 1), "4M": (4, 2), "9M": (6, 3), "16M": (8, 4)},
            **_EIGER,
        )
        + _family(
            "Eiger2_",
            sizes={"500k": (1, 1), "1M": (2, 1), "4M": (4, 2), "9M": (6, 3), "16M": (8, 4)},
            **_EIGER2,
        )
        + _family("Jungfrau", sizes={"1M": (2, 1), "4M": (4, 2)}, **_JUNGFRAU)
        + _family(
            "Lambda",
            sizes={"60k": (1, 1), "250k": (2, 2), "750k": (2, 6), "2M": (6, 6)},
            **_LAMBDA_CHIP,
        )
    )
}
# pyFAI's Lambda9M is one unmasked 3868 x 3227 area (it is not this project's stitched
# 12-module layout, which is the geometry "lambda9m").
CATALOGUE["Lambda9M"] = GridDetector("Lambda9M", (3868, 3227), (0, 0), (1, 1), 55e-6)

_GENERIC = {"", "detector", "generic"}


def normalise_name(name: str) -> str:
    """The comparison key of a detector name: case, spaces, ``_`` and ``-`` ignored."""
    return "".join(ch for ch in str(name).lower() if ch not in " _-")


_BY_KEY = {normalise_name(k): v for k, v in CATALOGUE.items()}


def pyfai_available() -> bool:
    """Whether pyFAI can be imported (without importing it)."""
    return importlib.util.find_spec("pyFAI") is not None


def needs_pyfai(name: str) -> bool:
    """Whether only pyFAI can describe the detector ``name`` (neither generic nor in the
    catalogue) and pyFAI is installed."""
    key = normalise_name(name)
    return key not in _GENERIC and key not in _BY_KEY and pyfai_available()


def builtin_geometry(name: str) -> DetectorGeometry:
    """The geometry of a detector of :data:`CATALOGUE` (pyFAI not consulted)."""
    det = _BY_KEY.get(normalise_name(name))
    if det is None:
        raise DetectorError(
            f"unknown detector {name!r}; the built-in catalogue has {', '.join(CATALOGUE)} "
            "(install pyFAI for all of pyFAI's detectors)"
        )
    return det.geometry()


def _runs(keep: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the runs of True in a 1-D boolean array."""
    d = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(), strict=True))


def geometry_from_mask(
    shape: tuple[int, int], mask: np.ndarray | None, pixel_size: tuple[float, float], name: str
) -> DetectorGeometry:
    """A grid of modules whose gaps are exactly the masked pixels of ``mask``.

    Raises
    ------
    DetectorError
        If the masked pixels are not whole rows and columns separating equal modules.
    """
    shape = (int(shape[0]), int(shape[1]))
    if mask is None or not np.any(mask):
        return DetectorGeometry(shape, (ModulePlacement(0, 0),), pixel_size, name=name)
    mask = np.asarray(mask) != 0
    rows = _runs(~mask.all(axis=1))
    cols = _runs(~mask.all(axis=0))
    sizes = {(r1 - r0, c1 - c0) for r0, r1 in rows for c0, c1 in cols}
    if len(sizes) != 1:
        raise DetectorError(f"{name}: the modules between the masked gaps differ in size {sizes}")
    mods = tuple(ModulePlacement(r0, c0) for r0, _ in rows for c0, _ in cols)
    geo = DetectorGeometry(sizes.pop(), mods, pixel_size, name=name, shape=shape)
    if not np.array_equal(geo.gap_mask(), mask):
        raise DetectorError(
            f"{name}: its mask is not a grid of module gaps (masked pixels inside the modules); "
            "give the layout as a geometry file"
        )
    return geo


def _pyfai_geometry(name: str, config: dict[str, Any]) -> DetectorGeometry:
    import pyFAI.detectors

    try:
        det = pyFAI.detectors.detector_factory(name, config or None)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise DetectorError(f"pyFAI does not know detector {name!r}: {exc}") from exc
    if det.max_shape is None:
        raise DetectorError(f"pyFAI's detector {name!r} has no shape; give max_shape")
    if not (det.uniform_pixel and det.IS_FLAT):
        raise DetectorError(
            f"detector {name!r} has non-uniform or non-flat pixels, which are not modelled"
        )
    return geometry_from_mask(det.max_shape, det.mask, (det.pixel1, det.pixel2), det.name)


def detector_geometry(
    name: str, config: dict[str, Any] | None = None, *, use_pyfai: bool | None = None
) -> DetectorGeometry | None:
    """The geometry of the detector a PONI file describes.

    Parameters
    ----------
    name : str
        The PONI's ``Detector`` (``"Detector"`` or empty for a generic detector).
    config : dict, optional
        The PONI's ``Detector_config``: ``pixel1``, ``pixel2``, ``max_shape``.
    use_pyfai : bool, optional
        Take named detectors from pyFAI; default: when pyFAI is installed.

    Returns
    -------
    DetectorGeometry or None
        None for a generic detector without ``max_shape`` (its layout is not described).

    Raises
    ------
    DetectorError
        Unknown name, or a configuration that cannot be used.
    """
    config = dict(config or {})
    config.pop("orientation", None)  # handled by the integrator, not a layout property
    if normalise_name(name) in _GENERIC:
        shape = config.get("max_shape")
        if shape is None:
            return None
        try:
            px = (float(config["pixel1"]), float(config["pixel2"]))
            rows, cols = (int(n) for n in shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise DetectorError(
                f"generic detector needs pixel1, pixel2 and max_shape [rows, cols], got {config}"
            ) from exc
        return DetectorGeometry((rows, cols), (ModulePlacement(0, 0),), px, name="Detector")
    if use_pyfai is None:
        use_pyfai = pyfai_available()
    if use_pyfai:
        return _pyfai_geometry(name, config)
    geo = builtin_geometry(name)
    if "pixel1" in config or "pixel2" in config:  # pyFAI lets a config override pixel sizes
        px = (float(config.get("pixel1", geo.pixel_size[0])), float(config.get("pixel2", 0)))
        px = (px[0], px[1] or geo.pixel_size[1])
        geo = DetectorGeometry(geo.module_shape, geo.modules, px, geo.dummy, geo.name, geo.shape)
    return geo
