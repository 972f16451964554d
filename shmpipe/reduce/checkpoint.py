"""The reducers' checkpoint: their state and the message ids it includes.

Two files take turns (``PATH`` and ``PATH.1``): each commit overwrites the older one in place
and ends with a trailer repeating its generation, so whenever a process dies one of the two is
a complete commit's, and the newer complete one is what a replacement reads. (Writing a new
file and renaming it over the last costs a file creation and a rename per commit, which was
most of a reducer's cost per frame in the publisher.) The publisher writes it after the sinks
committed and before it acknowledges, so every acknowledged frame is in it, and every frame in
it is known by id: a redelivered one is not added again.

Layout: ``SHMPIPE-REDUCERS\n``, the generation and the length of a JSON document (8 bytes
each, little-endian), the document (identity, ids, windows; each state array by dtype, shape
and offset), the arrays' bytes, then the generation and the length of all before it. No
pickle: nothing in a checkpoint is ever executed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shmpipe.reduce.windows import StreamWindows, Window, id_set, runs_of

VERSION = 1
MAGIC = b"SHMPIPE-REDUCERS\n"


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
    last_stream: str = ""
    """The stream of the latest frame added (what a live view shows)."""
    last_written: dict[str, tuple[str, int, Window]] = field(default_factory=dict)
    """Reducer -> (stream, window, window) of the latest result written (for the Tango
    device's latest window and a view between streams)."""


def files(path: str) -> tuple[str, str]:
    """The two files a checkpoint takes turns in."""
    return path, f"{path}.1"


def exists(path: str) -> bool:
    return any(os.path.exists(p) for p in files(path))


def remove(path: str) -> None:
    for p in files(path):
        if os.path.exists(p):
            os.unlink(p)


class Writer:
    """Writes the checkpoints of one publisher, into the older of the two files each time."""

    def __init__(self, path: str) -> None:
        self.path = path
        found = [_generation(p) for p in files(path)]
        self.generation = max(found) + 1
        self._fds: list[int] = []

    def save(self, cp: Checkpoint) -> None:
        """Write ``cp`` over the older file (the newer stays whole until this one is)."""
        if not self._fds:
            self._fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o644) for p in files(self.path)]
        data = encode(cp, self.generation)
        fd = self._fds[self.generation % 2]
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        self.generation += 1

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def encode(cp: Checkpoint, generation: int) -> bytes:
    """``cp`` as the bytes of one checkpoint file."""
    arrays: list[np.ndarray] = []
    offset = 0

    def store(a: np.ndarray) -> dict[str, Any]:
        nonlocal offset
        a = np.ascontiguousarray(a)
        ref = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        arrays.append(a)
        offset += a.nbytes
        return ref

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
    last = {
        name: {"stream": st, "window": k, "ids": runs_of(w.ids), "skipped": w.skipped,
               "state": {key: store(a) for key, a in w.state.items()}}
        for name, (st, k, w) in cp.last_written.items()
    }  # fmt: skip
    meta = {
        "version": VERSION,
        "last_stream": cp.last_stream,
        "last_written": last,
        "run_uid": cp.run_uid,
        "result_hash": cp.result_hash,
        "streams": {
            s: {"covered": runs_of(ids), "finished": s in cp.finished}
            for s, ids in cp.covered.items()
        },
        "reducers": reducers,
        "bytes": offset,
    }
    doc = json.dumps(meta).encode()
    gen = generation.to_bytes(8, "little")
    body = b"".join([MAGIC, gen, len(doc).to_bytes(8, "little"), doc, *map(memoryview, arrays)])
    return body + gen + len(body).to_bytes(8, "little")


def identity(path: str) -> tuple[str, str]:
    """``(run_uid, result_hash)`` of the checkpoint at ``path`` (``ValueError`` if unreadable)."""
    meta = _read(path)[0]
    return meta.get("run_uid", ""), meta.get("result_hash", "")


def _parse(raw: bytes) -> tuple[int, dict[str, Any], bytes] | None:
    """Generation, document and arrays of one file's bytes; None unless complete."""
    head = len(MAGIC) + 16
    if len(raw) < head + 16 or not raw.startswith(MAGIC):
        return None
    gen = int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 8], "little")
    n = int.from_bytes(raw[len(MAGIC) + 8 : head], "little")
    try:
        meta = json.loads(raw[head : head + n])
        end = head + n + int(meta["bytes"])
    except (ValueError, KeyError, TypeError):
        return None  # torn inside the document
    trailer = raw[end : end + 16]
    if len(trailer) < 16 or int.from_bytes(trailer[:8], "little") != gen:
        return None
    if int.from_bytes(trailer[8:], "little") != end:
        return None
    return gen, meta, raw[head + n : end]


def _generation(path: str) -> int:
    """The generation of the complete checkpoint in one file; -1 for none."""
    try:
        with open(path, "rb") as f:
            parsed = _parse(f.read())
    except OSError:
        return -1
    return -1 if parsed is None else parsed[0]


def _read(path: str) -> tuple[dict[str, Any], bytes]:
    """The document and the arrays' bytes of the newer complete file of a checkpoint."""
    best = None
    for p in files(path):
        try:
            with open(p, "rb") as f:
                parsed = _parse(f.read())
        except OSError:
            continue
        if parsed is not None and (best is None or parsed[0] > best[0]):
            best = parsed
    if best is None:
        raise ValueError(f"{path} holds no complete reducer checkpoint")
    return best[1], best[2]


def load(path: str) -> Checkpoint:
    """Read the newer complete checkpoint of the two files (``ValueError``: none is)."""
    meta, data = _read(path)

    def array(ref: dict[str, Any]) -> np.ndarray:
        dt = np.dtype(ref["dtype"])
        count = int(np.prod(ref["shape"], dtype=np.int64))
        a = np.frombuffer(data, dt, count=count, offset=ref["offset"])
        return a.reshape(ref["shape"]).copy()

    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {meta.get('version')}, not {VERSION}")
    cp = Checkpoint(meta["run_uid"], meta["result_hash"])
    for s, info in meta["streams"].items():
        cp.covered[s] = id_set(info["covered"])
        if info["finished"]:
            cp.finished.add(s)
    cp.last_stream = meta.get("last_stream", "")
    for name, w in meta.get("last_written", {}).items():
        state = {key: array(ref) for key, ref in w["state"].items()}
        cp.last_written[name] = (w["stream"], int(w["window"]), Window(state, id_set(w["ids"])))
    for name, streams in meta["reducers"].items():
        for stream, info in streams.items():
            sw = StreamWindows(written=id_set(info["written"]))
            for k, w in info["open"].items():
                state = {key: array(ref) for key, ref in w["state"].items()}
                sw.open[int(k)] = Window(state, id_set(w["ids"]), int(w["skipped"]))
            cp.windows[(name, stream)] = sw
    return cp
