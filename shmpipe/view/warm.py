"""The view's Numba kernels compiled (or loaded from Numba's cache) ahead of the first image.

Run in the run's setup phase, before any worker starts (``SideProcess.setup``, beside the
kernels' own setup), so that the Numba cache holds them; then by the view process at the
run's priority, before it lowers its own (``view.nice``), so that it only loads them. A view
that compiled on first use at ``nice 19`` beside busy workers answered nothing for minutes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.view.catalog import kinds


def image_dtypes(outputs: Iterable[ArraySpec], parts: Sequence[ArraySpec] | None) -> set[np.dtype]:
    """The pixel types the view draws: its image outputs' and the raw parts'."""
    specs = {s.name: s for s in outputs}
    found = {np.dtype(s.dtype) for n, s in specs.items() if kinds(specs).get(n) == "image"}
    return found | {np.dtype(p.dtype) for p in parts or ()}


def warm_kernels(dtypes: Iterable[np.dtype]) -> None:
    """Render a tiny image of each dtype every way the view renders (binned mean and max,
    from an image and from modules): each kernel is compiled or loaded once."""
    from shmpipe.view.rawbin import render_parts
    from shmpipe.view.render import RenderParams, render

    for dtype in dtypes:
        tiny = np.zeros((2, 4), dtype)
        for binning in ("mean", "max"):
            params = RenderParams(width=2, binning=binning)
            render(tiny, params)
            render_parts([tiny, tiny], params)


def warm_for_run(config: Any, outputs: Sequence[ArraySpec], parts: Sequence[ArraySpec] | None):
    """``SideProcess.setup`` of the view: its kernels for this chain, in the setup phase."""
    warm_kernels(image_dtypes(outputs, parts))
