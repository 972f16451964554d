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

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from native_kernels import positions as P
from native_kernels.geometry import DetectorGeometry
from native_kernels.integration_result import Integrate1dResult, Integrate2dResult
from native_kernels.plan import RadialPlan, flat_segment
from native_kernels.poni import Poni, read_poni
from native_kernels.poni_detector import (
    PoniMismatchWarning,
    poni_geometry,
    resolve_geometry,
    with_pixel_size,
)
from native_kernels.split2d import build_table_2d_bbox, chi_delta_array
from native_kernels.tables import (
    WORD_MAX_BINS,
    Table,
    build_table_1d,
    build_table_2d,
    cache_key,
    load_cached,
    save_cached,
)

TABLE_FORMAT = 7  # bump when the table layout or binning rules change (invalidates caches)
BBOX_ARRAYS = ("coef", "exc_pix", "exc_ptr", "exc_bin", "exc_coef")
EDGES = ("lo", "hi", "delta")
AZIM_EDGES = ("azim_lo", "azim_hi", "azim_delta")
__all__ = [
    "AzimuthalIntegrator",
    "Integrate1dResult",
    "Integrate2dResult",
    "PoniMismatchWarning",
    "RadialPlan",
    "flat_segment",
]


def _split_of(method: Any) -> str:
    if isinstance(method, (tuple, list)):
        method = method[0] if method else "no"
    m = str(method).lower()
    if m in ("no", "nosplit", "histogram"):
        return "no"
    if m in ("bbox", "splitbbox"):
        return "bbox"
    raise ValueError(f"unsupported pixel splitting {method!r}: use 'no' or 'bbox'")


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
        geo = resolve_geometry(geometry, missing_modules)
        if pixel1 is not None or pixel2 is not None:
            geo = with_pixel_size(geo, (pixel1 or geo.pixel_size[0], pixel2 or geo.pixel_size[1]))
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
        geo = poni_geometry(p, source, geometry, use_poni_pixel_size)
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
        engine: str | None = None,
    ) -> RadialPlan:
        """Precompute a 1-D integration (tables and static sums), cached under ``cache_dir``.

        Parameters are those of :meth:`integrate1d` that do not change per frame;
        ``radial_range`` is in ``unit``. The result is keyed on disk by a hash of the geometry,
        the geometry parameters and every argument here (arrays by content); the engine chosen
        for each kind of frame on this CPU is kept beside it (``engines.json``). ``engine``
        names a registered engine to use wherever it applies instead of the timed choice.
        """
        return self._build_plan(
            (int(npt), None), unit, method, correct_solid_angle, polarization_factor, flat,
            mask, dummy, delta_dummy, radial_range, None, cache_dir, engine,
        )  # fmt: skip

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
        engine: str | None = None,
    ) -> RadialPlan:
        """Precompute a 2-D cake integration ("no" or "bbox" split); ranges in unit / degrees.

        As :meth:`plan1d`, with ``npt_azim`` azimuthal bins: the same engines, another shape.
        """
        return self._build_plan(
            (int(npt_rad), int(npt_azim)), unit, method, correct_solid_angle,
            polarization_factor, flat, mask, dummy, delta_dummy, radial_range, azimuth_range,
            cache_dir, engine,
        )  # fmt: skip

    def _build_plan(
        self, npts, unit, method, sa, pol, flat, mask, dummy, delta_dummy, rr, ar, cache_dir, engine
    ) -> RadialPlan:
        """The plan of :meth:`plan1d` (``npts`` = (npt, None)) or :meth:`plan2d`."""
        space, scale = P.parse_unit(unit)
        split = _split_of(method)
        npt_rad, npt_azim = npts
        rr = None if rr is None else (rr[0] / scale, rr[1] / scale)
        ar = None if ar is None else tuple(np.deg2rad(ar))
        key = self._key(
            kind="1d" if npt_azim is None else "2d",
            npt=npt_rad if npt_azim is None else [npt_rad, npt_azim],
            space=space,
            split=split,
            sa=bool(sa),
            pol=pol,
            dummy=dummy,
            delta_dummy=delta_dummy,
            rr=rr,
            **({} if npt_azim is None else {"ar": ar}),
            mask=None if mask is None else np.asarray(mask) != 0,
            flat=None if flat is None else np.asarray(flat, np.float32),
        )
        names = ("bin", "norm", "edges") + (BBOX_ARRAYS if split == "bbox" else ())
        if split == "bbox" and npt_azim is None and npt_rad <= WORD_MAX_BINS:
            names += ("word",)
        edge_names = EDGES if npt_azim is None else EDGES + AZIM_EDGES
        n = npt_rad * (npt_azim or 1)
        stored = _usable(load_cached(cache_dir, key), self.geometry.n_pixels, names)
        if stored is None:
            w = self.normalization(sa, pol, flat)
            table = self._table(
                split, space, npt_rad, npt_azim, rr, ar, w, mask, flat, dummy, delta_dummy
            )
            edges = np.array([table.edges[k] for k in edge_names])
            save_cached(cache_dir, key, {**table.arrays(), "norm": w, "edges": edges})
            # Use the stored, read-only mapped copy as every later process will: the memory is
            # shared, and the loops are compiled now for the arrays the workers will pass.
            stored = _usable(load_cached(cache_dir, key), self.geometry.n_pixels, names)
            if stored is None:
                stored = {**table.arrays(), "norm": w, "edges": edges}
        edges = dict(zip(edge_names, stored["edges"].tolist(), strict=True))
        table = Table.from_arrays(split, n, stored, edges)
        return RadialPlan(
            self.geometry,
            table,
            stored["norm"],
            unit,
            scale,
            npt_rad if npt_azim is None else (npt_rad, npt_azim),
            dummy is not None,
            dummy,
            delta_dummy,
            table_dir=None if cache_dir is None else Path(cache_dir) / f"azint-{key}",
            engine=engine,
        )

    def _table(self, split, space, npt_rad, npt_azim, rr, ar, w, mask, flat, dummy, delta_dummy):
        """Build the table of a plan: positions binned, static mask and unusable ω dropped."""
        valid, contrib = self._static_valid(mask, flat, w, dummy, delta_dummy)
        pos = self._per_pixel("center", space)
        dpos = self._per_pixel("delta", space) if split == "bbox" else None
        if npt_azim is None:
            table = build_table_1d(pos, dpos, valid, npt_rad, rr, allow_negative=False)
        elif split == "bbox":
            chi, dchi = self._per_pixel("center", P.SPACE_CHI), self._per_pixel("delta_chi")
            table = build_table_2d_bbox(pos, dpos, chi, dchi, valid, npt_rad, npt_azim, rr, ar)
        else:
            chi = self._per_pixel("center", P.SPACE_CHI)
            table = build_table_2d(pos, chi, valid, npt_rad, npt_azim, rr, ar)
        table.drop(np.flatnonzero(~contrib.reshape(-1)))
        return table

    # -- pyFAI-style one-call API -----------------------------------------------------------

    def _plan(self, *args) -> RadialPlan:
        """The plan of :meth:`_build_plan` for ``args``, kept for the next call with the same
        ones (arrays compared by content checksum, so a new mask or flat gets a new plan)."""
        key = tuple(
            _crc(v) if isinstance(v, np.ndarray) else (tuple(v) if isinstance(v, list) else v)
            for v in args
        )
        key = (*key[:2], _split_of(args[2]), *key[3:])
        if key not in self._plans:
            if len(self._plans) > 8:
                self._plans.clear()
            self._plans[key] = self._build_plan(*args, None)
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
        plan = self._plan(
            (int(npt), None), unit, method, correct_solid_angle, polarization_factor, flat,
            mask, dummy, delta_dummy, radial_range, None, cache_dir,
        )  # fmt: skip
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
        plan = self._plan(
            (int(npt_rad), int(npt_azim)), unit, method, correct_solid_angle,
            polarization_factor, flat, mask, dummy, delta_dummy, radial_range, azimuth_range,
            cache_dir,
        )  # fmt: skip
        return plan.integrate2d(data, dark, normalization_factor, error_model)
