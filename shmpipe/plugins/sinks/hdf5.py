"""HDF5Sink: NeXus files written in SWMR mode, one row per message, never mixed across configs.

``output`` with ``{stream}`` gives one file per stream; without it every stream is an entry of
the one file. The layout is described in ``shmpipe.plugins.sinks.nexus`` and docs/results.md.

Crash safety: files are written in SWMR mode. A commit writes the batch's rows and flushes, then
advances the entry's ``rows`` counter and flushes again, so whenever the process dies the file
opens (``h5py.File(path, "r", swmr=True)``, or any reader after a resume) with every committed
row intact; rows beyond ``rows`` were never acknowledged, are cut off when the file is resumed,
and come back with the redelivery. A message id already present is skipped (idempotent sink),
so a ``mode = "resume"`` run that re-reads its source from the start stores each message once.

Re-runs: ``mode = "new"`` (default) refuses an existing file, ``"resume"`` appends when the
result-shaping configuration (``shmpipe.provenance``) is the same, ``"overwrite"`` replaces it;
all three are checked before any process starts.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import json
import os
import tempfile
import time
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import h5py
import numpy as np

from shmpipe.api.params import ParamError
from shmpipe.api.provenance import describe_difference, iso_time, result_hash
from shmpipe.api.sink import ErrorRecord, Record, ReducedRecord, RunInfo, Sink
from shmpipe.plugins.sinks import hdf5_reduced, nexus
from shmpipe.plugins.sinks.swmr import open_read, open_write

CHUNK_BYTES = nexus.CHUNK_BYTES
_chunk_rows = nexus.chunk_rows


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


@dataclass
class HDF5Params:
    output: str = "shmpipe_{stream}.h5"
    """Output path; ``{stream}`` and ``{run}`` are replaced. Without ``{stream}``, every
    stream is an entry of the one file."""
    outputs: list[str] | None = None
    """Kernel outputs to store (``kernel.output``); default all. The axis of a stored output
    is stored with it."""
    compression: str = ""
    """HDF5 filter for the output datasets: "", "gzip", "lzf" (or any h5py name)."""
    mode: Literal["new", "resume", "overwrite"] = "new"
    """An output file that already exists: "new" refuses it, "resume" appends to it when it
    was made with the same result-shaping configuration (kernels and their parameters),
    "overwrite" replaces it. Checked before any process starts."""

    def validate(self) -> None:
        if not self.output:
            raise ParamError("output", "must name a file")
        try:
            self.output.format(stream="s", run="r")
        except (KeyError, IndexError, ValueError) as exc:
            raise ParamError(
                "output", f"{self.output!r}: only {{stream}} and {{run}} may be replaced ({exc})"
            ) from None


class _Entry:
    """The rows of one stream: appended in batches, counted as committed by ``rows``."""

    def __init__(self, e: h5py.Group, specs, axes: set[str]) -> None:
        self.e = e
        self.axes = sorted(axes)
        self.values = [s.name for s in specs if s.name not in axes]
        self.columns = [n for n, _ in nexus.LINEAGE] + self.values
        self.columns += [f"{a}_version" for a in self.axes]
        missing = [c for c in self.columns if c not in e]
        if missing:
            raise ValueError(f"{e.file.filename}: entry {e.name} lacks {missing}")
        self.rows = int(e["rows"][0])
        self.error_rows = int(e["errors/rows"][0])
        # Rows beyond the committed count were never acknowledged: drop them.
        for name in self.columns:
            if e[name].shape[0] != self.rows:
                e[name].resize(self.rows, axis=0)
        for name, _ in nexus.ERRORS:
            if e["errors"][name].shape[0] != self.error_rows:
                e["errors"][name].resize(self.error_rows, axis=0)
        self.seen = IdSet(e["message_id"][: self.rows].tolist())
        self.error_ids = IdSet(e["errors/message_id"][: self.error_rows].tolist())
        self.versions = {a: [v.tobytes() for v in e[f"{a}_versions"][:]] for a in self.axes}
        # Rows written (and error rows) so far, committed or not: where the next batch goes.
        # Counted here rather than read from the datasets' extents, so that a batch written
        # again after a failed attempt lands on the same rows instead of after them.
        self.written = self.rows
        self.errors_written = self.error_rows
        self.pending: list[Record] = []
        self.dirty = False
        self.finished_at: float | None = None  # when this run saw the stream finish
        self.run_row = -1

    def rebind(self, e: h5py.Group) -> None:
        self.e = e

    def append(self, record: Record) -> None:
        """Queue a row; it is written with the others of the batch at ``commit``.

        The record's arrays are views on its result slot, which the publisher frees only after
        ``commit`` returns, so they are kept as views until then: one slab write per dataset
        and batch instead of a resize and a write per dataset and row.
        """
        self.pending.append(record)
        self.seen.add(record.message_id)

    def _version(self, axis: str, values: np.ndarray) -> int:
        """Index of this axis among those stored, storing it when new (stored once)."""
        known = self.versions[axis]
        raw = np.ascontiguousarray(values).tobytes()
        for i in range(len(known) - 1, -1, -1):
            if known[i] == raw:
                return i
        ds = self.e[f"{axis}_versions"]
        i = ds.shape[0]
        ds.resize(i + 1, axis=0)
        ds[i] = values
        if i == 0:
            self.e[axis][...] = values
        known.append(raw)
        return i

    def write_pending(self) -> None:
        rows = self.pending
        if not rows:
            return
        e = self.e
        n, k = self.written, len(rows)
        columns: dict[str, Any] = {
            "message_id": np.array([r.message_id for r in rows], dtype=np.int64),
            "name": np.array(
                [nexus.fit(r.name, nexus.NAME_BYTES) for r in rows], dtype=nexus.LINEAGE[1][1]
            ),
            "timestamp": np.array([r.timestamp for r in rows], dtype=np.float64),
            "published": np.full(k, time.time(), dtype=np.float64),
            "attempt": np.array([r.attempt for r in rows], dtype=np.int32),
        }
        for name in self.values:
            columns[name] = np.stack([r.arrays[name] for r in rows])
        for a in self.axes:
            columns[f"{a}_version"] = np.array(
                [self._version(a, r.arrays[a]) for r in rows], dtype=np.int32
            )
        for name, values in columns.items():
            ds = e[name]
            ds.resize(n + k, axis=0)
            ds[n : n + k] = values
        self.pending = []
        self.written = n + k
        self.dirty = True

    def append_error(self, err: ErrorRecord) -> None:
        g = self.e["errors"]
        n = self.errors_written
        for name, dt in nexus.ERRORS:
            value = getattr(err, name)
            g[name].resize(n + 1, axis=0)
            g[name][n] = nexus.as_text(value, dt) if isinstance(value, str) else value
        self.errors_written = n + 1
        self.error_ids.add(err.message_id)
        self.dirty = True

    def mark_committed(self) -> None:
        """Advance the committed counters to what is written (after a flush of the rows)."""
        if self.dirty:
            self.rows = self.written
            self.error_rows = self.errors_written
            self.e["rows"][0] = self.rows
            self.e["errors/rows"][0] = self.error_rows
            self.dirty = False


@dataclass
class _File:
    path: str
    f: h5py.File
    entries: dict[str, _Entry]


class HDF5Sink(Sink):
    """``[[sinks]] kind = "hdf5"``."""

    Params = HDF5Params

    def __init__(self, params: HDF5Params) -> None:
        super().__init__(params)
        self._files: dict[str, _File] = {}
        self.paths: list[str] = []

    # -- before any process starts ---------------------------------------------------------
    def check(self) -> None:
        problem = output_path_problem(self.params.output)
        if problem:
            raise ValueError(f"sinks: hdf5 output {problem}")

    def _shaped(self, run: RunInfo) -> RunInfo:
        """The run as this sink records it: the selection of outputs shapes a file too."""
        shaping = {**run.result_config, "sink.outputs": sorted(self.params.outputs or ["*"])}
        return dataclasses.replace(run, result_config=shaping, result_hash=result_hash(shaping))

    def existing(self, run_name: str) -> list[str]:
        """Files this sink's ``output`` names that exist already."""
        parts = [glob.escape(p.format(run=run_name)) for p in self.params.output.split("{stream}")]
        return sorted(glob.glob("*".join(parts)))

    def check_rerun(self, run: RunInfo) -> None:
        run = self._shaped(run)
        files = self.existing(run.run_name)
        if not files or self.params.mode == "overwrite":
            return
        if self.params.mode == "new":
            more = f" (and {len(files) - 1} more)" if len(files) > 1 else ""
            raise ValueError(
                f'sinks: {files[0]}{more} exists; mode = "new" never writes into an existing '
                'file: set the sink\'s mode = "resume" to complete it with the same '
                'configuration, mode = "overwrite" to replace it, or choose another output'
            )
        for path in files:
            with open_read(path) as f:
                self._check_resumable(path, f, run)

    def _check_resumable(self, path: str, f: h5py.File, run: RunInfo) -> None:
        if "result_hash" not in f.attrs:
            raise ValueError(
                f"sinks: {path} records no result-shaping configuration (not written by this "
                'shmpipe version): mode = "resume" cannot prove it matches; use "overwrite" '
                "or another output"
            )
        if f.attrs["result_hash"] != run.result_hash:
            old = json.loads(f.attrs["result_config"])
            raise ValueError(
                f'sinks: mode = "resume" refuses {path}: it holds results made with another '
                f"configuration; differing keys: {describe_difference(old, run.result_config)}"
            )

    # -- in the publisher ------------------------------------------------------------------
    def open(self, run: RunInfo) -> None:
        self.run = self._shaped(run)
        wanted = self.params.outputs
        known = {s.name: s for s in run.outputs}
        if wanted:
            bad = [w for w in wanted if w not in known]
            if bad:
                raise ValueError(
                    f"sinks: outputs {bad} are not written by the chain ({sorted(known)})"
                )
            # A profile without its abscissa is not a result anyone can use.
            axes = [known[w].axis for w in wanted if known[w].axis in known]
            wanted = list(wanted) + [a for a in axes if a not in wanted]
        self.specs = [s for s in run.outputs if not wanted or s.name in wanted]
        self.axes = nexus.axis_names(self.specs)

    def written(self, run_name: str, streams: list[str]) -> list[str]:
        paths = [self.params.output.format(stream=s, run=run_name) for s in streams]
        return [
            os.path.abspath(p)
            for i, p in enumerate(paths)
            if p not in paths[:i] and os.path.isfile(p)
        ]

    def stored(self, run: RunInfo, published: dict[str, int]) -> list[str]:
        """``/abs/out.h5: 200 rows stored`` per file, with the rows skipped as already there
        (a ``mode = "resume"`` run onto a file that held them): counted from each entry's
        ``runs`` table, whose row for this run says where its rows begin."""
        streams_of: dict[str, list[str]] = {}
        for stream in published:
            path = self.params.output.format(stream=stream, run=run.run_name)
            streams_of.setdefault(path, []).append(stream)
        lines = []
        for path, streams in streams_of.items():
            if not os.path.isfile(path):
                continue
            with open_read(path) as f:
                new = sum(_rows_stored_by(f, s, run.run_uid) for s in streams)
            skipped = max(0, sum(published[s] for s in streams) - new)
            line = f"{os.path.abspath(path)}: {new} rows stored"
            if skipped:
                line += f", {skipped} skipped (already stored)"
            lines.append(line)
        return lines

    def _path(self, stream: str) -> str:
        return self.params.output.format(stream=stream, run=self.run.run_name)

    def _open_file(self, path: str) -> _File:
        run, mode = self.run, self.params.mode
        f = None
        if os.path.exists(path):
            # Decide on a read-only look: a file that is refused is left as it is.
            with open_read(path) as peek:
                mine = peek.attrs.get("run_uid") == run.run_uid  # this run, restarted
                if not mine and mode == "new":
                    raise ValueError(f'sinks: {path} appeared during the run; mode = "new"')
                if not mine and mode == "resume":
                    self._check_resumable(path, peek, run)
            if mine or mode == "resume":
                f = open_write(path)
                f.attrs["run_uid"] = run.run_uid
        if f is None:
            f = h5py.File(path, "w", libver="latest")
            nexus.set_root(f, run)
        entries = {
            name: _Entry(g, self.specs, self.axes)
            for name, g in f.items()
            if isinstance(g, h5py.Group) and g.attrs.get("NX_class") == "NXentry"
        }
        fs = self._files[path] = _File(path, f, entries)
        self.paths.append(path)
        return fs

    def _entry(self, stream: str) -> _Entry:
        path = self._path(stream)
        fs = self._files.get(path) or self._open_file(path)
        entry = fs.entries.get(stream)
        if entry is None:
            self._outside_swmr(fs)
            g = nexus.create_entry(fs.f, stream, self.specs, self.run, self.params.compression)
            entry = fs.entries[stream] = _Entry(g, self.specs, self.axes)
        if entry.run_row < 0:
            uids = [u.decode() if isinstance(u, bytes) else u for u in entry.e["runs/run_uid"][:]]
            if self.run.run_uid in uids:
                entry.run_row = uids.index(self.run.run_uid)
            else:
                entry.run_row = nexus.record_run(entry.e, self.run, entry.rows)
        if not fs.f.swmr_mode:
            fs.f.swmr_mode = True
        return entry

    def _outside_swmr(self, fs: _File) -> None:
        """Leave SWMR mode: objects are created outside it, where readers never meet them
        half made (write what is queued, reopen; ``_entry`` goes back to SWMR)."""
        if not fs.f.swmr_mode:
            return
        for other in fs.entries.values():
            other.write_pending()
        fs.f.close()
        fs.f = open_write(fs.path)
        for name, other in fs.entries.items():
            other.rebind(fs.f[name])

    def write_reduced(self, result: ReducedRecord) -> None:
        info = next(r for r in self.run.reducers if r.name == result.reducer)
        e = self._entry(result.stream)
        fs = self._files[self._path(result.stream)]
        g = e.e.get(f"reducers/{info.name}")
        if g is None or hdf5_reduced.new_arrays(g, result):
            self._outside_swmr(fs)
            e = fs.entries[result.stream]
            g = e.e.get(f"reducers/{info.name}") or hdf5_reduced.create(e.e, info)
            hdf5_reduced.make_datasets(g, info, result)
            fs.f.swmr_mode = True
        hdf5_reduced.write(g, info, result)
        e.dirty = True

    def write(self, record: Record) -> None:
        e = self._entry(record.stream)
        if record.message_id not in e.seen:
            e.append(record)

    def write_error(self, error: ErrorRecord) -> None:
        e = self._entry(error.stream)
        if error.message_id not in e.error_ids:
            e.append_error(error)

    def stream_finished(self, stream: str, next_stream: str, last_id: int = 0) -> None:
        e = self._entry(stream)
        e.finished_at = time.time()
        e.e.attrs["finished"] = True
        # Fixed-width, kept in the object header: nothing in the global heap (see nexus.text).
        e.e.attrs["next_stream"] = np.bytes_(next_stream.encode())
        e.dirty = True

    def commit(self) -> None:
        entries = [e for fs in self._files.values() for e in fs.entries.values()]
        for e in entries:
            e.write_pending()
        dirty = {id(fs) for fs in self._files.values() if any(e.dirty for e in fs.entries.values())}
        if not dirty:
            return
        # Rows first, then the counters that say they are there: a crash between the two
        # flushes leaves rows beyond the counters, which a resume cuts off.
        for fs in self._files.values():
            if id(fs) in dirty:
                fs.f.flush()
        for e in entries:
            e.mark_committed()
        for fs in self._files.values():
            if id(fs) in dirty:
                fs.f.flush()

    def close(self) -> None:
        try:
            self.commit()
            end = iso_time(time.time())
            for fs in self._files.values():
                for e in fs.entries.values():
                    if e.run_row >= 0:
                        dt = e.e["end_time"].dtype
                        e.e["runs/end_time"][e.run_row] = nexus.as_text(end, dt)
                        # The stream's end: when it finished, else (stopped early) now.
                        stream_end = iso_time(e.finished_at) if e.finished_at else end
                        e.e["end_time"][()] = nexus.as_text(stream_end, dt)
                fs.f.flush()
        finally:
            for fs in self._files.values():
                fs.f.close()
            self._files.clear()


def _rows_stored_by(f: h5py.File, stream: str, run_uid: str) -> int:
    """Committed rows of ``stream``'s entry that the run ``run_uid`` stored (0: none)."""
    e = f.get(stream)
    if not isinstance(e, h5py.Group) or "runs" not in e:
        return 0
    uids = [u.decode() if isinstance(u, bytes) else str(u) for u in e["runs/run_uid"][:]]
    if run_uid not in uids:
        return 0
    first = int(e["runs/first_row"][uids.index(run_uid)])
    return int(e["rows"][0]) - first


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
        return f"directory {d} is not writable ({_why_not_writable(exc)})"
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


def _why_not_writable(exc: OSError) -> str:
    """The reason a test file could not be created, in the words of a directory's owner."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "a read-only file system"
    if exc.errno == errno.ENOENT:
        # What /proc and /sys answer: the directory exists, files cannot be made in it.
        return "it takes no new files: a virtual file system such as /proc or /sys"
    return f"creating a file there failed: {exc.strerror}"


def read_stream(path: str, stream: str) -> dict[str, Any]:
    """One stream's committed rows as numpy arrays, keyed by dataset name (tests, notebooks).

    Kernel outputs by qualified name (an axis stored once comes back once, or one row per
    message when it changed), the lineage columns (strings as ``bytes``), ``errors`` (a dict
    of the error records' columns) and ``attrs`` (``finished``, ``next_stream``).
    ``shmpipe.results.load`` gives the same with units, axes and provenance.
    """
    with open_read(path) as f:
        e = f[stream]
        n, m = int(e["rows"][0]), int(e["errors/rows"][0])
        out: dict[str, Any] = {}
        for name in list(e):
            ds = e[name]
            if not isinstance(ds, h5py.Dataset) or ds.ndim == 0 or name == "rows":
                continue
            if nexus.is_axis_index(e, name):
                continue
            if f"{name}_versions" in e:  # an axis: stored once per distinct value
                versions, index = e[f"{name}_versions"][:], e[f"{name}_version"][:n]
                if len(versions) == 0:
                    out[name] = ds[...]
                elif len(index) == 0 or np.all(index == index[0]):
                    out[name] = versions[index[0] if len(index) else 0]
                else:
                    out[name] = versions[index]
            else:
                out[name] = ds[:n]
        out["errors"] = {c: e["errors"][c][:m] for c, _ in nexus.ERRORS}
        out["attrs"] = {
            k: (v.decode() if isinstance(v, bytes) else v)
            for k, v in e.attrs.items()
            if k in ("finished", "next_stream")
        }
        return out
