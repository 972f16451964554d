"""The built-in reducers: ``mean``, ``sum``, ``map`` and ``histogram`` (``shmpipe.api.Reducer``).

Their states are sums (for ``mean``: of the weights, and of the deviations from a shift per
element and their squares, which keeps the variance free of cancellation), so the order
frames arrive in changes a result by rounding only, and two nodes' partial states merge into
the state of all their frames.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numba
import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.params import ParamError
from shmpipe.api.reducer import Reducer, ReducerParams, State
from shmpipe.api.sink import Record


# -- mean ---------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _mean_add(x, w, count, wsum, w2sum, shift, dsum, d2sum):  # pragma: no cover - compiled
    # Sums of the deviations from a shift (each element's first value): no division in the
    # loop (it was most of the cost) and no cancellation in the variance, as plain sums of
    # squares would have. One pass per frame, no temporaries.
    for i in range(x.size):
        v = float(x[i])
        if v != v:  # NaN: this element of this frame does not count
            continue
        if count[i] == 0:
            shift[i] = v
        d = v - shift[i]
        dsum[i] += w * d
        d2sum[i] += w * d * d
        wsum[i] += w
        w2sum[i] += w * w
        count[i] += 1


def _shifted(state: State, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``dsum`` and ``d2sum`` of ``state`` about another ``shift``."""
    delta = state["shift"] - shift
    d, w = state["dsum"], state["wsum"]
    return d + w * delta, state["d2sum"] + 2.0 * delta * d + w * delta * delta


@dataclass
class MeanParams(ReducerParams):
    weight: str = ""
    """Each frame's weight: a metadata key (a monitor count) or a scalar per-frame output
    (``kernel.output``); empty: every frame weighs 1."""


class MeanReducer(Reducer):
    """``kind = "mean"``: the mean per element over the frames, NaN-aware, with its standard
    error (outputs ``mean``, ``sem``, ``count``: frames with a finite value per element)."""

    Params = MeanParams

    def check(self, available: Mapping[str, ArraySpec]) -> None:
        w = self.params.weight
        if w and "." in w and w in available and available[w].shape != ():
            raise ValueError(f"weight {w!r} must be a scalar output, not {available[w].shape}")

    def outputs(self) -> list[ArraySpec]:
        s = self.input_spec
        return [
            ArraySpec("mean", s.shape, "float64", s.unit, errors="sem", long_name="Mean"),
            ArraySpec("sem", s.shape, "float64", s.unit, long_name="Standard error"),
            ArraySpec("count", s.shape, "int64", long_name="Frames counted"),
        ]

    def new_state(self) -> State:
        # Flat: the compiled update takes them as they are (a reshape per array and frame
        # was a third of the reducer's cost); ``finish`` gives them the input's shape.
        size = int(np.prod(self.input_spec.shape, dtype=np.int64))
        z = lambda dt: np.zeros(size, dt)  # noqa: E731
        return {"count": z(np.int64), "wsum": z(float), "w2sum": z(float), "shift": z(float),
                "dsum": z(float), "d2sum": z(float)}  # fmt: skip

    def _weight(self, record: Record) -> float:
        key = self.params.weight
        if not key:
            return 1.0
        if key in record.arrays:
            return float(record.arrays[key])
        try:
            return float(record.meta[key])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"reducer {self.name!r}: weight {key!r} is neither an output nor a number in "
                f"the metadata of message {record.message_id} ({sorted(record.meta)})"
            ) from None

    def add(self, state: State, value: np.ndarray, record: Record) -> None:
        w = self._weight(record)
        if not w > 0:
            return  # a frame of weight 0 (no beam) adds nothing
        s = state
        x = value.reshape(-1) if value.flags.c_contiguous else np.ravel(value)
        _mean_add(x, w, s["count"], s["wsum"], s["w2sum"], s["shift"], s["dsum"], s["d2sum"])

    def merge(self, a: State, b: State) -> State:
        shift = np.where(a["count"] > 0, a["shift"], b["shift"])
        (da, d2a), (db, d2b) = _shifted(a, shift), _shifted(b, shift)
        return {
            "count": a["count"] + b["count"],
            "wsum": a["wsum"] + b["wsum"],
            "w2sum": a["w2sum"] + b["w2sum"],
            "shift": shift,
            "dsum": da + db,
            "d2sum": d2a + d2b,
        }

    def finish(self, state: State) -> dict[str, np.ndarray]:
        w, w2, d = state["wsum"], state["w2sum"], state["dsum"]
        with np.errstate(invalid="ignore", divide="ignore"):
            offset = d / w
            mean = np.where(w > 0, state["shift"] + offset, np.nan)
            m2 = np.maximum(state["d2sum"] - d * offset, 0.0)  # sum of w (x - mean)^2
            # Effective number of frames (Kish): n for equal weights, so the standard error
            # is the usual sqrt(sample variance / n).
            n_eff = np.where(w2 > 0, w * w / w2, 0.0)
            sem = np.where(n_eff > 1, np.sqrt(m2 / w / (n_eff - 1)), np.nan)
        shape = self.input_spec.shape
        return {
            "mean": mean.reshape(shape),
            "sem": sem.reshape(shape),
            "count": state["count"].reshape(shape).copy(),
        }


# -- sum ----------------------------------------------------------------------------------------
class SumReducer(Reducer):
    """``kind = "sum"``: the sum per element in float64 (images too: the accumulated image of
    a weak scatterer); output ``sum``. A NaN element stays NaN (a masked pixel)."""

    def outputs(self) -> list[ArraySpec]:
        s = self.input_spec
        return [ArraySpec("sum", s.shape, "float64", s.unit, long_name="Sum")]

    def new_state(self) -> State:
        return {"sum": np.zeros(self.input_spec.shape, np.float64)}

    def add(self, state: State, value: np.ndarray, record: Record) -> None:
        np.add(state["sum"], value, out=state["sum"])

    def merge(self, a: State, b: State) -> State:
        return {"sum": a["sum"] + b["sum"]}

    def finish(self, state: State) -> dict[str, np.ndarray]:
        return {"sum": state["sum"].copy()}


# -- histogram ----------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _histogram_add(x, lo, hi, counts, outside):  # pragma: no cover - compiled
    bins = counts.size
    scale = bins / (hi - lo)
    for i in range(x.size):
        v = float(x[i])
        if v != v:
            outside[2] += 1
        elif v < lo:
            outside[0] += 1
        elif v >= hi:
            outside[1] += 1
        else:
            counts[min(int((v - lo) * scale), bins - 1)] += 1


@dataclass
class HistogramParams(ReducerParams):
    bins: int = 100
    """Bins between range[0] and range[1]."""
    range: list[float] = field(default_factory=list)
    """[low, high] of the bins (required); values outside are counted in ``outside``."""

    def validate(self) -> None:
        super().validate()
        if self.bins < 1:
            raise ParamError("bins", f"must be at least 1, got {self.bins}")
        if len(self.range) != 2 or not self.range[0] < self.range[1]:
            raise ParamError("range", f"must be [low, high] with low < high, got {self.range}")


class HistogramReducer(Reducer):
    """``kind = "histogram"``: how many values of the input (every element of every frame)
    fall in each bin; outputs ``counts``, ``edges`` (its axis) and ``outside`` (below, above,
    NaN)."""

    Params = HistogramParams

    def outputs(self) -> list[ArraySpec]:
        n, unit = self.params.bins, self.input_spec.unit
        return [
            ArraySpec("counts", (n,), "int64", axis="edges", long_name="Values per bin"),
            ArraySpec("edges", (n + 1,), "float64", unit, long_name="Bin edges"),
            ArraySpec("outside", (3,), "int64", long_name="Below, above the range; NaN"),
        ]

    def new_state(self) -> State:
        return {"counts": np.zeros(self.params.bins, np.int64), "outside": np.zeros(3, np.int64)}

    def add(self, state: State, value: np.ndarray, record: Record) -> None:
        lo, hi = self.params.range
        _histogram_add(np.ascontiguousarray(value).reshape(-1), float(lo), float(hi),
                       state["counts"], state["outside"])  # fmt: skip

    def merge(self, a: State, b: State) -> State:
        return {"counts": a["counts"] + b["counts"], "outside": a["outside"] + b["outside"]}

    def finish(self, state: State) -> dict[str, np.ndarray]:
        lo, hi = self.params.range
        edges = np.linspace(lo, hi, self.params.bins + 1)
        counts, outside = state["counts"].copy(), state["outside"].copy()
        return {"counts": counts, "edges": edges, "outside": outside}
