"""Reading results files written by the HDF5 sink (while they are written, too: SWMR)."""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sinks.hdf5_reduced import COLUMNS
from shmpipe.plugins.sinks.nexus import ERRORS, LINEAGE, RUNS, is_axis_index
from shmpipe.plugins.sinks.swmr import open_read
from shmpipe.results.model import Results

_ROW_LINEAGE = [n for n, _ in LINEAGE if n != "message_id"]


def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, np.ndarray) and (v.dtype == object or v.dtype.kind == "S"):
        out = np.empty(v.shape, dtype=object)
        out.ravel()[:] = [_text(x) for x in v.ravel()]
        return out
    return v


def _entries(f: h5py.File) -> list[str]:
    return [n for n, g in f.items() if isinstance(g, h5py.Group) and "rows" in g]


def _pick(f: h5py.File, path: str, stream: str | None) -> h5py.Group:
    names = _entries(f)
    if stream is None:
        if len(names) != 1:
            raise ValueError(f"{path} holds streams {names}: name one (stream=...)")
        stream = names[0]
    if stream not in names:
        raise KeyError(f"{path} holds no stream {stream!r}; it holds {names}")
    return f[stream]


def _refreshed(e: h5py.Group, name: str) -> h5py.Dataset:
    ds = e[name]
    if e.file.swmr_mode:
        ds.refresh()  # a SWMR reader sees what the writer flushed since the file was opened
    return ds


def _runs(e: h5py.Group) -> list[dict[str, Any]]:
    if "runs" not in e:
        return []
    g = e["runs"]
    cols = {n: _text(g[n][:]) for n, _ in RUNS if n in g}
    count = len(next(iter(cols.values()), []))
    return [
        {n: (v[i].item() if hasattr(v[i], "item") else v[i]) for n, v in cols.items()}
        for i in range(count)
    ]


def _axis(e: h5py.Group, name: str, n: int) -> np.ndarray:
    """The axis once when every row used the same one, else one row per message."""
    versions = _refreshed(e, f"{name}_versions")[:]
    index = _refreshed(e, f"{name}_version")[:n]
    if len(versions) == 0:
        return e[name][...]
    if len(index) == 0 or np.all(index == index[0]):
        return versions[index[0] if len(index) else 0]
    return versions[index]


def load(path: str, stream: str | None = None, *, text: bool = True) -> Results:
    """Load one stream of a results file: outputs, axes, units and lineage as numpy arrays.

    Parameters
    ----------
    path : str
        A file written by the HDF5 sink (finished, still being written, or left by a killed
        run: only committed rows are read).
    stream : str, optional
        The stream (entry) to read; may be omitted when the file holds one.
    text : bool
        Decode string columns (names, errors) to ``str``; False keeps h5py's ``bytes``.
    """
    dec = _text if text else (lambda v: v)
    with open_read(path) as f:
        e = _pick(f, path, stream)
        n = int(_refreshed(e, "rows")[0])
        axes_names = {n_[: -len("_versions")] for n_ in e if n_.endswith("_versions")}
        out = Results(origin=path, stream=e.name.lstrip("/"), message_id=np.empty(0, np.int64))
        out.message_id = _refreshed(e, "message_id")[:n]
        out.lineage = {c: dec(_refreshed(e, c)[:n]) for c in _ROW_LINEAGE}
        for name in list(e):
            if "." not in name or is_axis_index(e, name):
                continue
            # One handle per dataset: refreshing a second handle of a dataset that is open
            # already fails in HDF5 ("can't insert duplicate key").
            ds = _refreshed(e, name)
            unit = _declared_unit(ds)
            if unit:
                out.units[name] = _text(unit)
            for attr, table in (("axis_output", out.axis_of), ("errors_output", out.errors_of)):
                if attr in ds.attrs and _text(ds.attrs[attr]) in e:
                    table[name] = _text(ds.attrs[attr])
            if name in axes_names:
                out.axes[name] = _axis(e, name, n)
            else:
                out.arrays[name] = ds[:n]
        eg = e["errors"]
        m = int(_refreshed(eg, "rows")[0])
        out.errors = {c: dec(_refreshed(eg, c)[:m]) for c, _ in ERRORS}
        out.runs = _runs(e)
        out.result_hash = _text(f.attrs.get("result_hash", ""))
        out.attrs = {k: _text(v) for k, v in e.attrs.items() if k in ("finished", "next_stream")}
        return out


__all__ = ["describe_file", "load", "read_stream"]


def describe_file(path: str) -> dict[str, Any]:
    """What a results file holds: per stream the rows, errors, ids, outputs and runs."""
    with open_read(path) as f:
        doc: dict[str, Any] = {
            "origin": path,
            "creator": _text(f.attrs.get("creator", "")),
            "result_hash": _text(f.attrs.get("result_hash", "")),
            "result_config": json.loads(_text(f.attrs.get("result_config", "{}"))),
            "default": _text(f.attrs.get("default", "")),
            "streams": [],
        }
        for name in _entries(f):
            e = f[name]
            n = int(_refreshed(e, "rows")[0])
            ids = _refreshed(e, "message_id")[:n]
            eg = e["errors"]
            m = int(_refreshed(eg, "rows")[0])
            outputs = [
                k
                for k, v in e.items()
                if isinstance(v, h5py.Dataset) and "." in k and not is_axis_index(e, k)
            ]
            config = ""
            if "process/configuration/data" in e:
                config = _text(e["process/configuration/data"][()])
            doc["streams"].append(
                {
                    "stream": name,
                    "rows": n,
                    "first_id": int(ids.min()) if n else None,
                    "last_id": int(ids.max()) if n else None,
                    "unique_ids": int(len(np.unique(ids))),
                    "errors": m,
                    "quarantined": int(np.sum(eg["quarantined"][:m])) if m else 0,
                    "finished": bool(e.attrs.get("finished", False)),
                    "next_stream": _text(e.attrs.get("next_stream", "")),
                    "default": _text(e.attrs.get("default", "")),
                    "outputs": {
                        k: {
                            "shape": list(e[k].shape if f"{k}_versions" in e else e[k].shape[1:]),
                            "units": _declared_unit(e[k]),
                        }
                        for k in outputs
                    },
                    "runs": _runs(e),
                    "configuration": config,
                    "reducers": _reducers(e),
                }
            )
        return doc


def _reducers(e: h5py.Group) -> list[dict[str, Any]]:
    """Each reducer's results in a stream: kind, input, windows, frames, ids, outputs."""
    out = []
    for name, g in e["reducers"].items() if "reducers" in e else ():
        window = _refreshed(g, "window")[:]
        rows = np.nonzero(window >= 0)[0]
        first, last = _refreshed(g, "first_id")[:], _refreshed(g, "last_id")[:]
        outputs = {
            k: {"shape": list(ds.shape[1:]), "units": _declared_unit(ds)}
            for k, ds in g.items()
            if isinstance(ds, h5py.Dataset)
            and k not in COLUMNS
            and k != "axis"
            and not k.endswith("_errors")  # NeXus's links to the uncertainties
        }
        out.append(
            {
                "name": name,
                "kind": _text(g.attrs.get("reducer", "")),
                "input": _text(g.attrs.get("input", "")),
                "every": int(g.attrs.get("every", 0)),
                "windows": len(rows),
                "frames": int(_refreshed(g, "frames")[:][rows].sum()) if len(rows) else 0,
                "first_id": int(first[rows].min()) if len(rows) else None,
                "last_id": int(last[rows].max()) if len(rows) else None,
                "outputs": outputs,
            }
        )
    return out


def _declared_unit(ds: h5py.Dataset) -> str:
    """The unit as the kernel declared it: pyFAI's unit name (``q_nm^-1``, kept beside the
    NeXus ``units`` "1/nm"), else ``units``; "" for none."""
    return _text(ds.attrs.get("pyfai_unit", ds.attrs.get("units", "")))
