"""The files source (per-module HDF5, .npy) and the HDF5 sink's idempotence and crash cut-back."""

from __future__ import annotations

import os

import h5py
import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.sink import Record, RunInfo
from shmpipe.config import load_config
from shmpipe.engine.supervisor import EXIT_OK, Pipeline
from shmpipe.plugins.kernels import frame_digest
from shmpipe.plugins.sinks.hdf5 import HDF5Params, HDF5Sink, read_stream


def _run(raw: dict):
    return Pipeline(load_config(raw=raw)).run()


def test_files_source_one_hdf5_file_per_module(tmp_path):
    rng = np.random.default_rng(1)
    modules = [rng.integers(0, 4000, (7, 20, 30), dtype=np.uint16) for _ in range(3)]
    for i, m in enumerate(modules):
        with h5py.File(tmp_path / f"scan_m{i + 1:02d}.nxs", "w") as f:
            f["entry/data/data"] = m
    out = tmp_path / "out.h5"
    summary = _run(
        {
            "run": {"workers": 2, "progress": "off"},
            "source": {"kind": "files", "paths": [str(tmp_path / "scan_m*.nxs")], "stream": "scan"},
            "kernels": {"checksum": {}},
            "sinks": [{"kind": "hdf5", "output": str(out)}],
        }
    )
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(out), "scan")
    assert data["message_id"].tolist() == list(range(1, 8))
    for i in range(7):  # each message is frame i of every module file, read into the slot
        assert bytes(data["checksum.digest"][i]) == frame_digest([m[i] for m in modules])


def test_files_source_npy_frames_one_stream_per_file(tmp_path):
    a = np.arange(5 * 8 * 8, dtype=np.float32).reshape(5, 8, 8)
    b = -a[:3]
    np.save(tmp_path / "run_a.npy", a)
    np.save(tmp_path / "run_b.npy", b)
    out = tmp_path / "out_{stream}.h5"
    summary = _run(
        {
            "run": {"workers": 1, "progress": "off"},
            "source": {"kind": "files", "paths": [str(tmp_path / "run_*.npy")], "layout": "frames"},
            "kernels": {"sum": {"kind": "tests.plugins:Sum"}},
            "sinks": [{"kind": "hdf5", "output": str(out)}],
        }
    )
    assert summary.exit_code == EXIT_OK, summary.error
    ra = read_stream(str(tmp_path / "out_run_a.h5"), "run_a")
    rb = read_stream(str(tmp_path / "out_run_b.h5"), "run_b")
    assert ra["sum.total"].tolist() == [float(f.sum()) for f in a]
    assert rb["sum.total"].tolist() == [float(f.sum()) for f in b]
    assert ra["attrs"]["next_stream"] == "run_b"


def test_files_source_missing_file_is_a_start_error(tmp_path):
    from shmpipe.engine.supervisor import StartupError

    raw = {
        "run": {"progress": "off"},
        "source": {"kind": "files", "paths": [str(tmp_path / "nothing*.h5")]},
    }
    try:
        _run(raw)
    except StartupError as exc:
        assert "no file matches" in str(exc)
    else:
        raise AssertionError("a run without input files started")


def _sink(path, run="r", mode="resume") -> HDF5Sink:
    sink = HDF5Sink(HDF5Params(output=str(path), mode=mode))
    sink.open(
        RunInfo(
            run,
            {"run": {}, "ring": {}, "metrics": {}, "source": {}, "kernels": {}, "sinks": []},
            "abc",
            ["k"],
            [ArraySpec("k.v", (3,), "float32")],
            run_uid=f"{run}-{os.urandom(4).hex()}",
        )
    )
    return sink


def _record(mid: int) -> Record:
    return Record("s", mid, f"m{mid}", {}, {"k.v": np.full(3, mid, np.float32)}, 0.0)


def test_hdf5_sink_ignores_a_redelivered_message(tmp_path):
    path = tmp_path / "o.h5"
    sink = _sink(path)
    for mid in (1, 2, 2, 3):
        sink.write(_record(mid))
    sink.commit()
    sink.close()
    sink = _sink(path)  # a later run appending to the same file still knows what it has
    sink.write(_record(3))
    sink.write(_record(4))
    sink.close()
    data = read_stream(str(path), "s")
    assert data["message_id"].tolist() == [1, 2, 3, 4]
    assert data["k.v"][:, 0].tolist() == [1, 2, 3, 4]


def test_hdf5_sink_drops_rows_that_were_never_committed(tmp_path):
    path = tmp_path / "o.h5"
    sink = _sink(path)
    sink.write(_record(1))
    sink.commit()
    sink.write(_record(2))  # written but never committed, so never acknowledged
    for fs in sink._files.values():
        for entry in fs.entries.values():
            entry.write_pending()  # the row reaches the file ...
        fs.f.flush()
        fs.f.close()  # ... and the process "dies" here: no commit, no close
    sink._files.clear()
    assert h5py.File(path, "r")["s/message_id"].shape == (2,)
    sink = _sink(path)
    sink.write(_record(2))  # the redelivery
    sink.close()
    assert read_stream(str(path), "s")["message_id"].tolist() == [1, 2]
