"""Azimuthal (radial) integration with a pyFAI-shaped API.

>>> ai = AzimuthalIntegrator.from_poni("calib.poni")            # the PONI's detector
>>> res = ai.integrate1d(image, 1000, unit="q_nm^-1", polarization_factor=0.99,
...                      error_model="poisson")
>>> res.radial, res.intensity, res.sigma

``integrate1d`` accepts an assembled image or the list of module parts (the *fused* path:
no assembled image is ever built; the tables are laid out per module, so both give the same
numbers, summed in the same order). For repeated use, build the plan once:

>>> plan = ai.plan1d(1000, unit="2th_deg", method="bbox", cache_dir="/tmp/azint")
>>> res = plan.integrate(parts)

Semantics follow pyFAI's ``integrate1d`` (``integrate1d_ng``) with the CSR engine: per bin
``sum_signal = Σ c·(raw − dark)``, ``sum_normalization = Σ c·flat·solid_angle·polarization·
normalization_factor``, ``count = Σ c``, ``intensity = sum_signal / sum_normalization``; with
an error model ``sum_variance = Σ c²·σ²`` (Poisson: σ² = max(raw, 1), as pyFAI's Cython
engine, dark not added; azimuthal: the spread of signal/ω around the bin mean, with
pyFAI's single-pass weighted update),
``std = sqrt(sum_variance / Σ c²ω²)`` and ``sem = sigma = sqrt(sum_variance) /
sum_normalization``. Empty bins hold 0. Pixel splitting: ``"no"`` or
``"bbox"``; method tuples such as ``("bbox", "csr", "cython")`` are accepted (only the split
matters).
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from native_kernels import accumulate as A
from native_kernels import positions as P
from native_kernels.declared import poni_layout
from native_kernels.detectors import detector_geometry
from native_kernels.geometry import (
    DetectorGeometry,
    GeometryError,
    ModulePlacement,
    load_geometry,
)
from native_kernels.poni import Poni, PoniError, read_poni
from native_kernels.split2d import build_table_2d_bbox, chi_delta_array
from native_kernels.tables import (
    WORD_MAX_BINS,
    Table,
    build_table_1d,
    build_table_2d,
    cache_key,
    load_cached,
    save_cached,
    static_sums,
)

TABLE_FORMAT = 7  # bump when the table layout or binning rules change (invalidates caches)
ERROR_MODELS = (None, "poisson", "azimuthal")


@dataclass
class Integrate1dResult:
    """Result of a 1-D integration; names follow pyFAI's ``Integrate1dResult``.

    ``sigma`` is the standard error of the mean (``sem``), as pyFAI reports it; ``std`` the
    standard deviation of the pixel values in the bin. Both are None without an error model.
    """

    radial: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None
    sum_signal: np.ndarray
    sum_normalization: np.ndarray
    sum_normalization2: np.ndarray
    count: np.ndarray
    sum_variance: np.ndarray | None
    std: np.ndarray | None
    sem: np.ndarray | None
    unit: str
    method: str

    def __iter__(self):  # ``q, I = ai.integrate1d(...)`` as with pyFAI
        yield self.radial
        yield self.intensity
        if self.sigma is not None:
            yield self.sigma


@dataclass
class Integrate2dResult:
    """Result of a 2-D (cake) integration: arrays are (npt_azim, npt_rad), as in pyFAI."""

    intensity: np.ndarray
    radial: np.ndarray
    azimuthal: np.ndarray
    sum_signal: np.ndarray
    sum_normalization: np.ndarray
    count: np.ndarray
    sigma: np.ndarray | None
    unit: str


class PoniMismatchWarning(UserWarning):
    """An explicit geometry that contradicts the detector its PONI file describes."""


def _resolve_geometry(geometry, missing_modules: Sequence[int]) -> DetectorGeometry:
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


def _with_pixel_size(geo: DetectorGeometry, px: tuple[float, float]) -> DetectorGeometry:
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
            stacklevel=3,
        )


def _split_of(method: Any) -> str:
    if isinstance(method, (tuple, list)):
        method = method[0] if method else "no"
    m = str(method).lower()
    if m in ("no", "nosplit", "histogram"):
        return "no"
    if m in ("bbox", "splitbbox"):
        return "bbox"
    raise ValueError(f"unsupported pixel splitting {method!r}: use 'no' or 'bbox'")


def _error_model(em: str | None) -> str | None:
    em = None if em in (None, "", "no", "none") else str(em).lower()
    if em not in ERROR_MODELS:
        raise ValueError(f"error_model must be None, 'poisson' or 'azimuthal', not {em!r}")
    return em


def _usable(cached: dict | None, n_pixels: int, names: tuple[str, ...]) -> dict | None:
    """A cached table only if it has every array and the right pixel count (else rebuild)."""
    if cached is None or any(k not in cached for k in names):
        return None
    if cached["bin"].size != n_pixels or cached["norm"].size != n_pixels:
        return None
    return cached


def _crc(a: np.ndarray | None) -> int | None:
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    return zlib.crc32(a.view(np.uint8).reshape(-1).data) ^ hash((a.shape, a.dtype.str)) & 0xFFFF


def flat_segment(view: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(flat array, offset of row 0, row stride) of a 2-D view with unit column stride.

    This is how the loops see a module: an assembled image's module region is passed without
    copying. A view whose columns are not contiguous (a module rotated or flipped left-right in
    the layout) is copied first: such layouts are rare, and the copy keeps the hot loop simple.
    """
    if view.ndim != 2:
        raise ValueError(f"expected a 2-D module array, got shape {view.shape}")
    item = view.dtype.itemsize
    if view.strides[1] != item or view.strides[0] % item:
        view = np.ascontiguousarray(view)
    rows, cols = view.shape
    s0 = view.strides[0] // item
    if s0 >= 0:
        span = (rows - 1) * s0 + cols
        return np.lib.stride_tricks.as_strided(view, (span,), (item,)), 0, s0
    up = view[::-1]
    span = (rows - 1) * (-s0) + cols
    flat = np.lib.stride_tricks.as_strided(up, (span,), (item,))
    return flat, (rows - 1) * (-s0), s0


class RadialPlan:
    """Precomputed integration of one geometry into fixed bins, with fixed corrections.

    Built by :meth:`AzimuthalIntegrator.plan1d` / :meth:`AzimuthalIntegrator.plan2d`. Holds,
    per present module, the table rows and the normalisation ω = flat·solid angle·
    polarization in the module's own pixel order, plus the static per-bin sums.
    """

    def __init__(
        self,
        geometry: DetectorGeometry,
        table: Table,
        norm: np.ndarray,
        unit: str,
        scale: float,
        npt: int | tuple[int, int],
        check_dummy: bool,
        dummy: float | None,
        delta_dummy: float | None,
    ) -> None:
        self.geometry = geometry
        self.n_parts = len(geometry.present)
        self.part_shape = geometry.module_shape
        seg_shape = (self.n_parts, *geometry.module_shape)
        self.table = table.reshape(seg_shape)
        self.norm = np.ascontiguousarray(norm, dtype=np.float32).reshape(seg_shape)
        self.static = static_sums(table, norm)
        self.unit = unit
        self.scale = scale
        self.npt = npt
        self.nbins = table.nbins
        self.split = table.split
        e = table.edges
        n_rad = npt if isinstance(npt, int) else npt[0]
        self.radial = (e["lo"] + (np.arange(n_rad) + 0.5) * e["delta"]) * scale
        self.azimuthal = None
        if "azim_lo" in e:
            self.azimuthal = np.rad2deg(e["azim_lo"] + (np.arange(npt[1]) + 0.5) * e["azim_delta"])
        self.dummy = dummy
        self.delta_dummy = delta_dummy
        self.check_dummy = check_dummy
        self._accs = np.zeros((A.NCOPY, self.nbins + 2), dtype=np.float64)
        self._accv = np.zeros((A.NCOPY, self.nbins + 2), dtype=np.float64)
        self._accp = np.zeros((A.NCOPY, 2 * (self.nbins + 2)), dtype=np.float64)  # lean loops
        self._removed = np.zeros((self.nbins + 2, 3), dtype=np.float64)
        # Placeholders for arrays a loop does not read (Numba needs a typed argument).
        self._no_dark = np.zeros(1, dtype=np.float32)
        self._no_coef = np.zeros((1, 1), dtype=np.float32)
        npx = self.part_shape[0] * self.part_shape[1]
        if self.split == "bbox":
            cuts = np.searchsorted(self.table.exc_pix, np.arange(self.n_parts + 1) * npx)
            self._exc_ranges = [(int(cuts[k]), int(cuts[k + 1])) for k in range(self.n_parts)]
        self._npx = npx
        self._runs = None  # image-order runs, for the azimuthal error model
        self._exc_of = None

    # -- inputs ---------------------------------------------------------------------------

    def segments(
        self, data: np.ndarray | Sequence[np.ndarray], what: str = "image"
    ) -> list[np.ndarray]:
        """The per-module views of ``data``: an assembled image or the list of parts."""
        if isinstance(data, np.ndarray) and data.ndim == 2:
            if data.shape != self.geometry.shape:
                raise ValueError(
                    f"{what} has shape {data.shape}, expected {self.geometry.shape} "
                    f"(detector {self.geometry.name})"
                )
            return self.geometry.module_views(data)
        parts = list(data)
        if len(parts) != self.n_parts:
            raise ValueError(f"expected {self.n_parts} module parts, got {len(parts)}")
        for i, p in enumerate(parts):
            if p.shape != self.part_shape:
                raise ValueError(f"part {i} has shape {p.shape}, expected {self.part_shape}")
        return parts

    def _check_dtype(self, segs: list[np.ndarray]) -> None:
        for s in segs:
            if s.dtype.kind not in "uif" or s.dtype.itemsize > 8:
                raise TypeError(f"cannot integrate data of dtype {s.dtype}")

    # -- the integration ------------------------------------------------------------------

    def _dummy_args(self):
        return (
            self.check_dummy,
            np.float32(self.dummy if self.dummy is not None else 0.0),
            np.float32(self.delta_dummy or 0.0),
        )

    def accumulate(self, data, dark=None, error_model=None):
        """Run the per-frame loops; return (signal, variance, removed, segments, darks)."""
        em = _error_model(error_model)
        segs = self.segments(data)
        self._check_dtype(segs)
        segs = [flat_segment(v) for v in segs]
        darks = [(self._no_dark, 0, 0)] * len(segs)
        use_dark = dark is not None
        if use_dark:
            dark = np.asarray(dark, dtype=np.float32)
            if dark.ndim == 3:
                dark = list(dark)
            darks = [flat_segment(v) for v in self.segments(dark, "dark")]
        accs, accv, removed = self._accs, self._accv, self._removed
        accp = self._accp
        accs[...] = 0.0
        accv[...] = 0.0
        accp[...] = 0.0
        removed[...] = 0.0
        cd, dummy, ddummy = self._dummy_args()
        poisson = em == "poisson"
        # An exact dummy is one compare in the lean loops; a tolerance needs the general ones.
        lean = not (use_dark or (cd and ddummy != 0.0))
        lean_dummy = float(dummy) if cd else np.nan
        t = self.table
        nb = self.nbins
        for k, ((img, b0, s0), (dk, db, ds)) in enumerate(zip(segs, darks, strict=True)):
            if self.split == "no":
                if lean:
                    A.nosplit_lean(
                        img,
                        b0,
                        s0,
                        t.bin[k],
                        self.norm[k],
                        lean_dummy,
                        poisson,
                        nb,
                        accp,
                        removed,
                    )
                else:
                    A.nosplit_general(
                        img,
                        b0,
                        s0,
                        t.bin[k],
                        dk,
                        db,
                        ds,
                        use_dark,
                        self.norm[k],
                        cd,
                        dummy,
                        ddummy,
                        poisson,
                        nb,
                        accs,
                        accv,
                        removed,
                    )
                continue
            if lean and t.word is not None:
                A.bbox_lean_words(
                    img, b0, s0, t.word[k], self.norm[k], lean_dummy, nb, accp, removed
                )
            elif lean:
                A.bbox_lean(
                    img,
                    b0,
                    s0,
                    t.bin[k],
                    t.coef[k],
                    self.norm[k],
                    lean_dummy,
                    poisson,
                    nb,
                    accp,
                    removed,
                )
            else:
                A.bbox_general(
                    img,
                    b0,
                    s0,
                    t.bin[k],
                    t.coef[k],
                    dk,
                    db,
                    ds,
                    use_dark,
                    self.norm[k],
                    cd,
                    dummy,
                    ddummy,
                    poisson,
                    nb,
                    accs,
                    accv,
                    removed,
                )
            lo, hi = self._exc_ranges[k]
            if hi > lo:
                A.bbox_exceptions(
                    img,
                    b0,
                    s0,
                    k * self._npx,
                    t.exc_pix,
                    t.exc_ptr,
                    t.exc_bin,
                    t.exc_coef,
                    lo,
                    hi,
                    dk,
                    db,
                    ds,
                    use_dark,
                    self.norm[k],
                    cd,
                    dummy,
                    ddummy,
                    poisson,
                    accs,
                    accv,
                    removed,
                )
        signal = accs.sum(axis=0)[:nb] + accp[:, 0::2].sum(axis=0)[:nb]
        variance = accv.sum(axis=0)[:nb] + accp[:, 1::2].sum(axis=0)[:nb]
        return (signal, variance, removed[:nb], segs, darks, use_dark)

    def integrate(
        self,
        data: np.ndarray | Sequence[np.ndarray],
        dark: np.ndarray | None = None,
        normalization_factor: float = 1.0,
        error_model: str | None = None,
        out: dict[str, np.ndarray] | None = None,
    ) -> Integrate1dResult:
        """Integrate one frame.

        Parameters
        ----------
        data : numpy.ndarray or sequence of numpy.ndarray
            The assembled image (geometry.shape) or the module parts (fused path).
        dark : numpy.ndarray, optional
            Dark current, same layout as ``data`` (assembled image or stacked parts).
        normalization_factor : float
            Monitor value: the normalisation is multiplied by it (pyFAI semantics).
        error_model : {None, "poisson", "azimuthal"}
        out : dict, optional
            Preallocated destination arrays by name (``radial``, ``intensity``,
            ``sum_signal``, ``sum_normalization``, ``count``, ``sigma``, ``std``); the result
            then holds views of them.
        """
        em = _error_model(error_model)
        if not normalization_factor or not np.isfinite(normalization_factor):
            raise ValueError(
                f"normalization_factor must be finite and nonzero, got {normalization_factor}"
            )
        signal, var_sum, removed, segs, darks, use_dark = self.accumulate(data, dark, em)
        st = self.static
        nf = float(normalization_factor)
        count = st[:, 0] - removed[:, 0]
        norm = (st[:, 1] - removed[:, 1]) * nf
        norm2 = (st[:, 2] - removed[:, 2]) * (nf * nf)
        empty = ~(norm != 0)  # pyFAI: bins with no normalisation are "empty" (0)
        with np.errstate(divide="ignore", invalid="ignore"):
            intensity = np.where(empty, 0.0, signal / norm)
            variance = None
            if em == "poisson":
                variance = var_sum.copy()
            elif em == "azimuthal":
                variance = self._azimuthal(segs, darks, use_dark)
            std = sem = None
            if variance is not None:
                std = np.where(empty, 0.0, np.sqrt(variance / norm2))
                sem = np.where(empty, 0.0, np.sqrt(variance) / norm)
        res = dict(
            radial=self.radial,
            intensity=intensity,
            sum_signal=signal,
            sum_normalization=norm,
            count=count,
            sigma=sem,
            std=std,
        )
        if out is not None:
            for name, arr in res.items():
                if name in out and arr is not None:
                    out[name][...] = arr.reshape(out[name].shape)
                    res[name] = out[name]
        return Integrate1dResult(
            radial=res["radial"],
            intensity=res["intensity"],
            sigma=res["sigma"],
            sum_signal=res["sum_signal"],
            sum_normalization=res["sum_normalization"],
            sum_normalization2=norm2,
            count=res["count"],
            sum_variance=variance,
            std=res["std"],
            sem=res["sigma"],
            unit=self.unit,
            method=self.split,
        )

    def _image_order(self):
        """Runs of module pixels in assembled-image order (built on first use, then kept)."""
        if self._runs is None:
            order = np.argsort(self.geometry.module_pixel_index().reshape(-1), kind="stable")
            self._runs = A.canvas_runs(order.astype(np.int64), self.part_shape[1])
            if self.split == "bbox":
                exc_of = np.full(self.n_parts * self._npx, -1, dtype=np.int32)
                exc_of[self.table.exc_pix] = np.arange(self.table.exc_pix.size, dtype=np.int32)
                self._exc_of = exc_of
        return self._runs

    def _azimuthal(self, segs, darks, use_dark):
        runs = self._image_order()
        state = np.zeros((self.nbins + 2, 3), dtype=np.float64)
        cd, dummy, ddummy = self._dummy_args()
        t = self.table
        split = self.split == "bbox"

        def addressing(views):
            return (
                np.array([v.ctypes.data for v, _, _ in views], dtype=np.int64),
                np.array([b for _, b, _ in views], dtype=np.int64),
                np.array([s for _, _, s in views], dtype=np.int64),
            )

        a, b, st = addressing(segs)
        da, db, dst = addressing(darks)
        no_exc = np.zeros(1, np.int32)
        A.azimuthal_variance(
            runs,
            self._npx,
            self.part_shape[1],
            segs[0][0],
            a,
            b,
            st,
            darks[0][0],
            da,
            db,
            dst,
            use_dark,
            t.bin.reshape(-1),
            t.coef.reshape(-1) if split else self._no_coef.reshape(-1),
            split,
            self._exc_of if split else no_exc,
            t.exc_ptr if split else np.zeros(1, np.int64),
            t.exc_bin if split else np.zeros(1, np.int32),
            t.exc_coef if split else np.zeros(1, np.float32),
            self.norm.reshape(-1),
            cd,
            dummy,
            ddummy,
            self.nbins,
            state,
        )
        return state[: self.nbins, 2].copy()

    def integrate2d(
        self, data, dark=None, normalization_factor: float = 1.0, error_model: str | None = None
    ) -> Integrate2dResult:
        """Integrate one frame with a 2-D plan (see :meth:`AzimuthalIntegrator.plan2d`)."""
        if self.azimuthal is None:
            raise ValueError("this plan is 1-D: build it with plan2d")
        r = self.integrate(data, dark, normalization_factor, error_model)
        shape = (self.npt[1], self.npt[0])
        return Integrate2dResult(
            intensity=r.intensity.reshape(shape),
            radial=self.radial,
            azimuthal=self.azimuthal,
            sum_signal=r.sum_signal.reshape(shape),
            sum_normalization=r.sum_normalization.reshape(shape),
            count=r.count.reshape(shape),
            sigma=None if r.sigma is None else r.sigma.reshape(shape),
            unit=self.unit,
        )

    def bytes_per_frame(self, data_itemsize: int = 2) -> int:
        """Bytes the per-frame loop must read (for bandwidth figures)."""
        n = self.n_parts * self.part_shape[0] * self.part_shape[1]
        t = self.table
        if t.word is not None and not (self.check_dummy and self.delta_dummy):
            per_px = data_itemsize + t.word.dtype.itemsize  # the lean loop reads the words
        else:
            per_px = data_itemsize + t.bin.dtype.itemsize
            if self.split == "bbox":
                per_px += t.coef.dtype.itemsize
        return n * per_px


class AzimuthalIntegrator:
    """Geometry of a diffraction experiment on a (multi-module) detector; integrates images.

    Parameters
    ----------
    dist, poni1, poni2, rot1, rot2, rot3 : float
        pyFAI geometry (metres, radians).
    wavelength : float, optional
        Metres; required for q units.
    geometry : DetectorGeometry, path, tuple or None
        The detector layout: a :class:`DetectorGeometry`, a geometry file, ``"lambda9m"``
        (default) or a plain image shape ``(rows, cols)`` for a single-module detector.
    missing_modules : sequence of int
        Module slots not installed.
    pixel1, pixel2 : float, optional
        Override the geometry's pixel size (metres).
    orientation : {1, 2, 3, 4}
        pyFAI's detector orientation (PONI 2.1): 3, the default, has the first pixel at the
        origin; 1 is the image turned by 180°, 2 flipped top-bottom, 4 flipped left-right.
    """

    def __init__(
        self,
        dist: float = 0.1,
        poni1: float = 0.0,
        poni2: float = 0.0,
        rot1: float = 0.0,
        rot2: float = 0.0,
        rot3: float = 0.0,
        wavelength: float | None = None,
        geometry: DetectorGeometry | str | Path | tuple[int, int] | None = None,
        missing_modules: Sequence[int] = (),
        pixel1: float | None = None,
        pixel2: float | None = None,
        orientation: int = 3,
    ) -> None:
        self.poni = Poni(
            float(dist),
            float(poni1),
            float(poni2),
            float(rot1),
            float(rot2),
            float(rot3),
            None if wavelength is None else float(wavelength),
        )
        if orientation not in (1, 2, 3, 4):
            raise ValueError(f"orientation must be 1, 2, 3 or 4 (pyFAI's), not {orientation!r}")
        self.orientation = int(orientation)
        geo = _resolve_geometry(geometry, missing_modules)
        if pixel1 is not None or pixel2 is not None:
            geo = _with_pixel_size(geo, (pixel1 or geo.pixel_size[0], pixel2 or geo.pixel_size[1]))
        self.geometry = geo
        self._plans: dict[Any, RadialPlan] = {}
        self._arrays: dict[Any, np.ndarray] = {}

    @classmethod
    def from_poni(
        cls,
        poni: str | Path | Poni,
        geometry=None,
        missing_modules=(),
        use_poni_pixel_size: bool = False,
    ) -> AzimuthalIntegrator:
        """Build from a pyFAI PONI file (versions 1-3), on the detector it describes.

        Parameters
        ----------
        poni : path or Poni
        geometry : DetectorGeometry, path, tuple or str, optional
            The detector layout. Unset: the PONI's detector (a named detector from pyFAI or the
            built-in catalogue, or a generic one from ``Detector_config``); for a PONI that
            gives no shape, or a generic detector of the stitched LAMBDA 9M image's shape and
            pixel size, the default LAMBDA 9M layout (its gaps left out). Given, it wins, with
            a :class:`PoniMismatchWarning` when it contradicts the PONI.
        missing_modules : sequence of int
        use_poni_pixel_size : bool
            With an explicit geometry: take the PONI's pixel1/pixel2 instead of the geometry's.

        Raises
        ------
        PoniError
            Unreadable PONI, or (without an explicit geometry) a detector name that is unknown.
        """
        source = "PONI" if isinstance(poni, Poni) else str(poni)
        p = poni if isinstance(poni, Poni) else read_poni(poni)
        px = p.pixel_size
        try:
            described = detector_geometry(p.detector, p.detector_config)
        except GeometryError as exc:
            if geometry is None:
                raise PoniError(f"{source}: {exc}") from exc
            warnings.warn(
                f"{source}: cannot check the PONI's detector against the given geometry: {exc}",
                PoniMismatchWarning,
                stacklevel=2,
            )
            described = None
        if geometry is None:
            geo = poni_layout(described, px, source)
        else:
            geo = _resolve_geometry(geometry, ())
            if use_poni_pixel_size:
                if px is None:
                    raise PoniError(f"{source}: the PONI file gives no pixel size")
                geo = _with_pixel_size(geo, px)
            _warn_if_contradicts(geo, described, px, source)
        return cls(
            *p.params,
            wavelength=p.wavelength,
            geometry=geo,
            missing_modules=missing_modules,
            orientation=p.orientation,
        )

    # -- per-pixel arrays (module order) --------------------------------------------------

    def _modules(self, canvas: np.ndarray) -> np.ndarray:
        """Gather an assembled-shape array into (n_present, rows, cols) module order."""
        return np.stack([np.ascontiguousarray(v) for v in self.geometry.module_views(canvas)])

    def _per_pixel(self, what: str, space: int | None = None) -> np.ndarray:
        key = (what, space)
        if key in self._arrays:
            return self._arrays[key]
        g = self.geometry
        par = self.poni.params
        wl = self.poni.wavelength
        o = self._oriented
        if what == "center":
            a = self._modules(o(P.center_array(g.shape, g.pixel_size, par, space, wl)))
        elif what == "delta":
            center = o(P.center_array(g.shape, g.pixel_size, par, space, wl))
            corners = o(P.corner_grid(g.shape, g.pixel_size, par, space, wl))
            a = self._modules(P.delta_array(center, corners))
        elif what == "delta_chi":
            center = o(P.center_array(g.shape, g.pixel_size, par, P.SPACE_CHI, wl))
            corners = o(P.corner_grid(g.shape, g.pixel_size, par, P.SPACE_CHI, wl))
            a = self._modules(chi_delta_array(center, corners))
        elif what == "solid_angle":
            a = self._modules(o(P.solid_angle_array(g.shape, g.pixel_size, par)))
        else:
            raise KeyError(what)
        self._arrays[key] = a
        return a

    def _oriented(self, a: np.ndarray) -> np.ndarray:
        """A per-pixel array computed for orientation 3, seen in this detector's orientation.

        pyFAI's orientations 1, 2 and 4 place image pixel (r, c) where orientation 3 places
        the pixel mirrored in both axes, top-bottom, or left-right (checked against pyFAI).
        """
        flip = {
            1: (slice(None, None, -1),) * 2,
            2: (slice(None, None, -1),),
            4: (slice(None), slice(None, None, -1)),
        }
        return np.ascontiguousarray(a[flip[self.orientation]]) if self.orientation != 3 else a

    def _module_array(self, arr: np.ndarray | None, name: str, dtype=np.float32):
        """Accept an assembled-shape or (n_present, rows, cols) array; return module order."""
        if arr is None:
            return None
        arr = np.asarray(arr)
        mshape = (len(self.geometry.present), *self.geometry.module_shape)
        if arr.shape == tuple(self.geometry.shape):
            return self._modules(arr).astype(dtype, copy=False)
        if arr.shape == mshape:
            return np.ascontiguousarray(arr, dtype=dtype)
        raise ValueError(
            f"{name} has shape {arr.shape}; expected the image shape "
            f"{tuple(self.geometry.shape)} or the module stack {mshape}"
        )

    def normalization(
        self,
        correct_solid_angle: bool = True,
        polarization_factor: float | None = None,
        flat: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per-pixel ω = flat · solid angle · polarization, float32, module order."""
        mshape = (len(self.geometry.present), *self.geometry.module_shape)
        w = np.ones(mshape, dtype=np.float32)
        # float32 products in pyFAI's order (flat, polarization, solid angle)
        if flat is not None:
            w *= self._module_array(flat, "flat")
        if polarization_factor is not None:
            tth = self._per_pixel("center", P.SPACE_2TH)
            chi = self._per_pixel("center", P.SPACE_CHI)
            w *= P.polarization_array(tth, chi, float(polarization_factor)).astype(np.float32)
        if correct_solid_angle:
            w *= self._per_pixel("solid_angle").astype(np.float32)
        return w

    # -- plans ----------------------------------------------------------------------------

    def _static_valid(self, mask, flat, w, dummy, delta_dummy):
        """(range_valid, contributes): static mask; plus normalisation usable."""
        valid = np.ones(w.shape, dtype=bool)
        if mask is not None:
            valid &= self._module_array(mask, "mask", dtype=bool) == 0
        contrib = valid & np.isfinite(w) & (w != 0)
        if flat is not None and dummy is not None:
            f = self._module_array(flat, "flat")
            bad = (
                (f == np.float32(dummy))
                if not delta_dummy
                else (np.abs(f - np.float32(dummy)) <= np.float32(delta_dummy))
            )
            contrib &= ~bad
        return valid, contrib

    def _key(self, **kw) -> str:
        return cache_key(
            format=TABLE_FORMAT,
            geometry=self.geometry.digest(),
            poni=list(self.poni.params),
            wavelength=self.poni.wavelength,
            orientation=self.orientation,
            **kw,
        )

    def plan1d(
        self,
        npt: int,
        unit: str = "q_nm^-1",
        method: Any = "bbox",
        correct_solid_angle: bool = True,
        polarization_factor: float | None = None,
        flat: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
        radial_range: tuple[float, float] | None = None,
        cache_dir: str | Path | None = None,
    ) -> RadialPlan:
        """Precompute a 1-D integration (tables and static sums), cached under ``cache_dir``.

        Parameters are those of :meth:`integrate1d` that do not change per frame;
        ``radial_range`` is in ``unit``. The result is keyed on disk by a hash of the geometry,
        the geometry parameters and every argument here (arrays by content).
        """
        space, scale = P.parse_unit(unit)
        split = _split_of(method)
        npt = int(npt)
        rr = None if radial_range is None else (radial_range[0] / scale, radial_range[1] / scale)
        key = self._key(
            kind="1d",
            npt=npt,
            space=space,
            split=split,
            sa=bool(correct_solid_angle),
            pol=polarization_factor,
            dummy=dummy,
            delta_dummy=delta_dummy,
            rr=rr,
            mask=None if mask is None else np.asarray(mask) != 0,
            flat=None if flat is None else np.asarray(flat, np.float32),
        )
        names = ("bin", "norm", "edges") + (
            ("coef", "exc_pix", "exc_ptr", "exc_bin", "exc_coef") if split == "bbox" else ()
        )
        if split == "bbox" and npt <= WORD_MAX_BINS:
            names += ("word",)
        cached = _usable(load_cached(cache_dir, key), self.geometry.n_pixels, names)
        if cached is not None:
            table = Table.from_arrays(
                split,
                npt,
                cached,
                dict(zip(("lo", "hi", "delta"), cached["edges"].tolist(), strict=True)),
            )
            w = cached["norm"]
        else:
            w = self.normalization(correct_solid_angle, polarization_factor, flat)
            valid, contrib = self._static_valid(mask, flat, w, dummy, delta_dummy)
            pos = self._per_pixel("center", space)
            dpos = self._per_pixel("delta", space) if split == "bbox" else None
            table = build_table_1d(pos, dpos, valid, npt, rr, allow_negative=False)
            table.drop(np.flatnonzero(~contrib.reshape(-1)))
            e = table.edges
            save_cached(
                cache_dir,
                key,
                {**table.arrays(), "norm": w, "edges": np.array([e["lo"], e["hi"], e["delta"]])},
            )
            # Use the stored, read-only mapped copy as every later process will: the memory is
            # shared, and the loops are compiled now for the arrays the workers will pass.
            stored = _usable(load_cached(cache_dir, key), self.geometry.n_pixels, names)
            if stored is not None:
                table, w = Table.from_arrays(split, npt, stored, table.edges), stored["norm"]
        return RadialPlan(
            self.geometry, table, w, unit, scale, npt, dummy is not None, dummy, delta_dummy
        )

    def plan2d(
        self,
        npt_rad: int,
        npt_azim: int = 360,
        unit: str = "q_nm^-1",
        method: Any = "no",
        correct_solid_angle: bool = True,
        polarization_factor: float | None = None,
        flat: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
        radial_range=None,
        azimuth_range=None,
        cache_dir: str | Path | None = None,
    ) -> RadialPlan:
        """Precompute a 2-D cake integration ("no" or "bbox" split); ranges in unit / degrees."""
        split = _split_of(method)
        space, scale = P.parse_unit(unit)
        rr = None if radial_range is None else (radial_range[0] / scale, radial_range[1] / scale)
        ar = None if azimuth_range is None else tuple(np.deg2rad(azimuth_range))
        key = self._key(
            kind="2d",
            npt=[int(npt_rad), int(npt_azim)],
            space=space,
            split=split,
            sa=bool(correct_solid_angle),
            pol=polarization_factor,
            dummy=dummy,
            delta_dummy=delta_dummy,
            rr=rr,
            ar=ar,
            mask=None if mask is None else np.asarray(mask) != 0,
            flat=None if flat is None else np.asarray(flat, np.float32),
        )
        bbox_names = ("coef", "exc_pix", "exc_ptr", "exc_bin", "exc_coef")
        cached = _usable(
            load_cached(cache_dir, key),
            self.geometry.n_pixels,
            ("bin", "norm", "edges") + (bbox_names if split == "bbox" else ()),
        )
        names = ("lo", "hi", "delta", "azim_lo", "azim_hi", "azim_delta")
        n = int(npt_rad) * int(npt_azim)
        if cached is not None:
            edges = dict(zip(names, cached["edges"].tolist(), strict=True))
            table = Table.from_arrays(split, n, cached, edges)
            w = cached["norm"]
        else:
            w = self.normalization(correct_solid_angle, polarization_factor, flat)
            valid, contrib = self._static_valid(mask, flat, w, dummy, delta_dummy)
            if split == "bbox":
                table = build_table_2d_bbox(
                    self._per_pixel("center", space),
                    self._per_pixel("delta", space),
                    self._per_pixel("center", P.SPACE_CHI),
                    self._per_pixel("delta_chi"),
                    valid,
                    int(npt_rad),
                    int(npt_azim),
                    rr,
                    ar,
                )
            else:
                table = build_table_2d(
                    self._per_pixel("center", space),
                    self._per_pixel("center", P.SPACE_CHI),
                    valid,
                    int(npt_rad),
                    int(npt_azim),
                    rr,
                    ar,
                )
            table.drop(np.flatnonzero(~contrib.reshape(-1)))
            save_cached(
                cache_dir,
                key,
                {
                    **table.arrays(),
                    "norm": w,
                    "edges": np.array([table.edges[k] for k in names]),
                },
            )
        return RadialPlan(
            self.geometry,
            table,
            w,
            unit,
            scale,
            (int(npt_rad), int(npt_azim)),
            dummy is not None,
            dummy,
            delta_dummy,
        )

    # -- pyFAI-style one-call API -----------------------------------------------------------

    def _plan(self, factory, key, **kw) -> RadialPlan:
        # Arrays are keyed by content checksum so a new mask or flat gets a new plan.
        if key not in self._plans:
            if len(self._plans) > 8:
                self._plans.clear()
            self._plans[key] = factory(**kw)
        return self._plans[key]

    def integrate1d(
        self,
        data: np.ndarray | Sequence[np.ndarray],
        npt: int,
        *,
        unit: str = "q_nm^-1",
        method: Any = ("bbox", "csr", "cython"),
        correct_solid_angle: bool = True,
        error_model: str | None = None,
        radial_range: tuple[float, float] | None = None,
        mask: np.ndarray | None = None,
        dummy: float | None = None,
        delta_dummy: float | None = None,
        polarization_factor: float | None = None,
        dark: np.ndarray | None = None,
        flat: np.ndarray | None = None,
        normalization_factor: float = 1.0,
        cache_dir: str | Path | None = None,
    ) -> Integrate1dResult:
        """Azimuthal integration of an image (or of module parts) into ``npt`` radial bins.

        Parameters
        ----------
        data : numpy.ndarray or sequence of numpy.ndarray
            Assembled image of ``geometry.shape``, or the module parts (fused path).
        npt : int
            Number of radial bins.
        unit : {"q_nm^-1", "q_A^-1", "2th_deg", "2th_rad", "r_mm", "r_m"}
        method : str or tuple
            "no" or "bbox" pixel splitting (pyFAI method tuples accepted).
        correct_solid_angle : bool
        error_model : {None, "poisson", "azimuthal"}
        radial_range : (float, float), optional
            In ``unit``.
        mask : numpy.ndarray, optional
            Static mask, nonzero = masked (image shape or module stack).
        dummy, delta_dummy : float, optional
            Pixels whose raw value is within ``delta_dummy`` of ``dummy`` are ignored.
        polarization_factor : float, optional
            In [-1, 1]; None for no correction.
        dark, flat : numpy.ndarray, optional
            Dark current (subtracted) and flat field (divides), image shape or module stack.
        normalization_factor : float
        cache_dir : path, optional
            Where tables are kept between runs.

        Returns
        -------
        Integrate1dResult
        """
        if mask is not None:
            self._module_array(mask, "mask", dtype=bool)  # shape check before anything else
        key = (
            "1d",
            npt,
            unit,
            _split_of(method),
            bool(correct_solid_angle),
            polarization_factor,
            dummy,
            delta_dummy,
            radial_range and tuple(radial_range),
            _crc(mask),
            _crc(flat),
        )
        plan = self._plan(
            self.plan1d,
            key,
            npt=npt,
            unit=unit,
            method=method,
            correct_solid_angle=correct_solid_angle,
            polarization_factor=polarization_factor,
            flat=flat,
            mask=mask,
            dummy=dummy,
            delta_dummy=delta_dummy,
            radial_range=radial_range,
            cache_dir=cache_dir,
        )
        return plan.integrate(data, dark, normalization_factor, error_model)

    def integrate2d(
        self,
        data: np.ndarray | Sequence[np.ndarray],
        npt_rad: int,
        npt_azim: int = 360,
        *,
        unit: str = "q_nm^-1",
        method: Any = "no",
        correct_solid_angle: bool = True,
        error_model: str | None = None,
        radial_range=None,
        azimuth_range=None,
        mask=None,
        dummy=None,
        delta_dummy=None,
        polarization_factor=None,
        dark=None,
        flat=None,
        normalization_factor: float = 1.0,
        cache_dir: str | Path | None = None,
    ) -> Integrate2dResult:
        """2-D "cake" integration into (npt_azim, npt_rad) bins, "no" or "bbox" splitting.

        Parameters are as for :meth:`integrate1d`; ``azimuth_range`` is in degrees, χ in
        (-180°, 180°] as pyFAI's default.
        """
        key = (
            "2d",
            npt_rad,
            npt_azim,
            unit,
            _split_of(method),
            bool(correct_solid_angle),
            polarization_factor,
            dummy,
            delta_dummy,
            radial_range and tuple(radial_range),
            azimuth_range and tuple(azimuth_range),
            _crc(mask),
            _crc(flat),
        )
        plan = self._plan(
            self.plan2d,
            key,
            npt_rad=npt_rad,
            npt_azim=npt_azim,
            unit=unit,
            method=method,
            correct_solid_angle=correct_solid_angle,
            polarization_factor=polarization_factor,
            flat=flat,
            mask=mask,
            dummy=dummy,
            delta_dummy=delta_dummy,
            radial_range=radial_range,
            azimuth_range=azimuth_range,
            cache_dir=cache_dir,
        )
        return plan.integrate2d(data, dark, normalization_factor, error_model)
