"""The NeXus structure of a results file: entries, plots, provenance.

One NXentry per stream. The rows live as plain datasets in the entry (one per kernel output and
lineage column); NXdata groups hold hard links to them with the ``signal``/``axes`` attributes
that let silx, h5web, PyMca or DAWN plot a profile in one click, and the ``default`` chain
(file -> entry -> NXdata) says which plot to open first::

    /                            NXroot   default=<first stream>, creator, result_hash ...
    /<stream>/                   NXentry  default=integrate_intensity
        rows            (1,)     committed rows: read [:rows] of every row dataset
        message_id      (n,)     lineage: id, name, timestamp, published, attempt
        integrate.intensity (n, npt)   units, long_name
        integrate.radial    (npt,)     the axis, stored once (integrate.radial_version per row
                                       and integrate.radial_versions when it changes)
        integrate_intensity/     NXdata   signal=intensity axes=[message_id, radial]
        stats_sum/               NXdata   signal=sum axes=[message_id]  (per-frame trace)
        errors/                  NXcollection  rows, message_id, name, kernel, error, ...
        process/                 NXprocess  program, version, configuration, kernels, source
        runs/                    NXcollection  one row per run that wrote here
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import h5py
import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.provenance import iso_time
from shmpipe.api.sink import RunInfo


def text(width: int) -> np.dtype:
    """A fixed-width UTF-8 string type.

    Every string a run writes while the file is in SWMR mode is fixed-width: variable-length
    strings live in the file's global heap, which SWMR does not protect, and a killed writer
    leaves rows pointing at heap objects that never reached the file ("bad heap index" when
    the resumed run writes over them).
    """
    return h5py.string_dtype("utf-8", width)


def fit(value: str, width: int) -> bytes:
    """``value`` as UTF-8 in at most ``width`` bytes (cut at a character boundary)."""
    raw = str(value).encode()
    return raw if len(raw) <= width else raw[:width].decode(errors="ignore").encode()


def as_text(value: str, dt: np.dtype) -> np.ndarray:
    """``value`` ready to be written into a dataset of the fixed-width type ``dt``."""
    return np.array(fit(value, dt.itemsize), dtype=dt)


NAME_BYTES = 512
"""Longest message name stored whole; longer ones are cut (at a character boundary)."""

LINEAGE = (
    ("message_id", np.int64),
    ("name", text(NAME_BYTES)),
    ("timestamp", np.float64),
    ("published", np.float64),
    ("attempt", np.int32),
)
ERRORS = (
    ("message_id", np.int64),
    ("name", text(NAME_BYTES)),
    ("kernel", text(128)),
    ("error", text(4096)),
    ("traceback", text(16384)),
    ("quarantined", np.bool_),
)
RUNS = (
    ("run_name", text(256)),
    ("run_uid", text(128)),
    ("host", text(256)),
    ("version", text(64)),
    ("commit", text(64)),
    ("start_time", text(40)),
    ("end_time", text(40)),
    ("first_row", np.int64),
    ("config_hash", text(64)),
    ("configuration", text(65536)),
)
CHUNK_BYTES = 256 * 1024


def chunk_rows(spec: ArraySpec) -> int:
    """Rows per chunk of an output dataset: one row of an image, many of a scalar.

    A chunk per row of a tiny output (a digest, a sum) makes the file's chunk index, and
    the library's memory with it, grow with every frame; about 256 KiB a chunk stays well
    inside h5py's default chunk cache (1 MiB) while rows are appended one at a time.
    """
    row = int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
    return int(max(1, min(1024, CHUNK_BYTES // max(1, row))))


def axis_names(specs: Sequence[ArraySpec]) -> set[str]:
    """Qualified names of the outputs that are another stored output's axis."""
    names = {s.name for s in specs}
    return {s.axis for s in specs if s.axis in names}


def is_axis_index(e: h5py.Group, name: str) -> bool:
    """Whether dataset ``name`` of entry ``e`` is an axis's bookkeeping (``<axis>_version``,
    ``<axis>_versions``) rather than a kernel output (which may end in ``_version`` too)."""
    for suffix in ("_versions", "_version"):
        if name.endswith(suffix) and f"{name[: -len(suffix)]}_versions" in e:
            return True
    return False


def nxdata_name(qualified: str) -> str:
    return qualified.replace(".", "_")


def _columns(group: h5py.Group, columns, chunk: int, compression: str | None = None) -> None:
    for name, dt in columns:
        group.create_dataset(
            name, (0,), dtype=dt, maxshape=(None,), chunks=(chunk,), compression=compression
        )


PYFAI_UNITS = {
    # pyFAI's radial unit names: (the unit, the quantity)
    "q_nm^-1": ("1/nm", "q"),
    "q_A^-1": ("1/A", "q"),
    "2th_deg": ("deg", "2theta"),
    "2th_rad": ("rad", "2theta"),
    "r_mm": ("mm", "r"),
    "r_m": ("m", "r"),
    "chi_deg": ("deg", "chi"),
    "chi_rad": ("rad", "chi"),
}
"""A declared unit that is one of pyFAI's unit names is not a unit (NeXus readers show
``units`` as one): the file gets the unit and keeps pyFAI's name in ``long_name``."""


def units_and_label(spec: ArraySpec) -> tuple[str, str]:
    """NeXus ``units`` and ``long_name`` of an output.

    ``long_name`` is what plotting programs label an axis or a curve with, so it names the
    unit too: ``"q (nm^-1)"`` for pyFAI's ``q_nm^-1``, ``"stats.sum (counts)"``.
    """
    label = spec.long_name or spec.name
    if spec.unit in PYFAI_UNITS:
        unit, quantity = PYFAI_UNITS[spec.unit]
        if label in (spec.unit, spec.name):
            label = quantity
        return unit, f"{label} ({spec.unit.split('_', 1)[1]})"
    if spec.unit and spec.unit not in label:
        return spec.unit, f"{label} ({spec.unit})"
    return spec.unit, label


def _describe(ds: h5py.Dataset, spec: ArraySpec) -> None:
    unit, label = units_and_label(spec)
    if unit:
        ds.attrs["units"] = unit
    if unit != spec.unit:
        ds.attrs["pyfai_unit"] = spec.unit  # as the kernel declared it
    ds.attrs["long_name"] = label
    # Qualified names of the companions, for readers (NeXus' own "axis" attribute is not it).
    if spec.axis:
        ds.attrs["axis_output"] = spec.axis
    if spec.errors:
        ds.attrs["errors_output"] = spec.errors


def create_entry(
    f: h5py.File, stream: str, specs: Sequence[ArraySpec], run: RunInfo, compression: str
) -> h5py.Group:
    """Create the entry of ``stream``, empty, with its plots and the run's provenance."""
    e = f.create_group(stream)
    e.attrs["NX_class"] = "NXentry"
    e.create_dataset("rows", data=np.zeros(1, np.int64))
    e.create_dataset("title", data=stream)
    e.create_dataset("program_name", data="shmpipe").attrs["version"] = run.version
    # The stream's own times: its first result reached the sink now (end_time: when it
    # finished, written at the sink's close), not the run's, which may span many streams.
    e.create_dataset("start_time", data=iso_time(time.time()))
    e.create_dataset("end_time", data=as_text("", text(40)))
    _columns(e, LINEAGE, 1024)
    e["message_id"].attrs["long_name"] = "message id"
    for name, what in (("timestamp", "source timestamp"), ("published", "publish time")):
        e[name].attrs["units"] = "s"
        e[name].attrs["long_name"] = f"{what} (s since 1970-01-01 UTC)"
    axes = axis_names(specs)
    for s in specs:
        if s.name in axes:
            # NaN until the first row gives the axis, so an empty entry plots nothing wrong.
            fill = np.nan if np.dtype(s.dtype).kind == "f" else None
            ds = e.create_dataset(s.name, s.shape, dtype=s.dtype, fillvalue=fill)
            e.create_dataset(f"{s.name}_version", (0,), np.int32, maxshape=(None,), chunks=(1024,))
            e.create_dataset(
                f"{s.name}_versions",
                (0, *s.shape),
                dtype=s.dtype,
                maxshape=(None, *s.shape),
                chunks=(1, *s.shape),
            )
        else:
            ds = e.create_dataset(
                s.name,
                (0, *s.shape),
                dtype=s.dtype,
                maxshape=(None, *s.shape),
                chunks=(chunk_rows(s), *s.shape),
                compression=compression or None,
            )
        _describe(ds, s)
    default = _plots(e, specs, axes)
    if default:
        e.attrs["default"] = default
    errors = e.create_group("errors")
    errors.attrs["NX_class"] = "NXcollection"
    errors.create_dataset("rows", data=np.zeros(1, np.int64))
    _columns(errors, ERRORS, 8, "gzip")  # rare rows of mostly padding
    _process(e, run)
    runs = e.create_group("runs")
    runs.attrs["NX_class"] = "NXcollection"
    _columns(runs, RUNS, 1, "gzip")
    if "default" not in f.attrs:
        f.attrs["default"] = stream
    return e


def _plots(e: h5py.Group, specs: Sequence[ArraySpec], axes: set[str]) -> str:
    """NXdata for every 1-D output with a stored axis and every per-frame scalar.

    Returns the name of the one to open by default: the first profile, else the first trace.
    """
    names = {s.name for s in specs}
    profiles, traces = [], []
    for s in specs:
        short = s.name.rsplit(".", 1)[-1]
        if len(s.shape) == 1 and s.axis in names and s.name not in axes:
            g = e.create_group(nxdata_name(s.name))
            axis_short = s.axis.rsplit(".", 1)[-1]
            g[short] = e[s.name]
            g[axis_short] = e[s.axis]
            g["message_id"] = e["message_id"]
            g.attrs["axes"] = ["message_id", axis_short]
            g.attrs["message_id_indices"] = 0
            g.attrs[f"{axis_short}_indices"] = 1
            e[s.name].attrs["interpretation"] = "spectrum"
            if s.errors in names:
                g[f"{short}_errors"] = e[s.errors]
            profiles.append(g)
        elif s.shape == ():
            g = e.create_group(nxdata_name(s.name))
            g[short] = e[s.name]
            g["message_id"] = e["message_id"]
            g.attrs["axes"] = ["message_id"]
            g.attrs["message_id_indices"] = 0
            traces.append(g)
        else:
            continue
        g.attrs["NX_class"] = "NXdata"
        g.attrs["signal"] = short
        g.attrs["title"] = f"{e.name.lstrip('/')}: {s.long_name or s.name}"
    first = (profiles or traces or [None])[0]
    return first.name.rsplit("/", 1)[-1] if first is not None else ""


def _process(e: h5py.Group, run: RunInfo) -> None:
    """NXprocess: the program, the configuration that shaped the results, kernels, source."""
    p = e.create_group("process")
    p.attrs["NX_class"] = "NXprocess"
    p.create_dataset("program", data="shmpipe")
    p.create_dataset("version", data=run.version + (f" ({run.commit})" if run.commit else ""))
    p.create_dataset("date", data=iso_time(run.started))
    p.create_dataset("result_hash", data=run.result_hash)
    note = p.create_group("configuration")
    note.attrs["NX_class"] = "NXnote"
    note.create_dataset("type", data="application/toml")
    note.create_dataset("data", data=run.config_toml)
    shaping = p.create_group("result_config")
    shaping.attrs["NX_class"] = "NXnote"
    shaping.create_dataset("type", data="application/json")
    shaping.create_dataset("data", data=json.dumps(run.result_config, default=str))
    for i, (name, table) in enumerate(run.config.get("kernels", {}).items()):
        k = p.create_group(name)
        k.attrs["NX_class"] = "NXprocess"
        k.create_dataset("program", data=str(table.get("kind", "")))
        k.create_dataset("sequence_index", data=i + 1)
        params = k.create_group("parameters")
        params.attrs["NX_class"] = "NXparameters"
        for key, value in table.items():
            if key != "kind":
                params.create_dataset(key, data=_param(value))
    source = run.config.get("source", {})
    s = p.create_group("source")
    s.attrs["NX_class"] = "NXnote"
    s.create_dataset("type", data="application/json")
    s.create_dataset("description", data=f"source kind {source.get('kind', '?')}")
    s.create_dataset("data", data=json.dumps(source, default=str))


def _param(value):
    """A kernel parameter as something HDF5 stores: numbers and strings as is, else JSON."""
    if value is None:
        return "none"
    if isinstance(value, bool | int | float | str):
        return value
    try:
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return arr
    except (ValueError, TypeError):
        pass
    return json.dumps(value, default=str)


def record_run(e: h5py.Group, run: RunInfo, first_row: int) -> int:
    """Append this run to the entry's ``runs`` table; returns its row."""
    runs = e["runs"]
    i = runs["run_name"].shape[0]
    values = {
        "run_name": run.run_name,
        "run_uid": run.run_uid,
        "host": run.host,
        "version": run.version,
        "commit": run.commit,
        "start_time": iso_time(run.started),
        "end_time": "",
        "first_row": first_row,
        "config_hash": run.config_hash,
        "configuration": run.config_toml,
    }
    for name, dt in RUNS:
        runs[name].resize(i + 1, axis=0)
        value = values[name]
        runs[name][i] = as_text(value, dt) if isinstance(value, str) else value
    return i


def set_root(f: h5py.File, run: RunInfo) -> None:
    """File-level attributes: NXroot, the creator and what a resume must match."""
    f.attrs["NX_class"] = "NXroot"
    f.attrs["creator"] = f"shmpipe {run.version}"
    f.attrs["file_time"] = iso_time(run.started)
    f.attrs["HDF5_Version"] = h5py.version.hdf5_version
    f.attrs["h5py_version"] = h5py.version.version
    f.attrs["result_hash"] = run.result_hash
    f.attrs["result_config"] = json.dumps(run.result_config, default=str)
    f.attrs["run_uid"] = run.run_uid
    f.attrs["run_name"] = run.run_name
