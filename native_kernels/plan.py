"""A precomputed integration: tables and corrections of one geometry into fixed bins.

Each frame runs one registered engine per module (:mod:`native_kernels.engines`), chosen per
kind of frame (dtype, layout, dummy, dark, error model) and CPU by
:class:`native_kernels.engine_choice.EngineChooser`; 1-D and 2-D plans differ only in the
shape of their bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from native_kernels import accumulate as A
from native_kernels.azimuthal_variance import ImageOrder
from native_kernels.engine_choice import EngineChooser, timer
from native_kernels.engines import ENGINES, EngineKey, FrameArgs, frame_kind
from native_kernels.geometry import DetectorGeometry
from native_kernels.integration_result import Integrate1dResult, Integrate2dResult
from native_kernels.tables import Table, static_sums

ERROR_MODELS = (None, "poisson", "azimuthal")


def check_error_model(em: str | None) -> str | None:
    """The error model by its canonical name (None for none); ValueError for an unknown one."""
    em = None if em in (None, "", "no", "none") else str(em).lower()
    if em not in ERROR_MODELS:
        raise ValueError(f"error_model must be None, 'poisson' or 'azimuthal', not {em!r}")
    return em


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
        table_dir: str | Path | None = None,
        engine: str | None = None,
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
        self._accp = np.zeros((A.NCOPY, 2 * (self.nbins + 2)), dtype=np.float64)  # packed
        self._accq = np.zeros((A.NCOPY, A.SLOT * (self.nbins + 2)), dtype=np.float64)  # slots
        self._removed = np.zeros((self.nbins + 2, 3), dtype=np.float64)
        # A placeholder for the dark a loop does not read (Numba needs a typed argument).
        self._no_dark = np.zeros(1, dtype=np.float32)
        self.npx = self.part_shape[0] * self.part_shape[1]
        if self.split == "bbox":
            cuts = np.searchsorted(self.table.exc_pix, np.arange(self.n_parts + 1) * self.npx)
            self._exc_ranges = [(int(cuts[k]), int(cuts[k + 1])) for k in range(self.n_parts)]
        self.tables = "bins+words" if table.word is not None else "bins"
        self.chooser = EngineChooser(None if table_dir is None else Path(table_dir), engine)
        self._engines: dict[tuple, object] = {}
        self._image_order = ImageOrder(self)  # for the azimuthal error model

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
            if s.dtype.kind not in "uif" or s.dtype.itemsize > 8 or s.dtype == np.float16:
                raise TypeError(f"cannot integrate data of dtype {s.dtype}")

    # -- the integration ------------------------------------------------------------------

    def frame_args(self, data, dark=None, error_model: str | None = None) -> FrameArgs:
        """Check a frame (and its dark) and gather what the loops read and write."""
        segs = self.segments(data)
        self._check_dtype(segs)
        darks = [(self._no_dark, 0, 0)] * len(segs)
        use_dark = dark is not None
        if use_dark:
            dark = np.asarray(dark, dtype=np.float32)
            dark_views = self.segments(list(dark) if dark.ndim == 3 else dark, "dark")
            darks = [flat_segment(v) for v in dark_views]
        cd = self.dummy is not None
        return FrameArgs(
            segments=[flat_segment(v) for v in segs],
            darks=darks,
            use_dark=use_dark,
            table=self.table,
            norm=self.norm,
            nbins=self.nbins,
            dummy=float(np.float32(self.dummy)) if cd else None,
            check_dummy=cd,
            dummy32=np.float32(self.dummy if cd else 0.0),
            delta32=np.float32(self.delta_dummy or 0.0),
            poisson=error_model == "poisson",
            accs=self._accs,
            accv=self._accv,
            accp=self._accp,
            accq=self._accq,
            removed=self._removed,
        )

    def engine_key(self, data, dark=None, error_model: str | None = None) -> EngineKey:
        """The registry key of a frame: what the choice of loop depends on."""
        stitched = isinstance(data, np.ndarray) and data.ndim == 2
        first = data if stitched else data[0]
        return EngineKey(
            dim=1 if self.azimuthal is None else 2,
            split=self.split,
            tables=self.tables,
            dtype=np.dtype(first.dtype).name,
            layout="stitched" if stitched else "modules",
            frame=frame_kind(dark is not None, self.dummy, self.delta_dummy),
            errors="poisson" if error_model == "poisson" else "none",
        )

    def _run(self, engine, f: FrameArgs) -> None:
        """One frame through ``engine``: every module, then the bbox exception pixels."""
        f.accs[...] = 0.0
        f.accv[...] = 0.0
        if engine.acc == "packed":
            f.accp[...] = 0.0
        elif engine.acc == "slots":
            f.accq[...] = 0.0
        f.removed[...] = 0.0
        for k in range(len(f.segments)):
            engine(f, k)
            if self.split == "bbox":
                self._exceptions(f, k)

    def _exceptions(self, f: FrameArgs, k: int) -> None:
        lo, hi = self._exc_ranges[k]
        if hi > lo:
            t = self.table
            A.bbox_exceptions(
                *(*f.segments[k], k * self.npx, t.exc_pix, t.exc_ptr, t.exc_bin, t.exc_coef),
                *(lo, hi, *f.darks[k], f.use_dark, self.norm[k], f.check_dummy, f.dummy32),
                *(f.delta32, f.poisson, f.accs, f.accv, f.removed),
            )

    def _probe(self, key: EngineKey) -> list[np.ndarray] | np.ndarray:
        """A frame of ``key``'s dtype and layout whose pixels are all counted (not the dummy)."""
        value = 8 if self.dummy == 7 else 7
        if key.layout == "stitched":
            return np.full(self.geometry.shape, value, dtype=key.dtype)
        return [np.full(self.part_shape, value, dtype=key.dtype)] * self.n_parts

    def engine_for(self, key: EngineKey, dark=None, error_model: str | None = None):
        """The engine that integrates frames of ``key`` (timed on a probe frame the first time
        candidates compete on this CPU, unless a choice is stored beside the tables)."""

        def time_engine(engine) -> float:
            f = self.frame_args(self._probe(key), dark, error_model)
            return timer(lambda: self._run(engine, f))

        return self.chooser.choose(key, time_engine)

    def engine_choices(self) -> dict[str, dict]:
        """The engines chosen so far, by key (for logs and ``shmpipe bench``)."""
        return self.chooser.choices()

    def accumulate(self, data, dark=None, error_model: str | None = None):
        """Run the per-frame loops; return (signal, variance, removed, frame arguments)."""
        em = check_error_model(error_model)
        f = self.frame_args(data, dark, em)
        # The engine of each kind of frame, looked up by what tells kinds apart here (the key
        # itself costs tens of microseconds a frame to build).
        stitched = isinstance(data, np.ndarray) and data.ndim == 2
        kind = (f.segments[0][0].dtype, stitched, dark is None, em)
        engine = self._engines.get(kind)
        if engine is None:
            engine = self.engine_for(self.engine_key(data, dark, em), dark, em)
            self._engines[kind] = engine
        self._run(engine, f)
        nb = self.nbins
        signal = f.accs.sum(axis=0)[:nb]
        variance = f.accv.sum(axis=0)[:nb]
        if engine.acc == "packed":
            signal += f.accp[:, 0::2].sum(axis=0)[:nb]
            variance += f.accp[:, 1::2].sum(axis=0)[:nb]
        elif engine.acc == "slots":  # bin b: its pixels' c0 parts, then bin b - 1's c1 parts
            slots = f.accq.sum(axis=0).reshape(-1, A.SLOT)
            signal += slots[:nb, 0]
            signal[1:] += slots[: nb - 1, 1]
            variance += slots[:nb, 2]
            variance[1:] += slots[: nb - 1, 3]
        return signal, variance, f.removed[:nb], f

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
        em = check_error_model(error_model)
        if not normalization_factor or not np.isfinite(normalization_factor):
            raise ValueError(
                f"normalization_factor must be finite and nonzero, got {normalization_factor}"
            )
        signal, var_sum, removed, f = self.accumulate(data, dark, em)
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
                variance = self._image_order.sum_variance(f)
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
        """Bytes the per-frame loop reads (for bandwidth figures): the pixels and the table
        rows, as packed words if the engine chosen last reads them."""
        n = self.n_parts * self.npx
        t = self.table
        chosen = [ENGINES[c["engine"]] for c in self.chooser.choices().values()]
        if chosen and chosen[-1].table == "words":
            return n * (data_itemsize + t.word.dtype.itemsize)
        per_px = data_itemsize + t.bin.dtype.itemsize
        if self.split == "bbox":
            per_px += t.coef.dtype.itemsize
        return n * per_px
