"""A custom reducer: the peak hold of a profile, each bin's largest value over the frames."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from shmpipe.api import ArraySpec, Reducer, ReducerParams


@numba.njit(cache=True)
def hold(peak, frame, value, message_id):
    for i in range(value.size):
        v = value[i]
        # NaN compares false: a masked bin never wins. A tie goes to the earlier frame, so
        # the result is the same whatever order the frames arrive in.
        if v > peak[i] or (v == peak[i] and message_id < frame[i]):
            peak[i] = v
            frame[i] = message_id


class PeakHold(Reducer):
    """The largest value of each element over the frames, and the message id it came from."""

    @dataclass
    class Params(ReducerParams):
        pass  # input and every are all it takes

    def outputs(self):
        s = self.input_spec
        return [
            ArraySpec("peak", s.shape, "float64", s.unit, long_name="Peak hold"),
            ArraySpec("message_id", s.shape, "int64", long_name="Frame of the peak"),
        ]

    def new_state(self):
        shape = self.input_spec.shape
        return {"peak": np.full(shape, -np.inf), "frame": np.zeros(shape, np.int64)}

    def add(self, state, value, record):
        hold(state["peak"].reshape(-1), state["frame"].reshape(-1), value.reshape(-1),
             record.message_id)  # fmt: skip

    def merge(self, a, b):
        later = (b["peak"] > a["peak"]) | ((b["peak"] == a["peak"]) & (b["frame"] < a["frame"]))
        return {
            "peak": np.where(later, b["peak"], a["peak"]),
            "frame": np.where(later, b["frame"], a["frame"]),
        }

    def finish(self, state):
        return {"peak": state["peak"].copy(), "message_id": state["frame"].copy()}
