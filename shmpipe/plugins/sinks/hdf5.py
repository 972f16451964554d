"""HDF5Sink: one file per stream, one dataset per kernel output, lineage and configuration.

Layout of a file (``output`` with ``{stream}`` gives one file per stream)::

    /<stream>/                       attrs: rows (committed), finished, next_stream
        message_id   (n,) int64      the input's id in its stream
        name         (n,) str        the input's name
        timestamp    (n,) float64    when the source produced it (Unix seconds)
        published    (n,) float64    when it was written here
        attempt      (n,) int32      0 unless a worker died holding it
        <kernel>.<output>  (n, ...)  one dataset per kernel output
        errors/      message_id, name, kernel, error, traceback, quarantined
    file attrs: run_name, config (TOML), config_hash, chain, shmpipe_version

Rows are written straight from the result slot. ``rows`` advances only on commit, and a file
reopened after a crash is cut back to it, so rows that were never acknowledged vanish and come
back with the redelivery. A message id already present is skipped (idempotent sink).
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from shmpipe.api.sink import ErrorRecord, Record, RunInfo, Sink

_STR = h5py.string_dtype()
_LINEAGE = (
    ("message_id", np.int64),
    ("timestamp", np.float64),
    ("published", np.float64),
    ("attempt", np.int32),
)
_ERRORS = (
    ("message_id", np.int64),
    ("name", _STR),
    ("kernel", _STR),
    ("error", _STR),
    ("traceback", _STR),
    ("quarantined", np.bool_),
)


CHUNK_BYTES = 256 * 1024


class IdSet:
    """Message ids seen, as sorted disjoint runs ``[lo, hi]``.

    Ids arrive mostly in order, so a long stream costs a few runs instead of one set entry
    per frame: the sink's memory stays flat however many frames a run publishes.
    """

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []
        for i in sorted(set(int(i) for i in ids)):
            self.add(i)

    def __contains__(self, i: int) -> bool:
        k = bisect_right(self.lo, i) - 1
        return k >= 0 and i <= self.hi[k]

    def add(self, i: int) -> None:
        """Add ``i``, joining it to the runs beside it."""
        lo, hi = self.lo, self.hi
        k = bisect_right(lo, i) - 1
        if k >= 0 and i <= hi[k]:
            return
        joins_left = k >= 0 and hi[k] == i - 1
        joins_right = k + 1 < len(lo) and lo[k + 1] == i + 1
        if joins_left and joins_right:
            hi[k] = hi[k + 1]
            del lo[k + 1], hi[k + 1]
        elif joins_left:
            hi[k] = i
        elif joins_right:
            lo[k + 1] = i
        else:
            lo.insert(k + 1, i)
            hi.insert(k + 1, i)

    @property
    def runs(self) -> int:
        """How many runs of consecutive ids are stored."""
        return len(self.lo)


def _chunk_rows(spec) -> int:
    """Rows per chunk of an output dataset: one row of an image, many of a scalar.

    A chunk per row of a tiny output (a digest, a sum) makes the file's chunk index, and
    the library's memory with it, grow with every frame; about 256 KiB a chunk stays well
    inside h5py's default chunk cache (1 MiB) while rows are appended one at a time.
    """
    row = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    return int(max(1, min(1024, CHUNK_BYTES // max(1, row))))


@dataclass
class HDF5Params:
    output: str = "shmpipe_{stream}.h5"
    """Output path; ``{stream}`` and ``{run}`` are replaced. Without ``{stream}``, every
    stream is a group of the one file."""
    outputs: list[str] | None = None
    """Kernel outputs to store (``kernel.output``); default all."""
    compression: str = ""
    """HDF5 filter for the output datasets: "", "gzip", "lzf" (or any h5py name)."""

    def validate(self) -> None:
        if not self.output:
            raise ValueError("output must name a file")


class _StreamGroup:
    """The datasets of one stream, appended row by row, with a committed row count."""

    def __init__(self, group: h5py.Group, specs, compression: str | None) -> None:
        self.g = group
        self.rows = int(group.attrs.get("rows", 0))
        new = "message_id" not in group
        for name, dt in _LINEAGE + (("name", _STR),):
            if new:
                group.create_dataset(name, (0,), dtype=dt, maxshape=(None,), chunks=(1024,))
        for s in specs:
            if s.name not in group:
                group.create_dataset(
                    s.name,
                    (0, *s.shape),
                    dtype=s.dtype,
                    maxshape=(None, *s.shape),
                    chunks=(_chunk_rows(s), *s.shape),
                    compression=compression or None,
                )
        self.specs = specs
        self._truncate(self.rows)
        self.seen = IdSet(group["message_id"][: self.rows].tolist())
        self.pending: list[Record] = []
        self.pending_names: list[str] = []
        eg = group.require_group("errors")
        self.error_rows = int(eg.attrs.get("rows", 0))
        for name, dt in _ERRORS:
            if name not in eg:
                eg.create_dataset(name, (0,), dtype=dt, maxshape=(None,), chunks=(256,))
        self.errors = eg
        for name, _ in _ERRORS:
            # Error rows beyond the committed count were never acknowledged either.
            if eg[name].shape[0] != self.error_rows:
                eg[name].resize(self.error_rows, axis=0)
        self.error_ids = IdSet(eg["message_id"][: self.error_rows].tolist())

    def _truncate(self, n: int) -> None:
        # Rows beyond the committed count were never acknowledged: drop them.
        for name in [n for n, _ in _LINEAGE] + ["name"] + [s.name for s in self.specs]:
            if self.g[name].shape[0] != n:
                self.g[name].resize(n, axis=0)

    def append(self, record: Record, names: list[str]) -> None:
        """Queue a row; it is written with the others of the batch at ``commit``.

        The record's arrays are views on its result slot, which the publisher frees only after
        ``commit`` returns, so they are kept as views until then: one slab write per dataset
        and batch instead of a resize and a write per dataset and row.
        """
        self.pending.append(record)
        self.pending_names = names
        self.seen.add(record.message_id)

    def _write_pending(self) -> None:
        rows = self.pending
        if not rows:
            return
        n, k = self.g["message_id"].shape[0], len(rows)
        now = time.time()
        columns = {
            "message_id": np.array([r.message_id for r in rows], dtype=np.int64),
            "timestamp": np.array([r.timestamp for r in rows], dtype=np.float64),
            "published": np.full(k, now, dtype=np.float64),
            "attempt": np.array([r.attempt for r in rows], dtype=np.int32),
            "name": np.array([r.name for r in rows], dtype=object),
        }
        for name in self.pending_names:
            columns[name] = np.stack([r.arrays[name] for r in rows])
        for name, values in columns.items():
            ds = self.g[name]
            ds.resize(n + k, axis=0)
            ds[n : n + k] = values
        self.pending = []

    def append_error(self, e: ErrorRecord) -> None:
        n = self.errors["message_id"].shape[0]
        for name, _ in _ERRORS:
            self.errors[name].resize(n + 1, axis=0)
        for name, value in (
            ("message_id", e.message_id),
            ("name", e.name),
            ("kernel", e.kernel),
            ("error", e.error),
            ("traceback", e.traceback),
            ("quarantined", e.quarantined),
        ):
            self.errors[name][n] = value
        self.error_ids.add(e.message_id)

    def commit(self) -> None:
        self._write_pending()
        self.g.attrs["rows"] = self.g["message_id"].shape[0]
        self.errors.attrs["rows"] = self.errors["message_id"].shape[0]


class HDF5Sink(Sink):
    """``[[sinks]] kind = "hdf5"``."""

    Params = HDF5Params

    def __init__(self, params: HDF5Params) -> None:
        super().__init__(params)
        self._files: dict[str, h5py.File] = {}
        self._groups: dict[str, _StreamGroup] = {}
        self.paths: list[str] = []

    def check(self) -> None:
        problem = output_path_problem(self.params.output)
        if problem:
            raise ValueError(f"sinks: hdf5 output {problem}")

    def open(self, run: RunInfo) -> None:
        self.run = run
        wanted = self.params.outputs
        known = {s.name for s in run.outputs}
        if wanted:
            bad = [w for w in wanted if w not in known]
            if bad:
                raise ValueError(
                    f"sinks: outputs {bad} are not written by the chain ({sorted(known)})"
                )
        self.specs = [s for s in run.outputs if not wanted or s.name in wanted]
        self.names = [s.name for s in self.specs]

    def written(self, run_name: str, streams: list[str]) -> list[str]:
        paths = [self.params.output.format(stream=s, run=run_name) for s in streams]
        return [p for i, p in enumerate(paths) if p not in paths[:i] and os.path.isfile(p)]

    def _path(self, stream: str) -> str:
        return self.params.output.format(stream=stream, run=self.run.run_name)

    def _group(self, stream: str) -> _StreamGroup:
        g = self._groups.get(stream)
        if g is None:
            path = self._path(stream)
            f = self._files.get(path)
            if f is None:
                f = self._files[path] = h5py.File(path, "a")
                f.attrs["run_name"] = self.run.run_name
                f.attrs["config"] = self.run.config_toml
                f.attrs["config_hash"] = self.run.config_hash
                f.attrs["chain"] = ",".join(self.run.chain)
                self.paths.append(path)
            g = self._groups[stream] = _StreamGroup(
                f.require_group(stream), self.specs, self.params.compression
            )
        return g

    def write(self, record: Record) -> None:
        g = self._group(record.stream)
        if record.message_id not in g.seen:
            g.append(record, self.names)

    def write_error(self, error: ErrorRecord) -> None:
        g = self._group(error.stream)
        if error.message_id not in g.error_ids:
            g.append_error(error)

    def stream_finished(self, stream: str, next_stream: str, last_id: int = 0) -> None:
        g = self._group(stream)
        g.g.attrs["finished"] = True
        g.g.attrs["next_stream"] = next_stream

    def commit(self) -> None:
        for g in self._groups.values():
            g.commit()
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        self.commit()
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._groups.clear()


def output_path_problem(pattern: str) -> str:
    """Why HDF5 files cannot be written at ``pattern`` (``{stream}``, ``{run}`` allowed), or "".

    The directory must exist and be writable; a file already there (for a pattern: any file
    it matches) must be a writable HDF5 file, which the run appends to.
    """
    names = {"stream": "*", "run": "*"}
    try:
        glob_pattern = pattern.format(**names)
    except (KeyError, IndexError, ValueError) as exc:
        return f"{pattern!r}: only {{stream}} and {{run}} may be filled in ({exc!r})"
    d = os.path.dirname(os.path.abspath(glob_pattern)) or "/"
    if "*" in d:
        d = d.split("*")[0].rstrip("/") or "/"
    if not os.path.isdir(d):
        return f"directory {d} does not exist" + (" (it is a file)" if os.path.exists(d) else "")
    try:
        # Creating a file is the only sure test (permission bits do not bind root; /proc,
        # read-only mounts and full disks refuse anyway).
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as exc:
        return f"directory {d} is not writable ({exc.strerror})"
    for path in sorted(glob.glob(glob_pattern)) if "*" in glob_pattern else [glob_pattern]:
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            return f"{path} is a directory, not a file (name a file, e.g. {path}/out.h5)"
        if not os.access(path, os.W_OK):
            return f"{path} exists and is not writable"
        if os.path.getsize(path) and not h5py.is_hdf5(path):
            return f"{path} exists and is not an HDF5 file (the run would append to it)"
    return ""


def read_stream(path: str, stream: str) -> dict[str, Any]:
    """Read one stream's committed rows back as numpy arrays (for tests and notebooks)."""
    with h5py.File(path, "r") as f:
        g = f[stream]
        n = int(g.attrs.get("rows", 0))
        out: dict[str, Any] = {k: g[k][:n] for k in g if isinstance(g[k], h5py.Dataset)}
        eg = g["errors"]
        m = int(eg.attrs.get("rows", 0))
        out["errors"] = {k: eg[k][:m] for k in eg}
        out["attrs"] = dict(g.attrs)
        return out
