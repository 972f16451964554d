"""The reducer protocol: results across frames (a mean, a sum, a scan map, a histogram).

A kernel sees one frame. A reducer sees one per-frame output of many frames, in the publisher,
and folds them into a *state*: a dict of numpy arrays that is everything the reducer knows.
Because the state is plain arrays, the engine can checkpoint it together with the message ids
it includes (exactly once across crashes), write a node's partial state beside its results,
and merge partial states of several nodes afterwards. A reducer therefore implements four
pure steps:

- ``new_state()``: the state of no frame;
- ``add(state, value, record)``: fold one frame's value in, in place;
- ``merge(a, b)``: the state of the frames of ``a`` and ``b`` together (order-independent);
- ``finish(state)``: the outputs, declared by ``outputs()`` like a kernel's.

Frames arrive in whatever order workers finish them, so ``add`` must give the same result for
any order (up to floating-point rounding), and ``merge`` must agree with ``add``.

Example
-------
>>> import numpy as np
>>> from dataclasses import dataclass
>>> class Peak(Reducer):
...     '''The largest value of each element over the frames.'''
...     @dataclass
...     class Params(ReducerParams):
...         pass
...     def outputs(self):
...         return [ArraySpec("max", self.input_spec.shape, "float64")]
...     def new_state(self):
...         return {"max": np.full(self.input_spec.shape, -np.inf)}
...     def add(self, state, value, record):
...         np.maximum(state["max"], value, out=state["max"])
...     def merge(self, a, b):
...         return {"max": np.maximum(a["max"], b["max"])}
...     def finish(self, state):
...         return {"max": state["max"]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.params import ParamError
from shmpipe.api.sink import Record

ENTRY_POINT_GROUP = "shmpipe.reducers"

State = dict[str, np.ndarray]


@dataclass
class ReducerParams:
    """The keys every ``[reducers.NAME]`` table has; a reducer's ``Params`` subclasses it."""

    input: str = ""
    """The per-frame output reduced, ``kernel.output`` (``integrate.intensity``)."""
    every: int = 0
    """0: one result per stream; N: one per N consecutive message ids (ids 1..N, N+1..2N,
    ...: the frames of one scan point), written as soon as the N frames are in."""

    def validate(self) -> None:
        if not self.input or "." not in self.input:
            raise ParamError(
                "input", f'must name a kernel output "kernel.output", got {self.input!r}'
            )
        if self.every < 0:
            raise ParamError("every", f"must be 0 (per stream) or more, got {self.every}")


class Reducer:
    """Base class of every reducer.

    Parameters
    ----------
    name : str
        The instance name (``[reducers.<name>]``); outputs are qualified ``name.output``.
    params : ReducerParams
        The validated parameters (a subclass of ``ReducerParams``).
    input_spec : ArraySpec
        The per-frame output it reduces, by qualified name (shape, dtype, unit, axis).
    """

    Params: ClassVar[type] = ReducerParams

    def __init__(self, name: str, params: Any, input_spec: ArraySpec) -> None:
        self.name = name
        self.params = params
        self.input_spec = input_spec

    def check(self, available: Mapping[str, ArraySpec]) -> None:  # noqa: B027 - optional
        """Refuse (``ValueError``) an input it cannot reduce; ``available``: every per-frame
        output of the chain by qualified name (a weight, say, may name another one)."""

    def outputs(self) -> Sequence[ArraySpec]:
        """The arrays ``finish`` returns, by short name (qualified as ``name.output``).

        A shape of ``(0, 0)`` says that it is known only when the result is finished (a map
        on a grid learned from the positions)."""
        raise NotImplementedError

    def new_state(self) -> State:
        """The state of no frame: a dict of numpy arrays (checkpointed and merged as such)."""
        raise NotImplementedError

    def add(self, state: State, value: np.ndarray, record: Record) -> State | None:
        """Fold one frame's ``value`` (a read-only view, valid during the call) into
        ``state``, in place; return a new dict only when an array had to grow.

        ``record`` is the frame's whole result: ``record.meta`` (the message's metadata:
        scan positions, monitor counts) and ``record.arrays`` (every per-frame output by
        qualified name)."""
        raise NotImplementedError

    def merge(self, a: State, b: State) -> State:
        """The state of the frames of ``a`` and of ``b`` together (may reuse ``a``)."""
        raise NotImplementedError

    def finish(self, state: State) -> dict[str, np.ndarray]:
        """The outputs of a state, by short name (``outputs()``)."""
        raise NotImplementedError

    def qualified_outputs(self) -> list[ArraySpec]:
        """``outputs()`` qualified by this reducer's name."""
        return [s.qualified(self.name) for s in self.outputs()]
