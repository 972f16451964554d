"""The lambda_decompress kernel: module payloads decoded into a (n, rows, cols) stack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from native_kernels.compression import PayloadError, compress, decompress_into
from native_kernels.declared import master_layout
from native_kernels.shmpipe_kernels.common import KernelConfigError, master_param, run_geometry
from shmpipe.api.kernel import ArraySpec, Frame, Kernel, SetupContext


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
        count. Deprecated: declare the run's [detector] instead (this key maps into it)."""
        missing_modules: list = field(default_factory=list)
        """Indices of modules not installed (no part arrives for them). Deprecated: see
        geometry."""
        master: str | None = None
        """A DECTRIS *_master.h5: one part per frame (its HDF5 chunk), shape and dtype from the
        file (instead of geometry and dtype)."""

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        p = self.params
        dtype = p.dtype
        if p.master is not None:
            m = master_param(p.master, self.name)
            dtype = np.dtype(m.dtype).name
            self._geo = master_layout(m)
        if p.compression not in ("auto", "none", "bslz4", "bslz4_h5"):
            raise KernelConfigError(
                f"{self.name}: compression must be auto, none, bslz4 or "
                f"bslz4_h5, not {p.compression!r}"
            )
        if np.dtype(dtype) not in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32)):
            raise KernelConfigError(f"{self.name}: dtype must be uint8, uint16 or uint32")
        geo = self._geo if p.master is not None else run_geometry(p, ctx.detector)
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
