"""The reducers' latest windows as Tango attributes: their scalars and the ids they cover.

For each reducer ``NAME`` the device has ``NAME_window``, ``NAME_first_id``,
``NAME_last_id`` and ``NAME_frames`` (which window was written last and what it includes)
and one attribute per scalar output (``NAME_<output>``, e.g. ``hits_mean``), read from the
run's reducer checkpoint (``shmpipe.reduce.live``): a scan macro reads the value of the scan
point that just completed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shmpipe.tango.names import attribute_names

WINDOW = ("window", "first_id", "last_id", "frames")


@dataclass(frozen=True)
class ReducedAttribute:
    attribute: str
    reducer: str
    key: str
    """``window``, ``first_id``, ``last_id``, ``frames`` or a qualified output."""
    dtype: str
    unit: str
    label: str


class ReducedAttributes:
    """The attributes of a run's reducers and their values (``live``: a ``LiveReduced``)."""

    def __init__(self, live: Any, taken: set[str]) -> None:
        self.live = live
        wanted: list[tuple[str, str, str, str, str, str]] = []
        for name, r in live.reducers.items():
            for key in WINDOW:
                wanted.append((f"{name}.{key}", name, key, "int64", "", f"{name}: {key}"))
            for s in r.qualified_outputs():
                if s.shape == () and np.dtype(s.dtype).kind in "biuf":
                    wanted.append((s.name, name, s.name, s.dtype, s.unit, s.long_name or s.name))
        names = attribute_names(w[0] for w in wanted)
        by_output = {o: a for a, o in names.items()}
        self._values: dict[str, Any] = {}
        self.attributes = [
            ReducedAttribute(by_output[w[0]], *w[1:])
            for w in wanted
            if by_output[w[0]].lower() not in taken
        ]

    def values(self) -> dict[str, Any]:
        """Attribute name -> value of the latest written windows, as of the last ``refresh``
        (absent before the first window)."""
        return self._values

    def refresh(self) -> None:
        """Read the latest windows again (once per client request: every attribute of one
        request then comes from the same windows)."""
        if not self.live.refresh() and self._values:
            return
        latest = self.live.written()
        out: dict[str, Any] = {}
        for a in self.attributes:
            got = latest.get(a.reducer)
            if got is None:
                continue
            if a.key in WINDOW:
                value = getattr(got, a.key)
            else:
                value = np.asarray(got.arrays[a.key]).item()
            out[a.attribute] = value
        self._values = out
