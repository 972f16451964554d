"""Detector geometry as data: where each module's pixels land in the assembled image.

A multi-module detector is described by the shape of one module, a placement per module
(offset in the assembled image, quarter turns, flips, installed or not), the pixel size and the
value written into the gaps. The assembled image is a regular pixel grid: module offsets are
whole pixels, so the pixel at assembled (row, column) sits at ``((row + 0.5) * pixel1,
(column + 0.5) * pixel2)`` in the detector plane, as for any pyFAI detector. That is what feeds
the integrator.

Geometries load from TOML/JSON files (:meth:`DetectorGeometry.from_file`) and from per-module
NeXus files as written at DESY P03 (:meth:`DetectorGeometry.from_nexus`).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Default LAMBDA 9M layout: 4 rows x 3 columns of 516 x 1556 modules (pyFAI's Lambda750k
# module with its chip gaps), 140 px between rows and 30 px between columns, as measured for
# the stitching figures in shared/lambda9m.md (assembled 2484 x 4728).
LAMBDA_MODULE_SHAPE = (516, 1556)
LAMBDA_PIXEL_SIZE = 55e-6
_ROW_GAP, _COL_GAP = 140, 30


class GeometryError(ValueError):
    """A detector geometry that is inconsistent or cannot be read."""


@dataclass(frozen=True)
class ModulePlacement:
    """One module: where its (row 0, col 0) corner goes, after rotation and flips.

    Parameters
    ----------
    y, x : int
        Offset of the module's first assembled row and column, in pixels.
    rot90 : int
        Counter-clockwise quarter turns applied to the module (``numpy.rot90``), 0..3.
    flip_ud, flip_lr : bool
        Flips applied before rotation.
    present : bool
        False for a module that is not installed (its area stays dummy).
    """

    y: int
    x: int
    rot90: int = 0
    flip_ud: bool = False
    flip_lr: bool = False
    present: bool = True

    def orient(self, module: np.ndarray) -> np.ndarray:
        """The module array as it appears in the assembled image (a view: flips, then rotation)."""
        a = module
        if self.flip_ud:
            a = a[::-1, :]
        if self.flip_lr:
            a = a[:, ::-1]
        return np.rot90(a, self.rot90 % 4)

    def module_view(self, region: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`orient`: a view of an assembled-image region indexed like the module.

        ``module_view(canvas[y:y+h, x:x+w])[r, c]`` is where module pixel ``(r, c)`` lands, so
        stitching one module is a plain element-wise copy into this view.
        """
        a = np.rot90(region, -(self.rot90 % 4))
        if self.flip_lr:
            a = a[:, ::-1]
        if self.flip_ud:
            a = a[::-1, :]
        return a


@dataclass(frozen=True)
class DetectorGeometry:
    """Module shape, per-module placement, pixel size and gap value of a multi-module detector.

    Parameters
    ----------
    module_shape : (int, int)
        Rows and columns of one module as delivered (before orientation).
    modules : tuple of ModulePlacement
        One placement per physical module slot; absent modules keep their slot with
        ``present=False``. Parts of a frame arrive for the present modules, in this order.
    pixel_size : (float, float)
        Pixel size along rows (pixel1, slow axis) and columns (pixel2), in metres.
    dummy : float
        Value written into the gaps and absent modules of the assembled image.
    name : str
        A label.
    shape : (int, int)
        Assembled shape; computed from the placements when left at (0, 0).
    """

    module_shape: tuple[int, int]
    modules: tuple[ModulePlacement, ...]
    pixel_size: tuple[float, float] = (LAMBDA_PIXEL_SIZE, LAMBDA_PIXEL_SIZE)
    dummy: float = 0.0
    name: str = "custom"
    shape: tuple[int, int] = field(default=(0, 0))

    def __post_init__(self) -> None:
        object.__setattr__(self, "module_shape", tuple(int(n) for n in self.module_shape))
        object.__setattr__(self, "modules", tuple(self.modules))
        object.__setattr__(self, "pixel_size", tuple(float(p) for p in self.pixel_size))
        if len(self.module_shape) != 2 or min(self.module_shape) <= 0:
            raise GeometryError(f"module_shape must be two positive ints, not {self.module_shape}")
        if not self.modules:
            raise GeometryError("a detector geometry needs at least one module")
        for i, m in enumerate(self.modules):
            if m.y < 0 or m.x < 0:
                raise GeometryError(f"module {i} has a negative offset (y={m.y}, x={m.x})")
        h = w = 0
        for m in self.modules:
            mh, mw = self.placed_shape(m)
            h, w = max(h, m.y + mh), max(w, m.x + mw)
        if tuple(self.shape) == (0, 0):
            object.__setattr__(self, "shape", (h, w))
        else:
            object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
            if self.shape[0] < h or self.shape[1] < w:
                raise GeometryError(f"shape {self.shape} is smaller than the layout ({h}, {w})")
        cover = np.zeros(self.shape, dtype=np.uint8)
        for i in self.present:
            m = self.modules[i]
            mh, mw = self.placed_shape(m)
            cover[m.y : m.y + mh, m.x : m.x + mw] += 1
        if cover.max(initial=0) > 1:
            raise GeometryError("modules overlap in the assembled image")

    # -- layout -----------------------------------------------------------------------------

    def placed_shape(self, m: ModulePlacement) -> tuple[int, int]:
        """Shape a module occupies in the assembled image (rotations swap the axes)."""
        r, c = self.module_shape
        return (c, r) if m.rot90 % 2 else (r, c)

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    @property
    def present(self) -> list[int]:
        """Indices of the installed modules, in the order their parts arrive."""
        return [i for i, m in enumerate(self.modules) if m.present]

    @property
    def n_pixels(self) -> int:
        """Number of real (module) pixels."""
        return len(self.present) * self.module_shape[0] * self.module_shape[1]

    def region(self, canvas: np.ndarray, index: int) -> np.ndarray:
        """The assembled-image region of module ``index`` (a view of ``canvas``)."""
        m = self.modules[index]
        h, w = self.placed_shape(m)
        return canvas[m.y : m.y + h, m.x : m.x + w]

    def module_views(self, canvas: np.ndarray) -> list[np.ndarray]:
        """Views of ``canvas`` indexed like each present module (see ModulePlacement)."""
        return [self.modules[i].module_view(self.region(canvas, i)) for i in self.present]

    def valid_mask(self) -> np.ndarray:
        """Boolean image, True where a present module's pixel lands (False in gaps)."""
        cover = np.zeros(self.shape, dtype=bool)
        for i in self.present:
            self.region(cover, i)[...] = True
        return cover

    def gap_mask(self) -> np.ndarray:
        """Boolean image, True in the gaps and absent modules (a pyFAI-style static mask)."""
        return ~self.valid_mask()

    def module_pixel_index(self) -> np.ndarray:
        """Flat assembled-image index of every module pixel: shape (n_present, rows, cols).

        This is the one source of truth for where a module pixel goes; stitching, the fused
        integration tables and the tests all derive from it.
        """
        idx = np.arange(self.shape[0] * self.shape[1], dtype=np.int64).reshape(self.shape)
        return np.stack([np.ascontiguousarray(v) for v in self.module_views(idx)])

    def with_missing(self, missing: Sequence[int]) -> DetectorGeometry:
        """A copy with the listed module slots marked absent (the assembled shape is kept)."""
        bad = [i for i in missing if not 0 <= int(i) < self.n_modules]
        if bad:
            raise GeometryError(f"missing_modules {bad} out of range 0..{self.n_modules - 1}")
        mods = tuple(
            ModulePlacement(m.y, m.x, m.rot90, m.flip_ud, m.flip_lr, m.present and i not in missing)
            for i, m in enumerate(self.modules)
        )
        return DetectorGeometry(
            self.module_shape, mods, self.pixel_size, self.dummy, self.name, self.shape
        )

    # -- identity ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-serialisable description (the format :meth:`from_dict` reads)."""
        return {
            "name": self.name,
            "module_shape": list(self.module_shape),
            "pixel_size": list(self.pixel_size),
            "dummy": self.dummy,
            "shape": list(self.shape),
            "modules": [asdict(m) for m in self.modules],
        }

    def digest(self) -> str:
        """A stable hash of everything that decides where pixels land (keys on-disk tables)."""
        d = self.to_dict()
        d.pop("name")
        return hashlib.blake2b(json.dumps(d, sort_keys=True).encode(), digest_size=12).hexdigest()

    # -- constructors -----------------------------------------------------------------------

    @classmethod
    def default_lambda9m(cls, missing: tuple[int, ...] = ()) -> DetectorGeometry:
        """The default 12-module LAMBDA 9M layout; ``missing`` lists absent module indices."""
        r, c = LAMBDA_MODULE_SHAPE
        mods = tuple(
            ModulePlacement(
                y=row * (r + _ROW_GAP),
                x=col * (c + _COL_GAP),
                present=(row * 3 + col) not in missing,
            )
            for row in range(4)
            for col in range(3)
        )
        return cls(LAMBDA_MODULE_SHAPE, mods, name="lambda9m")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorGeometry:
        """Build from a mapping: ``module_shape``, ``modules`` (list of tables with y, x and
        optionally rot90, flip_ud, flip_lr, present), optional ``pixel_size``, ``dummy``,
        ``name``, ``shape``, ``missing_modules``."""
        known = {
            "name",
            "module_shape",
            "pixel_size",
            "dummy",
            "shape",
            "modules",
            "missing_modules",
        }
        unknown = set(d) - known
        if unknown:
            raise GeometryError(f"unknown geometry keys {sorted(unknown)}; known: {sorted(known)}")
        try:
            mods = []
            for i, m in enumerate(d["modules"]):
                extra = set(m) - {"y", "x", "rot90", "flip_ud", "flip_lr", "present"}
                if extra:
                    raise GeometryError(f"module {i}: unknown keys {sorted(extra)}")
                mods.append(
                    ModulePlacement(
                        int(m["y"]),
                        int(m["x"]),
                        int(m.get("rot90", 0)),
                        bool(m.get("flip_ud", False)),
                        bool(m.get("flip_lr", False)),
                        bool(m.get("present", True)),
                    )
                )
            geo = cls(
                tuple(d.get("module_shape", LAMBDA_MODULE_SHAPE)),
                tuple(mods),
                tuple(d.get("pixel_size", (LAMBDA_PIXEL_SIZE, LAMBDA_PIXEL_SIZE))),
                float(d.get("dummy", 0.0)),
                str(d.get("name", "custom")),
                tuple(d.get("shape", (0, 0))),
            )
        except (KeyError, TypeError) as exc:
            raise GeometryError(f"bad geometry description: {exc!r}") from exc
        if d.get("missing_modules"):
            geo = geo.with_missing(d["missing_modules"])
        return geo

    @classmethod
    def from_file(cls, path: str | Path) -> DetectorGeometry:
        """Load a geometry from a ``.toml`` or ``.json`` file (see :meth:`from_dict`)."""
        path = Path(path)
        try:
            if path.suffix.lower() == ".toml":
                d = tomllib.loads(path.read_text())
            elif path.suffix.lower() == ".json":
                d = json.loads(path.read_text())
            else:
                raise GeometryError(f"{path}: geometry files are .toml or .json")
        except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise GeometryError(f"cannot read geometry file {path}: {exc}") from exc
        return cls.from_dict(d)

    def to_file(self, path: str | Path) -> None:
        """Write the geometry as JSON (TOML writing needs no extra dependency this way)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_nexus(
        cls,
        paths: Sequence[str | Path],
        translation: str = "entry/instrument/detector/translation/distance",
        data: str = "entry/instrument/detector/data",
        pixel_size: tuple[float, float] = (LAMBDA_PIXEL_SIZE, LAMBDA_PIXEL_SIZE),
        name: str = "nexus",
    ) -> DetectorGeometry:
        """Build from per-module NeXus files (one file per installed module, in part order).

        Each file's ``translation`` dataset holds the module offset as ``[x, y]`` in pixels.
        Offsets are shifted so the smallest is 0. The module shape comes from the last two
        dimensions of ``data`` when present, else the LAMBDA module shape. As the files are
        renumbered when a module is switched off, the geometry has exactly the modules given.
        """
        import h5py

        if not paths:
            raise GeometryError("from_nexus needs at least one module file")
        offsets = []
        shape = None
        for p in paths:
            try:
                with h5py.File(p, "r") as f:
                    t = np.asarray(f[translation][()], dtype=np.float64).ravel()
                    if data in f:
                        s = tuple(f[data].shape[-2:])
                        if shape is not None and s != shape:
                            raise GeometryError(f"{p}: module shape {s} differs from {shape}")
                        shape = s
            except (OSError, KeyError) as exc:
                raise GeometryError(f"cannot read module translation from {p}: {exc}") from exc
            if t.size < 2:
                raise GeometryError(f"{p}: {translation} must hold [x, y], got {t}")
            offsets.append((int(round(t[1])), int(round(t[0]))))
        y0 = min(o[0] for o in offsets)
        x0 = min(o[1] for o in offsets)
        mods = tuple(ModulePlacement(y - y0, x - x0) for y, x in offsets)
        return cls(shape or LAMBDA_MODULE_SHAPE, mods, pixel_size, name=name)


def read_nexus_corrections(
    paths: Sequence[str | Path], detector: str = "entry/instrument/detector"
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Per-module flat-field and pixel mask from NeXus module files, where not yet applied.

    A dataset ``flatfield`` (``pixel_mask``) is returned when present and its
    ``flatfield_applied`` (``pixel_mask_applied``) flag is absent or false; else None.
    """
    import h5py

    flats: list[np.ndarray | None] = []
    masks: list[np.ndarray | None] = []
    for p in paths:
        with h5py.File(p, "r") as f:
            det = f[detector]
            for key, out in (("flatfield", flats), ("pixel_mask", masks)):
                applied = (
                    bool(np.asarray(det[key + "_applied"][()]))
                    if (key + "_applied") in det
                    else False
                )
                out.append(np.asarray(det[key][()]) if key in det and not applied else None)
    return flats, masks


def load_geometry(
    geometry: str | Path | DetectorGeometry | None = None, missing_modules: Sequence[int] = ()
) -> DetectorGeometry:
    """Resolve a geometry parameter: None or ``"lambda9m"`` (the default layout), a file path,
    or a geometry object; then mark ``missing_modules`` absent."""
    if isinstance(geometry, DetectorGeometry):
        geo = geometry
    elif geometry is None or str(geometry) in ("", "lambda9m", "default"):
        geo = DetectorGeometry.default_lambda9m()
    else:
        geo = DetectorGeometry.from_file(geometry)
    return geo.with_missing(missing_modules) if missing_modules else geo
