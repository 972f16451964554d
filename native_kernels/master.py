"""DECTRIS-style NeXus master files (``*_master.h5``): geometry, pixel mask and linked data.

Usable without shmpipe (h5py and hdf5plugin only); the ``files`` source and the integrator
adapter both read master files through :func:`read_master`.

A master file holds the detector description under ``entry/instrument`` and links its frames
from ``entry/data/data_000001``, ``data_000002`` ... (external links to the data files, each a
``(frames, rows, cols)`` dataset, usually bitshuffle-LZ4 compressed one frame per chunk).
:func:`read_master` gathers what a reduction needs:

=================== =======================================================================
pixel size          ``detector/y_pixel_size`` (pixel1), ``detector/x_pixel_size`` (pixel2)
beam centre         ``detector/beam_center_y``, ``beam_center_x`` (pixels)
distance            ``detector/detector_distance``
wavelength          ``beam/incident_wavelength`` (DECTRIS writes ångström; ``units`` honoured)
pixel mask          ``detector/detectorSpecific/pixel_mask`` (nonzero: gap, dead, hot ...)
=================== =======================================================================

The point of normal incidence is the beam centre (no tilt): ``poni1 = beam_center_y *
pixel1``, ``poni2 = beam_center_x * pixel2``, the beam centre being read in pixel coordinates
whose origin is the first pixel's outer corner (pyFAI's Fit2D convention, no tilt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DETECTOR = "entry/instrument/detector"
BSLZ4_FILTER = 32008  # bitshuffle's registered HDF5 filter id (LZ4 inside)
_LENGTH_UNITS = {
    "m": 1.0,
    "meter": 1.0,
    "metre": 1.0,
    "mm": 1e-3,
    "um": 1e-6,
    "micron": 1e-6,
    "nm": 1e-9,
    "a": 1e-10,
    "angstrom": 1e-10,
    "å": 1e-10,
}


class MasterFileError(ValueError):
    """A master file that lacks what is needed, or whose data files cannot be read."""


@dataclass(frozen=True)
class DataLink:
    """One linked data file: the file, the dataset in it, and how many frames it holds."""

    file: str
    dataset: str
    frames: int
    bslz4_chunks: bool
    """One frame per chunk, filtered by bitshuffle-LZ4 alone: the chunks can be read raw."""


@dataclass(frozen=True)
class MasterFile:
    """What a DECTRIS master file says about the detector and where its frames are."""

    path: str
    pixel_size: tuple[float, float]
    beam_center: tuple[float, float]
    distance: float
    wavelength: float | None
    shape: tuple[int, int]
    dtype: str
    links: tuple[DataLink, ...]
    description: str = ""
    pixel_mask: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def frames(self) -> int:
        return sum(link.frames for link in self.links)

    @property
    def poni_params(self) -> tuple[float, float, float, float, float, float]:
        """(dist, poni1, poni2, rot1, rot2, rot3) in pyFAI's convention, no tilt."""
        return (
            self.distance,
            self.beam_center[0] * self.pixel_size[0],
            self.beam_center[1] * self.pixel_size[1],
            0.0,
            0.0,
            0.0,
        )


def _length(group, name: str, path: str, default_unit: str = "m") -> float:
    if name not in group:
        raise MasterFileError(f"{path}: {group.name}/{name} is missing")
    ds = group[name]
    unit = ds.attrs.get("units", default_unit)
    unit = unit.decode() if isinstance(unit, bytes) else str(unit)
    scale = _LENGTH_UNITS.get(unit.strip().lower())
    if scale is None:
        raise MasterFileError(f"{path}: {ds.name} has unknown units {unit!r}")
    return float(np.asarray(ds[()])) * scale


def _number(group, name: str, path: str) -> float:
    if name not in group:
        raise MasterFileError(f"{path}: {group.name}/{name} is missing")
    return float(np.asarray(group[name][()]))


def _link(master_dir: Path, entry_data, name: str, path: str) -> tuple[DataLink, tuple, str]:
    import h5py

    link = entry_data.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        file = Path(link.filename)
        file = file if file.is_absolute() else master_dir / file
        dataset = link.path
    else:  # data kept in the master file itself
        file, dataset = Path(path), entry_data[name].name
    try:
        with h5py.File(file, "r") as f:
            ds = f[dataset]
            if ds.ndim != 3:
                raise MasterFileError(f"{path}: {name} in {file} is not (frames, rows, cols)")
            filters = ds.id.get_create_plist()
            ids = [filters.get_filter(i)[0] for i in range(filters.get_nfilters())]
            raw = (
                ds.chunks is not None and ds.chunks == (1, *ds.shape[1:]) and ids == [BSLZ4_FILTER]
            )
            return (
                DataLink(str(file), dataset, int(ds.shape[0]), raw),
                tuple(ds.shape[1:]),
                np.dtype(ds.dtype).str,
            )
    except (OSError, KeyError) as exc:
        raise MasterFileError(f"{path}: cannot read linked data {name} ({file}): {exc}") from exc


def read_master(path: str | Path) -> MasterFile:
    """Read a DECTRIS master file.

    Raises
    ------
    MasterFileError
        Naming the file and what is missing: pixel sizes, beam centre, distance, data links.
    """
    import h5py
    import hdf5plugin  # noqa: F401 - DECTRIS compresses the pixel mask too

    path = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise MasterFileError(f"cannot open master file {path}: {exc}") from exc
    with f:
        if DETECTOR not in f:
            raise MasterFileError(f"{path}: no {DETECTOR} group (not a DECTRIS master file?)")
        det = f[DETECTOR]
        missing = [k for k in ("y_pixel_size", "x_pixel_size") if k not in det]
        if missing:
            raise MasterFileError(
                f"{path}: no pixel size ({', '.join(DETECTOR + '/' + k for k in missing)} missing)"
            )
        px = (_length(det, "y_pixel_size", path), _length(det, "x_pixel_size", path))
        centre = (_number(det, "beam_center_y", path), _number(det, "beam_center_x", path))
        distance = _length(det, "detector_distance", path)
        wavelength = None
        beam = f.get("entry/instrument/beam")
        if beam is not None and "incident_wavelength" in beam:
            wavelength = _length(beam, "incident_wavelength", path, default_unit="angstrom")
        mask = None
        if "detectorSpecific/pixel_mask" in det:
            mask = np.asarray(det["detectorSpecific/pixel_mask"][()])
        description = ""
        if "description" in det:
            d = det["description"][()]
            description = d.decode() if isinstance(d, bytes) else str(d)
        data = f.get("entry/data")
        names = sorted(n for n in (data or {}) if n.startswith("data_"))
        if not names:
            raise MasterFileError(f"{path}: no entry/data/data_NNNNNN links to data files")
        links, shapes = [], set()
        for n in names:
            link, shape, dtype = _link(Path(path).parent, data, n, path)
            links.append(link)
            shapes.add((shape, dtype))
        if len(shapes) != 1:
            raise MasterFileError(f"{path}: the data files differ in frame shape or type {shapes}")
        (shape, dtype) = shapes.pop()
    if mask is not None and mask.shape != shape:
        raise MasterFileError(f"{path}: pixel_mask has shape {mask.shape}, frames {shape}")
    return MasterFile(
        path, px, centre, distance, wavelength, shape, dtype, tuple(links), description, mask
    )
