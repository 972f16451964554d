"""The raw frame binned straight from its modules, without assembling the full canvas.

Assembling a LAMBDA 9M frame writes a 47 MB float32 canvas before binning it; for a
browser-sized image only the binned cells are needed. For each module and each (factor,
region) two small offset arrays say where a module pixel goes: ``rows[r]`` (from the module
row) and ``cols[c]`` (from the module column), so that pixel ``(r, c)`` adds to cell
``rows[r] + cols[c]`` of the flat binned image. A quarter-turned module swaps which of the
two carries the binned row. Integer modules need no finite test and their per-cell counts
are fixed by the geometry, so they are computed once with the offsets.

The result equals binning the assembled canvas with its NaN gaps left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from native_kernels.geometry import DetectorGeometry, ModulePlacement
from shmpipe.view.assemble import assemble, geometry_for
from shmpipe.view.binning import bin_module_into, count_cells, finish_cells
from shmpipe.view.render import Rendered, RenderParams, bin_factor, clip_region, finish, render


@dataclass(frozen=True)
class ModuleCells:
    """Where one module's pixels go in the binned image (see the module docstring)."""

    index: int  # the part's position in the frame
    rows: np.ndarray  # int64 per module row: cell offset, -1 outside the region
    cols: np.ndarray  # int64 per module column
    r0: int  # rows r0..r1-1 and columns c0..c1-1 lie inside the region
    r1: int
    c0: int
    c1: int


@dataclass(frozen=True)
class CellMap:
    """All modules' cells for one geometry, factor and region, and the static counts."""

    shape: tuple[int, int]  # of the binned image
    modules: tuple[ModuleCells, ...]
    counts: np.ndarray  # int32, flat: module pixels per cell (integer modules)


def _cell_offsets(coord: np.ndarray, lo: int, hi: int, factor: int, stride: int) -> np.ndarray:
    """Binned-cell offset of each canvas coordinate along one axis, -1 outside [lo, hi)."""
    inside = (coord >= lo) & (coord < hi)
    return np.where(inside, (coord - lo) // factor * stride, -1).astype(np.int64)


def _module_cells(
    index: int,
    m: ModulePlacement,
    placed: tuple[int, int],
    region: tuple[int, int, int, int],
    factor: int,
    ow: int,
) -> ModuleCells | None:
    x0, y0, x1, y1 = region
    ph, pw = placed
    # Canvas row and column of every module pixel, read through the module's own view of
    # an index grid (flips and quarter turns as the stitcher applies them).
    canvas_row = m.module_view(np.broadcast_to(np.arange(ph)[:, None], (ph, pw))) + m.y
    canvas_col = m.module_view(np.broadcast_to(np.arange(pw)[None, :], (ph, pw))) + m.x
    if m.rot90 % 2 == 0:  # module rows run along canvas rows
        rows = _cell_offsets(canvas_row[:, 0], y0, y1, factor, ow)
        cols = _cell_offsets(canvas_col[0, :], x0, x1, factor, 1)
    else:  # a quarter turn: module rows run along canvas columns
        rows = _cell_offsets(canvas_col[:, 0], x0, x1, factor, 1)
        cols = _cell_offsets(canvas_row[0, :], y0, y1, factor, ow)
    r_in, c_in = np.flatnonzero(rows >= 0), np.flatnonzero(cols >= 0)
    if not r_in.size or not c_in.size:
        return None
    # Offsets are monotonic along an axis, so the inside is one contiguous range.
    r0, r1, c0, c1 = int(r_in[0]), int(r_in[-1]) + 1, int(c_in[0]), int(c_in[-1]) + 1
    return ModuleCells(index, rows, cols, r0, r1, c0, c1)


@lru_cache(maxsize=8)  # a zoom region is a key: keep the few on screen
def cell_map(geometry: DetectorGeometry, factor: int, region: tuple[int, int, int, int]) -> CellMap:
    """The offsets of every present module for ``factor`` and ``region`` (x0, y0, x1, y1,
    clipped to the canvas), cached: they depend on the geometry only."""
    x0, y0, x1, y1 = region
    oh, ow = math.ceil((y1 - y0) / factor), math.ceil((x1 - x0) / factor)
    modules = []
    counts = np.zeros(oh * ow, np.int32)
    for k, i in enumerate(geometry.present):
        m = geometry.modules[i]
        cells = _module_cells(k, m, geometry.placed_shape(m), region, factor, ow)
        if cells is not None:
            modules.append(cells)
            count_cells(cells.rows, cells.cols, cells.r0, cells.r1, cells.c0, cells.c1, counts)
    return CellMap((oh, ow), tuple(modules), counts)


def bin_modules(
    parts: list[np.ndarray],
    geometry: DetectorGeometry,
    factor: int,
    region: tuple[int, int, int, int],
    use_max: bool,
) -> np.ndarray:
    """The binned image of ``parts`` (one per present module of ``geometry``): mean or max
    of every ``factor x factor`` block of the assembled canvas inside ``region``, gaps and
    non-finite pixels left out (NaN where a block has none)."""
    cmap = cell_map(geometry, factor, region)
    acc = np.full(cmap.counts.size, -np.inf if use_max else 0.0)
    floating = any(not np.issubdtype(parts[c.index].dtype, np.integer) for c in cmap.modules)
    cnt = np.zeros(cmap.counts.size, np.int32) if floating else cmap.counts
    for c in cmap.modules:
        part = np.ascontiguousarray(parts[c.index])
        bin_module_into(part, c.rows, c.cols, c.r0, c.r1, c.c0, c.c1, use_max, floating, acc, cnt)
    out = np.empty(acc.size, np.float64)
    finish_cells(acc, cnt, use_max, out)
    return out.reshape(cmap.shape)


def uniform_modules(parts: list[np.ndarray]) -> bool:
    """Whether ``parts`` are two or more 2-D modules of one shape (laid out by a geometry)."""
    return len(parts) > 1 and parts[0].ndim == 2 and len({p.shape for p in parts}) == 1


def render_parts(
    parts: list[np.ndarray], params: RenderParams, geometry: DetectorGeometry | None = None
) -> tuple[Rendered, tuple[int, int]]:
    """The rendered raw frame and the assembled image's shape, binned from the modules.

    ``geometry`` (the run's, if any) is used when it fits the parts, as in ``assemble``;
    parts of other kinds (one image, modules of different shapes) are assembled and rendered
    as an image.
    """
    if not uniform_modules(parts):
        image = assemble(parts, geometry)
        return render(image, params), image.shape
    geometry = geometry_for(len(parts), parts[0].shape, geometry)
    region = clip_region(geometry.shape, params.region)
    factor = bin_factor(region[2] - region[0], params)
    values = bin_modules(parts, geometry, factor, region, params.binning == "max")
    return finish(values, factor, region, params), geometry.shape
