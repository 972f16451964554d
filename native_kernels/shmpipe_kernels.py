"""shmpipe kernel adapters: the native kernels as steps of a TOML pipeline.

Registered as entry points of the ``shmpipe.kernels`` group (setup.cfg):

==================== ===================== ============================================
name                 class                 outputs
==================== ===================== ============================================
lambda_decompress    LambdaDecompress      ``modules`` (n, rows, cols)
lambda_stitch        LambdaStitch          ``image`` (assembled shape)
azimuthal_integrate  AzimuthalIntegrate    ``radial``, ``intensity``, ``sum_signal``,
                                           ``sum_normalization``, ``count``
                                           (+ ``sigma``, ``std`` with an error model)
frame_stats          FrameStats            ``sum``, ``max``, ``count_above``, ``n_valid``
                                           (+ ``roi_sums``, ``roi_version``)
==================== ===================== ============================================

A typical chain::

    [kernels.decompress]
    kind = "lambda_decompress"
    [kernels.stitch]
    kind = "lambda_stitch"
    input = "decompress.modules"
    [kernels.integrate]
    kind = "azimuthal_integrate"
    poni = "calib.poni"
    npt = 1000
    unit = "q_nm^-1"
    [kernels.stats]
    kind = "frame_stats"
    threshold = 1000

The integrator reads ``stitch.image`` by default; with ``input = "parts"`` (or
``"decompress.modules"``) it integrates straight from the modules (the fused path), and
frame_stats likewise summarises the modules (ROIs still in image coordinates). Then no image
need be stitched at all: the beamline chain (``examples/lambda9m_sim.toml``) is decompress,
integrate, stats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from native_kernels.compression import PayloadError, compress, decompress_into
from native_kernels.detectors import detector_geometry
from native_kernels.geometry import DetectorGeometry, GeometryError, ModulePlacement, load_geometry
from native_kernels.integrator import AzimuthalIntegrator, RadialPlan
from native_kernels.master import MasterFile, MasterFileError, read_master
from native_kernels.poni import PoniError
from native_kernels.stats import (
    _roi_sums,
    accumulate_stats,
    check_rois,
    module_rois,
    roi_sums_on_parts,
)
from native_kernels.stitch import Stitcher
from shmpipe.api.kernel import ArraySpec, Frame, Kernel, SetupContext


class KernelConfigError(ValueError):
    """Kernel parameters that cannot work with the chain they are in."""


def _load_array(path: str | None, what: str) -> np.ndarray | None:
    if path is None:
        return None
    p = Path(path)
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix in (".h5", ".hdf5", ".nxs"):
            import h5py

            name, _, dset = str(p).partition("::")
            with h5py.File(name, "r") as f:
                return np.asarray(f[dset or "data"][()])
    except (OSError, KeyError, ValueError) as exc:
        raise KernelConfigError(f"cannot read {what} from {path}: {exc}") from exc
    raise KernelConfigError(f"{what} file {path}: use .npy (or file.h5::dataset)")


def _input_spec(ctx: SetupContext, name: str, kernel: str) -> tuple[int, tuple[int, ...], str]:
    """(n parts, part shape, dtype) of the input ``name`` as known at setup."""
    if name == "parts":
        if not ctx.parts:
            raise KernelConfigError(
                f"{kernel}: the source does not declare its parts (compressed payloads?); "
                "put a lambda_decompress kernel first and read 'decompress.modules'"
            )
        shapes = {p.shape for p in ctx.parts}
        dtypes = {p.dtype for p in ctx.parts}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise KernelConfigError(f"{kernel}: parts differ in shape or dtype: {ctx.parts}")
        return len(ctx.parts), shapes.pop(), dtypes.pop()
    if name not in ctx.available:
        raise KernelConfigError(
            f"{kernel}: input {name!r} is not produced earlier in the "
            f"chain; available: parts, {', '.join(ctx.available)}"
        )
    spec = ctx.available[name]
    if len(spec.shape) == 3:
        return spec.shape[0], spec.shape[1:], spec.dtype
    if len(spec.shape) == 2:
        return 0, spec.shape, spec.dtype
    raise KernelConfigError(
        f"{kernel}: input {name!r} has shape {spec.shape}; expected an image or a stack of modules"
    )


def _parse_rois(value) -> list[list[int]]:
    """ROIs from a live request: a list of [y0, y1, x0, x1] integers, or their flat list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise ValueError(f"rois must be a list of [y0, y1, x0, x1], not {value!r}")
    flat = list(np.asarray(value, dtype=object).ravel()) if len(value) else []
    if len(flat) % 4:
        raise ValueError(f"rois need 4 numbers each [y0, y1, x0, x1]; got {len(flat)} numbers")
    out = []
    for v in flat:
        if isinstance(v, bool) or not isinstance(v, int | np.integer | float | np.floating):
            raise ValueError(f"roi bounds must be integers, got {v!r}")
        if float(v) != int(v):
            raise ValueError(f"roi bounds must be whole pixels, got {v!r}")
        out.append(int(v))
    return [out[i : i + 4] for i in range(0, len(out), 4)]


def _as_parts(x: np.ndarray | list[np.ndarray]) -> list[np.ndarray] | np.ndarray:
    """A (n, rows, cols) stack becomes a list of module views; images and lists pass."""
    if isinstance(x, np.ndarray) and x.ndim == 3:
        return list(x)
    return x


def _geometry(p, default: DetectorGeometry | None = None) -> DetectorGeometry:
    """The ``geometry`` parameter: "lambda9m", a .toml/.json file, or a detector name."""
    g = str(p.geometry or "")
    if not g and default is not None:
        return default.with_missing(p.missing_modules) if p.missing_modules else default
    if g and g not in ("lambda9m", "default") and Path(g).suffix.lower() not in (".toml", ".json"):
        try:
            geo = detector_geometry(g)
        except GeometryError as exc:
            raise KernelConfigError(f"geometry = {g!r}: {exc}") from exc
        if geo is None:
            raise KernelConfigError(f"geometry = {g!r} names no detector layout")
        return load_geometry(geo, tuple(p.missing_modules))
    return load_geometry(g or None, tuple(p.missing_modules))


def _master(path: str, kernel: str) -> MasterFile:
    try:
        return read_master(path)
    except MasterFileError as exc:
        raise KernelConfigError(f"{kernel}: master = {path!r}: {exc}") from exc


def _single_module(m: MasterFile) -> DetectorGeometry:
    """A master file's frame as one module (its gaps are in its pixel mask)."""
    return DetectorGeometry(
        m.shape, (ModulePlacement(0, 0),), m.pixel_size, name=f"{Path(m.path).name}"
    )


def _warm_stitch(st: Stitcher) -> None:
    """Compile the stitcher's loops for its dtypes on a tiny layout of the same kind."""
    tiny = DetectorGeometry(
        (2, 24), (ModulePlacement(0, 0), ModulePlacement(0, 30)), dummy=st.dummy
    )
    flat = None if st.flat is None else np.ones((2, 2, 24), np.float32)
    mask = None if st.mask is None else np.zeros((2, 2, 24), np.uint8)
    out_dtype = "same" if st.output_dtype == st.input_dtype else st.output_dtype
    Stitcher(tiny, st.input_dtype, out_dtype, flat, mask)([np.zeros((2, 24), st.input_dtype)] * 2)


class LambdaDecompress(Kernel):
    """Decode module payloads (raw or bitshuffle-LZ4) into a (n, rows, cols) stack.

    The first kernel of a chain fed with compressed payloads: the source cannot declare the
    parts' layout, so this kernel declares it from the geometry and ``dtype``. A truncated or
    corrupt payload raises :class:`~native_kernels.compression.PayloadError` naming the frame
    and part; other frames are unaffected.
    """

    @dataclass
    class Params:
        input: str = "parts"
        """The payloads: "parts" (one per module)."""
        compression: str = "auto"
        """auto (detect), none, bslz4 (bitshuffle-LZ4 with its 12-byte header) or bslz4_h5."""
        dtype: str = "uint16"
        """Pixel type of the decoded modules."""
        block_size: int = 0
        """Elements per bitshuffle block; 0: bitshuffle's default."""
        geometry: str = "lambda9m"
        """"lambda9m", a detector name or a .toml/.json geometry file: the module shape and
        count."""
        missing_modules: list = field(default_factory=list)
        """Indices of modules not installed (no part arrives for them)."""
        master: str | None = None
        """A DECTRIS *_master.h5: one part per frame (its HDF5 chunk), shape and dtype from the
        file (instead of geometry and dtype)."""

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        p = self.params
        dtype = p.dtype
        if p.master is not None:
            m = _master(p.master, self.name)
            dtype = np.dtype(m.dtype).name
            self._geo = _single_module(m)
        if p.compression not in ("auto", "none", "bslz4", "bslz4_h5"):
            raise KernelConfigError(
                f"{self.name}: compression must be auto, none, bslz4 or "
                f"bslz4_h5, not {p.compression!r}"
            )
        if np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32)):
            raise KernelConfigError(f"{self.name}: dtype must be uint8, uint16 or uint32")
        geo = self._geo if p.master is not None else _geometry(p)
        self.n = len(geo.present)
        # Compile the block walker now (in the warm-up process, before workers fork).
        probe = np.arange(64, dtype=dtype).reshape(8, 8)
        decompress_into(compress(probe), np.empty_like(probe))
        return [ArraySpec("modules", (self.n, *geo.module_shape), dtype)]

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        parts = frame.get(self.params.input)
        dest = out["modules"]
        if len(parts) != self.n:
            raise PayloadError(f"frame {frame.message_id}: {len(parts)} parts, expected {self.n}")
        for i, part in enumerate(parts):
            try:
                decompress_into(part, dest[i], self.params.compression, self.params.block_size)
            except PayloadError as exc:
                raise PayloadError(
                    f"frame {frame.message_id} ({frame.name}) part {i}: {exc}"
                ) from exc


class LambdaStitch(Kernel):
    """Assemble module parts into one image; gaps and absent modules set to ``dummy``."""

    @dataclass
    class Params:
        input: str = "parts"
        """The modules: "parts", or "decompress.modules" after a lambda_decompress kernel."""
        geometry: str = "lambda9m"
        """"lambda9m" (the default layout) or a .toml/.json geometry file."""
        missing_modules: list = field(default_factory=list)
        """Indices of modules not installed; their area stays dummy."""
        dtype: str = "float32"
        """Image type: float32, float64, or "same" (the parts' dtype)."""
        dummy: float | None = None
        """Value of the gaps and absent modules; unset: the geometry's (0)."""
        flat: str | None = None
        """.npy of shape (n, rows, cols): a multiplicative per-pixel flat-field."""
        mask: str | None = None
        """.npy of shape (n, rows, cols): nonzero marks a bad pixel (set to dummy)."""

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        p = self.params
        geo = _geometry(p)
        n, shape, dtype = _input_spec(ctx, p.input, self.name)
        if n and n != len(geo.present):
            raise KernelConfigError(
                f"{self.name}: input has {n} parts, the geometry {len(geo.present)} present modules"
            )
        if tuple(shape) != tuple(geo.module_shape):
            raise KernelConfigError(
                f"{self.name}: parts of shape {shape}, the geometry's "
                f"modules are {geo.module_shape}"
            )
        try:
            self.stitcher = Stitcher(
                geo,
                dtype,
                p.dtype,
                _load_array(p.flat, "flat"),
                _load_array(p.mask, "mask"),
                p.dummy,
            )
        except (TypeError, ValueError) as exc:
            raise KernelConfigError(f"{self.name}: {exc}") from exc
        _warm_stitch(self.stitcher)
        return [ArraySpec("image", geo.shape, self.stitcher.output_dtype.str, unit="counts")]

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        self.stitcher(_as_parts(frame.get(self.params.input)), out["image"])


class AzimuthalIntegrate(Kernel):
    """Radial integration (pyFAI ``integrate1d`` semantics) of the image or of the parts.

    Geometry: ``poni`` (a PONI file) or explicit ``dist``, ``poni1``, ``poni2``, ``rot1..3``,
    ``wavelength``; detector layout: ``geometry`` and ``missing_modules``. ``bins`` is an
    alias of ``npt``. Tables are built once and cached in ``ctx.cache_dir``.
    """

    @dataclass
    class Params:
        ALIASES: ClassVar[dict[str, str]] = {"bins": "npt"}  # a command-line value wins
        # A geometry source given on the command line replaces the file's geometry keys.
        REPLACES: ClassVar[dict[str, tuple[str, ...]]] = {
            "poni": ("master", "dist", "poni1", "poni2", "rot1", "rot2", "rot3", "wavelength"),
            "master": ("poni", "dist", "poni1", "poni2", "rot1", "rot2", "rot3", "wavelength"),
            "dist": ("poni", "master"),
        }

        input: str = "stitch.image"
        """The image, or "parts" / "decompress.modules" to integrate straight from the
        modules without assembling an image (the fused path)."""
        poni: str | None = None
        """A pyFAI PONI file (version 1 to 3) giving the geometry below and, unless geometry
        is set, the detector (named or generic)."""
        master: str | None = None
        """A DECTRIS *_master.h5 giving distance, beam centre, wavelength, pixel size, frame
        shape and pixel mask (instead of poni)."""
        dist: float | None = None
        """Sample-detector distance in m (instead of poni)."""
        poni1: float = 0.0
        """Point of normal incidence along the slow axis, m."""
        poni2: float = 0.0
        """Point of normal incidence along the fast axis, m."""
        rot1: float = 0.0
        """Rotation about axis 1, rad (pyFAI convention)."""
        rot2: float = 0.0
        """Rotation about axis 2, rad."""
        rot3: float = 0.0
        """Rotation about the beam, rad."""
        wavelength: float | None = None
        """Wavelength in m; needed for q units."""
        geometry: str = ""
        """Detector layout: "lambda9m", a detector name (Eiger2_4M ...) or a .toml/.json
        geometry file; unset: the PONI's detector, else "lambda9m"."""
        missing_modules: list = field(default_factory=list)
        """Indices of modules not installed."""
        npt: int | None = None
        """Number of radial bins; unset: 1000."""
        bins: int | None = None
        """Alias of npt."""
        unit: str = "q_nm^-1"
        """Radial unit: 2th_deg, q_nm^-1, q_A^-1 or r_mm."""
        method: str = "bbox"
        """Pixel splitting: "no" or "bbox" (as pyFAI's ("no"|"bbox", "csr", ...))."""
        correct_solid_angle: bool = True
        """Divide by the pixels' solid angle (pyFAI's correctSolidAngle)."""
        polarization_factor: float | None = None
        """-1..1; unset: no polarization correction."""
        error_model: str | None = None
        """Unset, "poisson" or "azimuthal": adds the sigma and std outputs."""
        dummy: float | None = None
        """Pixels of this value are ignored (dynamic mask)."""
        delta_dummy: float | None = None
        """Tolerance around dummy."""
        radial_range: list | None = None
        """[min, max] of the radial axis in unit; unset: the full range."""
        normalization_factor: float = 1.0
        """Divide the intensity by this (e.g. a monitor value)."""
        normalization_key: str | None = None
        """Frame meta key of a per-frame monitor value used as the normalization factor."""
        mask: str | None = None
        """.npy of image shape or (n, rows, cols); nonzero = masked."""
        flat: str | None = None
        """.npy flat-field the signal is divided by."""
        dark: str | None = None
        """.npy dark current subtracted from the signal."""

    def _integrator(self) -> AzimuthalIntegrator:
        p = self.params
        given = [k for k in ("poni", "master", "dist") if getattr(p, k) is not None]
        if len(given) > 1:
            raise KernelConfigError(
                f"{self.name}: give one of poni, master or dist/poni1/..., "
                f"not {' and '.join(given)}"
            )
        self.master_mask = None
        if p.master is not None:
            m = _master(p.master, self.name)
            self.master_mask = None if m.pixel_mask is None else m.pixel_mask != 0
            if m.wavelength is None and p.wavelength is None and p.unit.startswith("q"):
                raise KernelConfigError(
                    f"{self.name}: master = {p.master!r} gives no wavelength "
                    "(entry/instrument/beam/incident_wavelength); set wavelength"
                )
            return AzimuthalIntegrator(
                *m.poni_params,
                m.wavelength if p.wavelength is None else p.wavelength,
                geometry=_geometry(p, default=_single_module(m)),
            )
        if p.poni is not None:
            geo = _geometry(p) if p.geometry else None
            try:
                return AzimuthalIntegrator.from_poni(
                    p.poni,
                    geometry=geo,
                    missing_modules=tuple(p.missing_modules) if geo is None else (),
                )
            except (PoniError, GeometryError) as exc:
                raise KernelConfigError(f"{self.name}: poni = {p.poni!r}: {exc}") from exc
        if p.dist is None:
            raise KernelConfigError(
                f"{self.name}: a geometry needs poni = 'file.poni', master = 'x_master.h5' or "
                "explicit dist, poni1, poni2, rot1, rot2, rot3"
            )
        return AzimuthalIntegrator(
            p.dist, p.poni1, p.poni2, p.rot1, p.rot2, p.rot3, p.wavelength, geometry=_geometry(p)
        )

    def _mask(self, ai: AzimuthalIntegrator) -> np.ndarray | None:
        """The mask file's mask, or-ed with the master file's pixel mask (gaps, bad pixels)."""
        mask = _load_array(self.params.mask, "mask")
        if self.master_mask is None:
            return mask
        if mask is None:
            return self.master_mask
        if mask.shape != self.master_mask.shape:
            raise KernelConfigError(
                f"{self.name}: mask has shape {mask.shape}, the master file's frames "
                f"{self.master_mask.shape}"
            )
        return (mask != 0) | self.master_mask

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        p = self.params
        if p.npt is not None and p.bins is not None and p.npt != p.bins:
            raise KernelConfigError(f"{self.name}: npt={p.npt} and bins={p.bins} disagree")
        npt = int(p.npt or p.bins or 1000)
        ai = self._integrator()
        n, shape, dtype = _input_spec(ctx, p.input, self.name)
        # One part holding the whole assembled image (a DECTRIS frame, a "frames" file) is
        # integrated as an image, whatever the detector's module count.
        self.whole_image = n == 1 and tuple(shape) == tuple(ai.geometry.shape)
        if self.whole_image:
            n = 0
        expected = ai.geometry.shape if n == 0 else ai.geometry.module_shape
        if tuple(shape) != tuple(expected) or (n and n != len(ai.geometry.present)):
            g = ai.geometry
            raise KernelConfigError(
                f"{self.name}: input {p.input!r} ({n or 'image'} of {shape}) does not match "
                f"the geometry {g.name} (image {g.shape}, {len(g.present)} modules of "
                f"{g.module_shape})"
            )
        try:
            self.plan: RadialPlan = ai.plan1d(
                npt,
                p.unit,
                p.method,
                p.correct_solid_angle,
                p.polarization_factor,
                _load_array(p.flat, "flat"),
                self._mask(ai),
                p.dummy,
                p.delta_dummy,
                None if p.radial_range is None else tuple(p.radial_range),
                cache_dir=ctx.cache_dir,
            )
        except ValueError as exc:
            raise KernelConfigError(f"{self.name}: {exc}") from exc
        self.dark = _load_array(p.dark, "dark")
        self.error_model = p.error_model
        errors = "sigma" if p.error_model else None
        specs = [
            ArraySpec("radial", (npt,), "float64", unit=p.unit, long_name=p.unit),
            ArraySpec(
                "intensity", (npt,), "float64", axis="radial", errors=errors, long_name="Intensity"
            ),
            ArraySpec("sum_signal", (npt,), "float64", axis="radial", unit="counts"),
            ArraySpec("sum_normalization", (npt,), "float64", axis="radial"),
            ArraySpec("count", (npt,), "float64", axis="radial", unit="pixels"),
        ]
        if p.error_model:
            specs += [
                ArraySpec("sigma", (npt,), "float64", axis="radial", long_name="Uncertainty"),
                ArraySpec("std", (npt,), "float64", axis="radial", long_name="Deviation"),
            ]
        # Probe once with data like the real input: a bad error_model or dark shape fails at
        # setup rather than on frame 1, and the loops for these dtypes are compiled now.
        if n == 0:
            probe = np.zeros(ai.geometry.shape, dtype)
        else:
            probe = [np.zeros(ai.geometry.module_shape, dtype)] * n
        try:
            self.plan.integrate(probe, self.dark, error_model=p.error_model)
        except (TypeError, ValueError) as exc:
            raise KernelConfigError(f"{self.name}: {exc}") from exc
        return specs

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        p = self.params
        nf = p.normalization_factor
        if p.normalization_key is not None:
            nf = nf * _monitor(frame, p.normalization_key, self.name)
        data = _as_parts(frame.get(p.input))
        if self.whole_image:
            data = data[0]
        self.plan.integrate(data, self.dark, nf, self.error_model, out)


def _monitor(frame: Frame, key: str, kernel: str) -> float:
    """The frame's monitor value ``meta[key]``: a clear error when absent or not a number."""
    try:
        value = float(frame.meta[key])
    except KeyError:
        raise ValueError(
            f"{kernel}: frame meta has no {key!r} (normalization_key); keys: {sorted(frame.meta)}"
        ) from None
    except (TypeError, ValueError):
        raise ValueError(
            f"{kernel}: frame meta {key!r} = {frame.meta[key]!r} is not a "
            "number (normalization_key)"
        ) from None
    if not np.isfinite(value) or value == 0.0:
        raise ValueError(
            f"{kernel}: frame meta {key!r} = {value} cannot normalise (normalization_key)"
        )
    return value


class FrameStats(Kernel):
    """Sum, maximum, pixels above ``threshold`` (hit finding) and ROI sums of a frame.

    Reads the stitched image or the modules themselves; with modules, ROIs given in image
    coordinates are mapped onto module rectangles, and every result equals the stitched
    image's when the gaps hold the dummy.

    The ROIs are live parameters: ``check_params``/``on_params`` take new ones during a run
    (``{"rois": [[y0, y1, x0, x1], ...]}``, at most ``max_rois``), applied from the next frame
    a worker takes; ``roi_version`` records the live-parameter version each row used (0: the
    configured ROIs) and unused ``roi_sums`` entries are NaN.
    """

    @dataclass
    class Params:
        input: str = "stitch.image"
        """The image, or "decompress.modules" / "parts" to summarise the modules themselves
        (no stitched image needed; the gaps then hold no pixel)."""
        threshold: float = 0.0
        """count_above counts the pixels above this value (cheap hit finding)."""
        rois: list = field(default_factory=list)
        """Regions of interest [[y0, y1, x0, x1], ...], half-open, in assembled-image
        coordinates (also with module input), summed into roi_sums."""
        max_rois: int = 0
        """Room in roi_sums for ROIs set during the run (at least len(rois))."""
        dummy: float | None = None
        """Pixels of this value (the gaps) are ignored."""
        geometry: str = "lambda9m"
        """With module input: the layout that maps the ROIs onto the modules."""
        missing_modules: list = field(default_factory=list)
        """With module input: indices of modules not installed."""

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        p = self.params
        n, shape, dtype = _input_spec(ctx, p.input, self.name)
        self._geo = None  # with module input and ROIs: the layout that maps them
        try:
            if n and (len(p.rois) or p.max_rois):
                geo = _geometry(p)
                if n != len(geo.present) or tuple(shape) != tuple(geo.module_shape):
                    raise ValueError(
                        f"input {p.input!r} ({n} of {tuple(shape)}) does not match the "
                        f"geometry {p.geometry!r}"
                    )
                self._geo = geo
                self._shape = tuple(geo.shape)
            else:
                self._shape = tuple(shape)
            self.rois = check_rois(p.rois, self._shape)
        except (GeometryError, ValueError) as exc:
            raise KernelConfigError(f"{self.name}: {exc}") from exc
        self._rects = None if self._geo is None else module_rois(self._geo, self.rois)
        self._capacity = max(int(p.max_rois), len(self.rois))
        self._acc = np.zeros(4)
        self._rs = np.zeros(len(self.rois))
        self._version = 0
        accumulate_stats(np.zeros((2, 2), dtype), 0.0, None, np.zeros(4))  # compile now
        if self._geo is not None:  # compile now
            roi_sums_on_parts(
                [np.zeros((2, 2), dtype)], np.zeros((1, 6), np.int64), p.dummy, np.zeros(1)
            )
        else:
            _roi_sums(np.zeros((2, 2), dtype), np.zeros((0, 4), np.int64), False, 0.0, np.zeros(0))
        specs = [
            ArraySpec("sum", (), "float64", unit="counts"),
            ArraySpec("max", (), "float64", unit="counts"),
            ArraySpec("count_above", (), "int64", unit="pixels"),
            ArraySpec("n_valid", (), "int64", unit="pixels"),
        ]
        if self._capacity:
            specs.append(ArraySpec("roi_sums", (self._capacity,), "float64", unit="counts"))
            specs.append(ArraySpec("roi_version", (), "int64"))
        return specs

    def check_params(self, params, outputs):
        unknown = set(params) - {"rois"}
        if unknown:
            raise ValueError(f"unknown live parameter(s) {sorted(unknown)}; frame_stats takes rois")
        if "rois" not in params:
            return {}
        room = outputs.get(f"{self.name}.roi_sums")
        if room is None:
            raise ValueError("no room for live ROIs: set max_rois in the configuration")
        # ROIs are in image coordinates: the image's, or (module input) the layout's, which
        # only setup knows (the device sets this kernel up as the workers do)
        image = outputs.get(self.params.input)
        shape = image.shape if image is not None and len(image.shape) == 2 else None
        shape = getattr(self, "_shape", None) or shape
        if shape is None:
            raise ValueError(f"the image shape behind {self.params.input!r} is not known yet")
        rois = _parse_rois(params["rois"])
        if len(rois) > room.shape[0]:
            raise ValueError(f"{len(rois)} ROIs, but max_rois = {room.shape[0]}")
        return {"rois": check_rois(rois, tuple(shape)).tolist()}

    def on_params(self, params, version):
        rois = params["rois"] if "rois" in params else self.params.rois
        self.rois = check_rois(rois, self._shape)
        self._rects = None if self._geo is None else module_rois(self._geo, self.rois)
        self._rs = np.zeros(len(self.rois))
        self._version = version

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        p = self.params
        data = _as_parts(frame.get(p.input))
        arrays = [data] if isinstance(data, np.ndarray) else data
        acc = self._acc
        acc[:] = (0.0, -np.inf, 0.0, 0.0)
        use_dummy = p.dummy is not None
        d = float(p.dummy) if use_dummy else 0.0
        for a in arrays:
            accumulate_stats(a, p.threshold, p.dummy, acc)
        out["sum"][...] = acc[0]
        out["max"][...] = acc[1]
        out["count_above"][...] = int(acc[2])
        out["n_valid"][...] = int(acc[3])
        if self._capacity:
            n = len(self.rois)
            if n:
                self._rs[:] = 0.0
                if self._rects is not None:
                    roi_sums_on_parts(arrays, self._rects, p.dummy, self._rs)
                else:
                    _roi_sums(arrays[0], self.rois, use_dummy, d, self._rs)
            out["roi_sums"][:n] = self._rs
            out["roi_sums"][n:] = np.nan
            out["roi_version"][...] = self._version
