"""KernelChain: the configured kernels, set up in order, and where their outputs live.

The result slot of every message has the same layout: each kernel's declared outputs, one after
the other, aligned to 64 bytes. The layout is computed once in the warm-up process (which also
fills the Numba cache) and checked again in every worker, so a kernel whose declarations differ
between processes is caught at start, not as corrupt results.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe.api.kernel import ArraySpec, Frame, Kernel, SetupContext
from shmpipe.shm.resultlayout import OUTPUT_ALIGN, ChainLayout, OutputPlacement


class KernelSetupError(RuntimeError):
    """A kernel's setup failed or declared something unusable."""


@dataclass(frozen=True)
class SlotViews:
    """A result slot's output views: per kernel (short names) and by ``kernel.output``."""

    per_kernel: list[dict[str, np.ndarray]]
    by_name: dict[str, np.ndarray]


class KernelChain:
    """The kernels of one worker (or of the warm-up process), in order."""

    def __init__(self, kernels: Sequence[Kernel]) -> None:
        self.kernels = list(kernels)
        self.layout: ChainLayout | None = None
        self._scan: dict[str, Any] | None = None
        self.current: str | None = None

    def setup(
        self, parts: list[ArraySpec] | None, cache_dir: Path, threads: int, worker: int
    ) -> ChainLayout:
        """Run every kernel's setup in order; return the result-slot layout."""
        available: dict[str, ArraySpec] = {}
        placements: list[OutputPlacement] = []
        timings = []
        offset = 0
        for k in self.kernels:
            ctx = SetupContext(
                parts=parts,
                available=dict(available),
                cache_dir=cache_dir,
                threads=threads,
                worker=worker,
            )
            t0 = time.perf_counter()
            try:
                declared = list(k.setup(ctx) or [])
            except Exception as exc:
                raise KernelSetupError(
                    f"kernel {k.name!r} ({type(k).__name__}) failed in setup: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            timings.append(time.perf_counter() - t0)
            names = set()
            for spec in declared:
                if not isinstance(spec, ArraySpec):
                    raise KernelSetupError(f"kernel {k.name!r} declared {spec!r}, not an ArraySpec")
                if spec.name in names:
                    raise KernelSetupError(f"kernel {k.name!r} declared {spec.name!r} twice")
                names.add(spec.name)
                placements.append(OutputPlacement(k.name, spec, offset))
                available[f"{k.name}.{spec.name}"] = spec
                offset += (spec.nbytes + OUTPUT_ALIGN - 1) // OUTPUT_ALIGN * OUTPUT_ALIGN
        self.layout = ChainLayout(tuple(placements), offset, tuple(timings))
        return self.layout

    def output_views(self, result_view) -> SlotViews:
        """The output views of one result slot (``result_view(off, dt, shp)`` makes one),
        made once per slot: per kernel by short name, and all of them by qualified name."""
        assert self.layout is not None
        per_kernel: dict[str, dict[str, np.ndarray]] = {k.name: {} for k in self.kernels}
        by_name: dict[str, np.ndarray] = {}
        for o in self.layout.outputs:
            view = result_view(o.offset, o.spec.dtype, o.spec.shape)
            per_kernel[o.kernel][o.spec.name] = view
            by_name[o.qualified] = view
        return SlotViews([per_kernel[k.name] for k in self.kernels], by_name)

    def run(
        self,
        frame_fields: dict[str, Any],
        views: SlotViews,
        running: np.ndarray | None = None,
        timings=None,
        proc: int = 0,
    ) -> None:
        """Process one frame through every kernel.

        Exceptions propagate; ``self.current`` names the kernel that raised. When ``running``
        (a one-element int64 array) is given, ``running[0]`` holds 1 + the index of the kernel
        running, so the supervisor can name the kernel of a worker that died mid-frame; with
        ``timings``
        (``shmpipe.shm.ring.Timings``) each kernel's run time is counted under row ``proc``.
        """
        frame = Frame(arrays=views.by_name, **frame_fields)
        # Plain dict equality: cheap for the small (usually empty) per-scan tables, and only
        # when it differs do the kernels hear about it.
        if frame.scan != self._scan:
            for k in self.kernels:
                self.current = k.name
                k.on_scan(frame.scan)
            self._scan = dict(frame.scan)
        for i, (k, out) in enumerate(zip(self.kernels, views.per_kernel, strict=True)):
            self.current = k.name
            if running is not None:
                running[0] = i + 1
            t0 = time.perf_counter_ns()
            k.process(frame, out)
            if timings is not None:
                timings.add_kernel(proc, i, time.perf_counter_ns() - t0)
        self.current = None
