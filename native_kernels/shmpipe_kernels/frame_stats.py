"""The frame_stats kernel: sum, maximum, hits and (live) ROI sums of a frame."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from native_kernels.geometry import GeometryError
from native_kernels.shmpipe_kernels.common import (
    KernelConfigError,
    as_parts,
    input_spec,
    run_geometry,
)
from native_kernels.stats import (
    _roi_sums,
    accumulate_stats,
    check_rois,
    module_rois,
    roi_sums_on_parts,
)
from shmpipe.api.kernel import ArraySpec, Frame, Kernel, SetupContext


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
        """With module input: the layout that maps the ROIs onto the modules. Deprecated:
        declare the run's [detector] instead (this key maps into it)."""
        missing_modules: list = field(default_factory=list)
        """With module input: indices of modules not installed. Deprecated: see geometry."""

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        p = self.params
        n, shape, dtype = input_spec(ctx, p.input, self.name)
        self._geo = None  # with module input and ROIs: the layout that maps them
        try:
            if n and (len(p.rois) or p.max_rois):
                geo = run_geometry(p, ctx.detector)
                if n != len(geo.present) or tuple(shape) != tuple(geo.module_shape):
                    raise ValueError(
                        f"input {p.input!r} ({n} of {tuple(shape)}) does not match the "
                        f"geometry {geo.name!r}"
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
        data = as_parts(frame.get(p.input))
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
