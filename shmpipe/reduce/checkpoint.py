"""The reducers' checkpoint: their state and the message ids it includes, in one file.

Written whole to a temporary file and renamed over the last one (``os.replace`` is atomic), so
whenever a process dies the checkpoint on disk is one complete commit's. The publisher writes
it after the sinks committed and before it acknowledges, so every acknowledged frame is in it,
and every frame in it is known by id: a redelivered one is not added again.

Layout (``numpy.savez``): ``meta``, a JSON document (identity, ids, windows; each state array
named by key), and the arrays ``a0``, ``a1``, ... it names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shmpipe.reduce.windows import StreamWindows, Window, id_set, runs_of

VERSION = 1


@dataclass
class Checkpoint:
    """Everything the reducers of a run hold, as written to and read from the file."""

    run_uid: str = ""
    result_hash: str = ""
    covered: dict[str, Any] = field(default_factory=dict)
    """Stream -> ``IdSet`` of the ids accounted for (added, or error records)."""
    finished: set[str] = field(default_factory=set)
    windows: dict[tuple[str, str], StreamWindows] = field(default_factory=dict)
    """(reducer, stream) -> its windows."""


def save(path: str, cp: Checkpoint) -> None:
    """Write ``cp`` to ``path`` atomically."""
    arrays: dict[str, np.ndarray] = {}

    def store(a: np.ndarray) -> str:
        key = f"a{len(arrays)}"
        arrays[key] = a
        return key

    reducers: dict[str, dict[str, Any]] = {}
    for (name, stream), sw in cp.windows.items():
        reducers.setdefault(name, {})[stream] = {
            "written": runs_of(sw.written),
            "open": {
                str(k): {
                    "ids": runs_of(w.ids),
                    "skipped": w.skipped,
                    "state": {key: store(a) for key, a in w.state.items()},
                }
                for k, w in sw.open.items()
            },
        }
    meta = {
        "version": VERSION,
        "run_uid": cp.run_uid,
        "result_hash": cp.result_hash,
        "streams": {
            s: {"covered": runs_of(ids), "finished": s in cp.finished}
            for s, ids in cp.covered.items()
        },
        "reducers": reducers,
    }
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    os.replace(tmp, path)


def identity(path: str) -> tuple[str, str]:
    """``(run_uid, result_hash)`` of the checkpoint at ``path`` (``ValueError`` if unreadable)."""
    meta = _meta(path)
    return meta.get("run_uid", ""), meta.get("result_hash", "")


def _meta(path: str) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(z["meta"].tobytes())
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a reducer checkpoint ({exc})") from None


def load(path: str) -> Checkpoint:
    """Read a checkpoint written by ``save``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a reducer checkpoint ({exc})") from None
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')}, not {VERSION}")
    cp = Checkpoint(meta["run_uid"], meta["result_hash"])
    for s, info in meta["streams"].items():
        cp.covered[s] = id_set(info["covered"])
        if info["finished"]:
            cp.finished.add(s)
    for name, streams in meta["reducers"].items():
        for stream, info in streams.items():
            sw = StreamWindows(written=id_set(info["written"]))
            for k, w in info["open"].items():
                state = {key: np.array(arrays[ref]) for key, ref in w["state"].items()}
                sw.open[int(k)] = Window(state, id_set(w["ids"]), int(w["skipped"]))
            cp.windows[(name, stream)] = sw
    return cp
