"""The ``map`` reducer: a scalar per frame placed by the frame's scan position.

Positions come from each message's metadata (``x = "motor_x"``, ``y = "motor_y"``). On a
grid given as ``[first, last, points]`` per axis, a frame adds to its nearest cell (the cell's
value is the mean of the frames there); without one, the positions and values are kept and the
grid is learned when the map is finished: the distinct positions of each axis, those closer
than ``tolerance`` taken as one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.params import ParamError
from shmpipe.api.reducer import Reducer, ReducerParams, State
from shmpipe.api.sink import Record


@dataclass
class MapParams(ReducerParams):
    x: str = "motor_x"
    """Metadata key of the fast axis position."""
    y: str = "motor_y"
    """Metadata key of the slow axis position."""
    x_grid: list[float] = field(default_factory=list)
    """[first, last, points] of the x positions; empty: learned from the positions."""
    y_grid: list[float] = field(default_factory=list)
    """[first, last, points] of the y positions; empty: learned from the positions."""
    tolerance: float = 1e-6
    """Learned grid: positions closer than this are one grid position."""

    def validate(self) -> None:
        super().validate()
        for key in ("x_grid", "y_grid"):
            g = getattr(self, key)
            if g and (len(g) != 3 or g[2] < 1 or int(g[2]) != g[2] or (g[2] > 1 and g[0] == g[1])):
                raise ParamError(key, f"must be [first, last, points] (points >= 1), got {g}")
        if bool(self.x_grid) != bool(self.y_grid):
            raise ParamError("y_grid", "give both x_grid and y_grid, or neither (a learned grid)")
        if not self.x_grid and self.every:
            raise ParamError(
                "every", "a learned grid is learned per stream: 0 (or give x_grid and y_grid)"
            )


def _axis(grid: list[float]) -> np.ndarray:
    return np.linspace(grid[0], grid[1], int(grid[2]))


def _cells(values: np.ndarray, tolerance: float) -> np.ndarray:
    """The distinct positions among ``values``, neighbours within ``tolerance`` merged."""
    v = np.sort(values)
    if not len(v):
        return v
    starts = np.concatenate([[True], np.diff(v) > tolerance])
    groups = np.cumsum(starts) - 1
    return np.bincount(groups, weights=v) / np.bincount(groups)


class MapReducer(Reducer):
    """``kind = "map"``: outputs ``map`` (mean value per cell, NaN where no frame was),
    ``count`` (frames per cell), ``x`` and ``y`` (the grid), ``unplaced`` (frames without
    a position or outside the given grid)."""

    Params = MapParams

    def check(self, available) -> None:
        if self.input_spec.shape != ():
            raise ValueError(
                f"a map places one scalar per frame; {self.params.input} has shape "
                f"{self.input_spec.shape}"
            )

    @property
    def _given(self) -> bool:
        return bool(self.params.x_grid)

    def outputs(self) -> list[ArraySpec]:
        p, unit = self.params, self.input_spec.unit
        ny, nx = (int(p.y_grid[2]), int(p.x_grid[2])) if self._given else (0, 0)
        return [
            ArraySpec("map", (ny, nx), "float64", unit, long_name=f"{p.input} by position"),
            ArraySpec("count", (ny, nx), "int64", long_name="Frames per cell"),
            ArraySpec("x", (nx,), "float64", long_name=p.x),
            ArraySpec("y", (ny,), "float64", long_name=p.y),
            ArraySpec("unplaced", (), "int64", long_name="Frames not placed"),
        ]

    def new_state(self) -> State:
        p = self.params
        if self._given:
            shape = (int(p.y_grid[2]), int(p.x_grid[2]))
            return {"sum": np.zeros(shape), "count": np.zeros(shape, np.int64),
                    "unplaced": np.zeros((), np.int64)}  # fmt: skip
        return {"points": np.zeros((64, 3)), "n": np.zeros((), np.int64),
                "unplaced": np.zeros((), np.int64)}  # fmt: skip

    def _position(self, record: Record) -> tuple[float, float] | None:
        try:
            return float(record.meta[self.params.x]), float(record.meta[self.params.y])
        except (KeyError, TypeError, ValueError):
            return None

    def add(self, state: State, value: np.ndarray, record: Record) -> State | None:
        pos = self._position(record)
        if pos is None:
            state["unplaced"] += 1
            return None
        x, y = pos
        if self._given:
            p = self.params
            ix, iy = self._index(x, p.x_grid), self._index(y, p.y_grid)
            if ix is None or iy is None:
                state["unplaced"] += 1
                return None
            state["sum"][iy, ix] += float(value)
            state["count"][iy, ix] += 1
            return None
        n, points = int(state["n"]), state["points"]
        grown = None
        if n == len(points):  # room for twice as many: amortised constant cost per frame
            points = np.concatenate([points, np.zeros_like(points)])
            grown = {**state, "points": points}
        points[n] = (x, y, float(value))
        (grown or state)["n"][...] = n + 1
        return grown

    @staticmethod
    def _index(v: float, grid: list[float]) -> int | None:
        first, last, n = grid[0], grid[1], int(grid[2])
        i = 0 if n == 1 else int(round((v - first) / ((last - first) / (n - 1))))
        return i if 0 <= i < n else None

    def merge(self, a: State, b: State) -> State:
        if self._given:
            return {k: a[k] + b[k] for k in ("sum", "count", "unplaced")}
        na, nb = int(a["n"]), int(b["n"])
        return {
            "points": np.concatenate([a["points"][:na], b["points"][:nb]]),
            "n": np.array(na + nb, np.int64),
            "unplaced": a["unplaced"] + b["unplaced"],
        }

    def finish(self, state: State) -> dict[str, np.ndarray]:
        p = self.params
        if self._given:
            total, count, xs, ys = state["sum"], state["count"], _axis(p.x_grid), _axis(p.y_grid)
        else:
            pts = state["points"][: int(state["n"])]
            xs, ys = _cells(pts[:, 0], p.tolerance), _cells(pts[:, 1], p.tolerance)
            ix = np.abs(pts[:, 0, None] - xs[None, :]).argmin(axis=1)
            iy = np.abs(pts[:, 1, None] - ys[None, :]).argmin(axis=1)
            total = np.zeros((len(ys), len(xs)))
            count = np.zeros((len(ys), len(xs)), np.int64)
            np.add.at(total, (iy, ix), pts[:, 2])
            np.add.at(count, (iy, ix), 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return {"map": mean, "count": count.copy(), "x": xs, "y": ys,
                "unplaced": state["unplaced"].copy()}  # fmt: skip
