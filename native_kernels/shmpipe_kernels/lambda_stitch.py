"""The lambda_stitch kernel: module parts assembled into one image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from native_kernels.geometry import DetectorGeometry, ModulePlacement
from native_kernels.shmpipe_kernels.common import (
    KernelConfigError,
    as_parts,
    input_spec,
    load_array,
    run_geometry,
)
from native_kernels.stitch import Stitcher
from shmpipe.api.kernel import ArraySpec, Frame, Kernel, SetupContext


def _warm_stitch(st: Stitcher) -> None:
    """Compile the stitcher's loops for its dtypes on a tiny layout of the same kind."""
    tiny = DetectorGeometry(
        (2, 24), (ModulePlacement(0, 0), ModulePlacement(0, 30)), dummy=st.dummy
    )
    flat = None if st.flat is None else np.ones((2, 2, 24), np.float32)
    mask = None if st.mask is None else np.zeros((2, 2, 24), np.uint8)
    out_dtype = "same" if st.output_dtype == st.input_dtype else st.output_dtype
    Stitcher(tiny, st.input_dtype, out_dtype, flat, mask)([np.zeros((2, 24), st.input_dtype)] * 2)


class LambdaStitch(Kernel):
    """Assemble module parts into one image; gaps and absent modules set to ``dummy``."""

    @dataclass
    class Params:
        input: str = "parts"
        """The modules: "parts", or "decompress.modules" after a lambda_decompress kernel."""
        geometry: str = "lambda9m"
        """"lambda9m" (the default layout) or a .toml/.json geometry file. Deprecated:
        declare the run's [detector] instead (this key maps into it)."""
        missing_modules: list = field(default_factory=list)
        """Indices of modules not installed; their area stays dummy. Deprecated: see
        geometry."""
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
        geo = run_geometry(p, ctx.detector)
        n, shape, dtype = input_spec(ctx, p.input, self.name)
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
                load_array(p.flat, "flat"),
                load_array(p.mask, "mask"),
                p.dummy,
            )
        except (TypeError, ValueError) as exc:
            raise KernelConfigError(f"{self.name}: {exc}") from exc
        _warm_stitch(self.stitcher)
        return [ArraySpec("image", geo.shape, self.stitcher.output_dtype.str, unit="counts")]

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        self.stitcher(as_parts(frame.get(self.params.input)), out["image"])
