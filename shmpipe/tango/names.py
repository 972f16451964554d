"""Tango-safe attribute names for the chain's outputs (``stats.roi_sums`` -> ``stats_roi_sums``)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Attributes the device always has; an output never takes one of these names.
FIXED = (
    "State",
    "Status",
    "LastAnalyzedFrame",
    "CurrentStream",
    "FramesIn",
    "FramesOut",
    "Errors",
    "FrameRate",
    "Backlog",
    "HitRate",
    "LatestProfile",
    "LatestProfileAxis",
    "RoIs",
    "ParamsVersion",
)


def tango_name(output: str) -> str:
    """A Tango attribute name for an output: letters, digits and ``_``, starting with a letter."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", output)
    if not name or not name[0].isalpha():
        name = "out_" + name
    return name


def attribute_names(outputs: Iterable[str]) -> dict[str, str]:
    """``{attribute name: output}`` for the outputs, unique without regard to case (as Tango
    compares names), a clash resolved by a numeric suffix."""
    taken = {n.lower() for n in FIXED}
    out: dict[str, str] = {}
    for output in outputs:
        base = name = tango_name(output)
        i = 2
        while name.lower() in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name.lower())
        out[name] = output
    return out
