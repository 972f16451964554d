"""Reducer results in the HDF5 files: ``/<stream>/reducers/<name>``, an NXdata per reducer.

One row per window (per stream: one row), at the window's index, so a window written again
after a crash lands on its own row: ``window`` (-1 for a row not written yet), ``first_id``,
``last_id``, ``frames``, each output by short name (``mean`` with ``errors`` = ``sem``), the
input's axis when it has one, and ``state/<key>``: the reducer's state, from which partial
results of several nodes are merged (``shmpipe.reduce.merge``).

Every dataset may grow in every dimension: a map on a learned grid knows its shape only when
it is finished.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from shmpipe.api.sink import ReducedRecord, ReducerInfo

COLUMNS = ("window", "first_id", "last_id", "frames")


def needs_creating(entry: h5py.Group, info: ReducerInfo) -> bool:
    """Whether the reducer's group is still to be made (outside SWMR mode)."""
    return f"reducers/{info.name}" not in entry


def create(entry: h5py.Group, info: ReducerInfo) -> h5py.Group:
    """The reducer's NXdata group in ``entry``, its columns empty."""
    parent = entry.require_group("reducers")
    parent.attrs["NX_class"] = "NXcollection"
    g = parent.create_group(info.name)
    g.attrs["NX_class"] = "NXdata"
    g.attrs["reducer"] = info.kind
    g.attrs["input"] = info.input
    g.attrs["every"] = info.every
    first = info.outputs[0]
    g.attrs["signal"] = first.name.rpartition(".")[2]
    for name in COLUMNS:
        g.create_dataset(name, (0,), np.int64, maxshape=(None,), chunks=(64,), fillvalue=-1)
    g.create_group("state").attrs["NX_class"] = "NXcollection"
    return g


def _put(g: h5py.Group, name: str, row: int, value: np.ndarray) -> h5py.Dataset:
    value = np.asarray(value)
    ds = g.get(name)
    if ds is None:
        ds = g.create_dataset(
            name,
            (row + 1, *value.shape),
            dtype=value.dtype,
            maxshape=(None,) * (value.ndim + 1),
            chunks=(1, *(max(1, n) for n in value.shape)),
        )
    inner = (max(a, b) for a, b in zip(ds.shape[1:], value.shape, strict=True))
    want = (max(ds.shape[0], row + 1), *inner)
    if want != ds.shape:
        ds.resize(want)
    ds[(row, *(slice(0, n) for n in value.shape))] = value
    return ds


def new_arrays(g: h5py.Group, result: ReducedRecord) -> list[str]:
    """Datasets a result needs that the group lacks (made outside SWMR mode)."""
    short = [n.rpartition(".")[2] for n in result.arrays]
    missing = [n for n in short if n not in g]
    missing += [f"state/{k}" for k in result.state if f"state/{k}" not in g]
    if result.axis is not None and "axis" not in g:
        missing.append("axis")
    return missing


def write(g: h5py.Group, info: ReducerInfo, result: ReducedRecord) -> None:
    """Store ``result`` at its window's row (its datasets exist: ``new_arrays``)."""
    row = result.window
    for name in COLUMNS:
        ds = g[name]
        if ds.shape[0] <= row:
            ds.resize((row + 1,))
    g["window"][row] = result.window
    g["first_id"][row] = result.first_id
    g["last_id"][row] = result.last_id
    g["frames"][row] = result.frames
    specs = {s.name: s for s in info.outputs}
    for qualified, value in result.arrays.items():
        ds = _put(g, qualified.rpartition(".")[2], row, value)
        spec = specs.get(qualified)
        if spec is not None and spec.unit and "units" not in ds.attrs:
            ds.attrs["units"] = spec.unit
    for key, value in result.state.items():
        _put(g["state"], key, row, value)
    if result.axis is not None:
        _put(g, "axis", 0, result.axis)
        g.attrs["axes"] = [".", "axis"] if result.axis.ndim == 1 else ["."]
        if info.input_axis:
            g["axis"].attrs["long_name"] = info.input_axis


def make_datasets(g: h5py.Group, info: ReducerInfo, result: ReducedRecord) -> None:
    """Create the datasets ``new_arrays`` names (outside SWMR mode), row 0 empty, and
    NeXus's ``<output>_errors`` links to the outputs' declared errors (``mean_errors``)."""
    for name in new_arrays(g, result):
        if name == "axis":
            value = result.axis
        elif name.startswith("state/"):
            value = result.state[name[len("state/") :]]
        else:
            value = next(v for q, v in result.arrays.items() if q.rpartition(".")[2] == name)
        _put(g, name, 0, np.zeros_like(np.asarray(value)))
    for s in info.outputs:
        short, errors = s.name.rpartition(".")[2], (s.errors or "").rpartition(".")[2]
        if errors and short in g and errors in g and f"{short}_errors" not in g:
            g[f"{short}_errors"] = h5py.SoftLink(g[errors].name)


def read(g: h5py.Group) -> dict[str, Any]:
    """The written rows of a reducer's group: columns, outputs, ``state`` (a dict), ``attrs``."""
    window = g["window"][:]
    rows = np.nonzero(window >= 0)[0]
    out: dict[str, Any] = {}
    for name, ds in g.items():
        if isinstance(ds, h5py.Dataset):
            out[name] = ds[0] if name == "axis" else ds[...][rows]
    out["state"] = {k: ds[...][rows] for k, ds in g["state"].items()}
    out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
    return out
