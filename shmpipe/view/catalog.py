"""What the view can show, decided from the chain's declared outputs alone.

A 2-D output is an image (3-D: a stack of modules, assembled like the raw frame); a 1-D
output is a profile, plotted against its declared ``axis`` with its ``errors`` as error bars;
a scalar is a trace. Outputs that are another's axis or errors are shown with it, not alone.
``raw`` (the assembled raw frame) is always an image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.view.assemble import assemble

RAW = "raw"


def kinds(specs: dict[str, ArraySpec]) -> dict[str, str]:
    """The kind of each output: image, profile, trace, axis, errors or array."""
    used_as = {}
    for s in specs.values():
        if s.axis in specs:
            used_as[s.axis] = "axis"
        if s.errors in specs:
            used_as[s.errors] = "errors"
    out = {}
    for name, s in specs.items():
        if name in used_as:
            out[name] = used_as[name]
        elif len(s.shape) in (2, 3) and np.dtype(s.dtype).kind in "biuf":
            out[name] = "image"
        elif len(s.shape) == 1 and np.dtype(s.dtype).kind in "biuf":
            out[name] = "profile"
        elif len(s.shape) == 0 and np.dtype(s.dtype).kind in "biuf":
            out[name] = "trace"
        else:
            out[name] = "array"
    return out


def describe(specs: dict[str, ArraySpec], raw_parts: list[ArraySpec] | None) -> dict[str, Any]:
    """The ``/api/outputs`` document."""
    k = kinds(specs)
    doc: dict[str, Any] = {
        RAW: {
            "kind": "image",
            "shape": None,
            "dtype": raw_parts[0].dtype if raw_parts else None,
            "unit": "counts",
            "modules": len(raw_parts) if raw_parts else None,
            "module_shape": list(raw_parts[0].shape) if raw_parts else None,
            "long_name": "raw frame (modules placed with the detector geometry)",
        }
    }
    for name, s in specs.items():
        doc[name] = {
            "kind": k[name],
            "shape": list(s.shape),
            "dtype": s.dtype,
            "unit": s.unit,
            "axis": s.axis,
            "errors": s.errors,
            "long_name": s.long_name or name,
        }
    return doc


def image_of(name: str, array: np.ndarray) -> np.ndarray:
    """A 2-D image from an output (3-D: its first axis as modules)."""
    if array.ndim == 3:
        return assemble(list(array))
    return array


def profile(specs: dict[str, ArraySpec], arrays: dict[str, np.ndarray], name: str) -> dict:
    """``x``, ``y``, ``sigma`` and units of a 1-D output."""
    s = specs[name]
    y = np.asarray(arrays[name], dtype=np.float64)
    if s.axis and s.axis in arrays:
        x, x_unit, x_name = arrays[s.axis], specs[s.axis].unit, s.axis
    else:
        x, x_unit, x_name = np.arange(y.size), "", "index"
    sigma = arrays[s.errors] if s.errors and s.errors in arrays else None
    return {
        "name": name,
        "x": _list(x),
        "y": _list(y),
        "sigma": None if sigma is None else _list(sigma),
        "unit": s.unit,
        "x_name": x_name,
        "x_unit": x_unit,
        "long_name": s.long_name or name,
    }


def _list(a) -> list:
    """JSON-safe floats (NaN and infinities become null)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    values = a.tolist()
    if np.isfinite(a).all():
        return values
    return [v if math.isfinite(v) else None for v in values]
