"""The azimuthal_integrate kernel: radial integration of the image or of the modules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from native_kernels.declared import master_layout
from native_kernels.geometry import GeometryError
from native_kernels.integrator import AzimuthalIntegrator, RadialPlan
from native_kernels.poni import PoniError
from native_kernels.shmpipe_kernels.common import (
    KernelConfigError,
    as_parts,
    input_spec,
    load_array,
    master_param,
    run_geometry,
)
from shmpipe.api.detector import RunDetector
from shmpipe.api.kernel import ArraySpec, Frame, Kernel, SetupContext


class AzimuthalIntegrate(Kernel):
    """Radial integration (pyFAI ``integrate1d`` semantics) of the image or of the parts.

    Geometry: ``poni`` (a PONI file) or explicit ``dist``, ``poni1``, ``poni2``, ``rot1..3``,
    ``wavelength``; detector layout: the run's ``[detector]``. ``bins`` is an
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
        geometry file; unset: the PONI's detector, else "lambda9m". Deprecated: declare the
        run's [detector] instead (this key maps into it; it wins over the PONI's)."""
        missing_modules: list = field(default_factory=list)
        """Indices of modules not installed. Deprecated: see geometry."""
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

    def _integrator(self, detector: RunDetector | None = None) -> AzimuthalIntegrator:
        """The integrator of ``poni``, ``master`` or ``dist``... on the run's ``detector``
        (else the deprecated ``geometry``, else the PONI's or master file's own layout)."""
        p = self.params
        given = [k for k in ("poni", "master", "dist") if getattr(p, k) is not None]
        if len(given) > 1:
            raise KernelConfigError(
                f"{self.name}: give one of poni, master or dist/poni1/..., "
                f"not {' and '.join(given)}"
            )
        self.master_mask = None
        if p.master is not None:
            m = master_param(p.master, self.name)
            self.master_mask = None if m.pixel_mask is None else m.pixel_mask != 0
            if m.wavelength is None and p.wavelength is None and p.unit.startswith("q"):
                raise KernelConfigError(
                    f"{self.name}: master = {p.master!r} gives no wavelength "
                    "(entry/instrument/beam/incident_wavelength); set wavelength"
                )
            return AzimuthalIntegrator(
                *m.poni_params,
                m.wavelength if p.wavelength is None else p.wavelength,
                geometry=run_geometry(p, detector, default=master_layout(m)),
            )
        if p.poni is not None:
            geo = run_geometry(p, detector) if p.geometry or detector else None
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
        explicit = (p.dist, p.poni1, p.poni2, p.rot1, p.rot2, p.rot3, p.wavelength)
        return AzimuthalIntegrator(*explicit, geometry=run_geometry(p, detector))

    def _mask(self, ai: AzimuthalIntegrator) -> np.ndarray | None:
        """The mask file's mask, or-ed with the master file's pixel mask (gaps, bad pixels)."""
        mask = load_array(self.params.mask, "mask")
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
        ai = self._integrator(ctx.detector)
        n, shape, dtype = input_spec(ctx, p.input, self.name)
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
                load_array(p.flat, "flat"),
                self._mask(ai),
                p.dummy,
                p.delta_dummy,
                None if p.radial_range is None else tuple(p.radial_range),
                cache_dir=ctx.cache_dir,
            )
        except ValueError as exc:
            raise KernelConfigError(f"{self.name}: {exc}") from exc
        self.dark = load_array(p.dark, "dark")
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
        data = as_parts(frame.get(p.input))
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
