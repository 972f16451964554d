"""Merging reducer results of several nodes (or runs) into the result of all their frames.

With an ASAPO consumer group split over nodes, each node's HDF5 file holds, per window, its
partial result: the state of the frames it saw and how many. The reducer's own ``merge``
combines the states window by window; ``finish`` gives the result of the whole stream, equal
to what one node would have computed from every frame::

    >>> from shmpipe.reduce.merge import merge_files
    >>> r = merge_files(["out_scan_0001_node-a.h5", "out_scan_0001_node-b.h5"],
    ...                 "scan_0001", "avg")                      # doctest: +SKIP
    >>> r.frames, r.arrays["avg.mean"]                           # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import reduce

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.reducer import Reducer
from shmpipe.api.registry import resolve
from shmpipe.config.schema import build_dataclass
from shmpipe.plugins.sinks import hdf5_reduced
from shmpipe.plugins.sinks.swmr import open_read


@dataclass
class Merged:
    """The merged result of one reducer in one stream."""

    reducer: str
    windows: list[int]
    first_id: np.ndarray
    last_id: np.ndarray
    frames: np.ndarray
    """Frames per window, summed over the parts."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """Each output (``avg.mean``) stacked over the windows."""
    parts: int = 0


def reducer_from_file(path: str, stream: str, name: str) -> Reducer:
    """The reducer ``name`` as configured by the run that wrote ``path``."""
    with open_read(path) as f:
        shaping = json.loads(f.attrs["result_config"])
        e = f[stream]
        g = e["reducers"][name]
        kind = g.attrs["reducer"]
        kind = kind.decode() if isinstance(kind, bytes) else kind
        prefix = f"reducers.{name}."
        table = {k[len(prefix) :]: v for k, v in shaping.items() if k.startswith(prefix)}
        table.pop("kind", None)
        ds = e[table["input"]]
        unit = ds.attrs.get("units", "")
        spec = ArraySpec(
            table["input"],
            ds.shape[1:],
            ds.dtype.str,
            unit.decode() if isinstance(unit, bytes) else unit,
        )
    cls = resolve("shmpipe.reducers", kind, Reducer)
    params = build_dataclass(cls.Params, table, prefix.rstrip("."), path)
    return cls(name, params, spec)


def merge_files(paths: list[str], stream: str, name: str) -> Merged:
    """Merge reducer ``name``'s results of ``stream`` in every file of ``paths`` (those
    without the stream or the reducer are skipped: a node that got none of its frames)."""
    reducer, rows = None, []
    for path in paths:
        with open_read(path) as f:
            if stream not in f or f"reducers/{name}" not in f[stream]:
                continue
            rows.append(hdf5_reduced.read(f[stream]["reducers"][name]))
        reducer = reducer or reducer_from_file(path, stream, name)
    if reducer is None:
        raise ValueError(f"no file of {paths} holds reducer {name!r} for stream {stream!r}")
    windows = sorted({int(w) for part in rows for w in part["window"]})
    out = Merged(name, windows, np.zeros(len(windows), np.int64), np.zeros(len(windows), np.int64),
                 np.zeros(len(windows), np.int64), parts=len(rows))  # fmt: skip
    stacked: dict[str, list[np.ndarray]] = {}
    for i, w in enumerate(windows):
        states, firsts, lasts = [], [], []
        for part in rows:
            hit = np.nonzero(part["window"] == w)[0]
            if not len(hit):
                continue
            j = int(hit[0])
            # A state array stored larger than this window's (one that grew, in another
            # window) holds what its state says is valid (a map's "n" points) and zeros.
            states.append({k: v[j] for k, v in part["state"].items()})
            firsts.append(int(part["first_id"][j]))
            lasts.append(int(part["last_id"][j]))
            out.frames[i] += int(part["frames"][j])
        out.first_id[i], out.last_id[i] = min(firsts), max(lasts)
        for key, value in reducer.finish(reduce(reducer.merge, states)).items():
            stacked.setdefault(f"{name}.{key}", []).append(np.asarray(value))
    out.arrays = {k: np.stack(v) if _same_shapes(v) else v for k, v in stacked.items()}
    return out


def _same_shapes(arrays: list[np.ndarray]) -> bool:
    return len({a.shape for a in arrays}) == 1
