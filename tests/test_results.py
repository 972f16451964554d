"""Results files: NeXus structure, provenance, re-run modes, the reader and `shmpipe results`."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest

from shmpipe import results
from shmpipe.api import provenance
from shmpipe.config import load_config
from shmpipe.engine.startup import StartupError
from shmpipe.engine.supervisor import EXIT_OK, Pipeline
from shmpipe.plugins.sources.sim import SimParams, SimSource
from tests.conftest import SMALL_SIM, run_cli, wait_for

STREAM = "scan_0001"


def raw_config(out: Path, frames: int = 12, mode: str = "new", **profile) -> dict:
    return {
        "run": {"workers": 2, "progress": "off"},
        "source": {**SMALL_SIM, "frames": frames},
        "kernels": {"profile": {"kind": "tests.plugins:Profile", **profile}},
        "sinks": [{"kind": "hdf5", "output": str(out), "mode": mode}],
    }


def run(raw: dict):
    summary = Pipeline(load_config(raw=raw)).run()
    assert summary.exit_code == EXIT_OK, summary.error
    return summary


def totals(ids) -> list[float]:
    """The expected per-frame scalar: the sum of the simulated frame's pixels."""
    sim = SimSource(SimParams(**{k: v for k, v in SMALL_SIM.items() if k not in ("kind",)}))
    sim.open()
    pool = [sum(float(p.sum(dtype=np.float64)) for p in sim.frame_parts(i)) for i in range(3)]
    return [pool[(int(i) - 1) % 3] for i in ids]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """One finished file, read by several tests (copy it before changing it)."""
    out = tmp_path_factory.mktemp("made") / "profiles.h5"
    run(raw_config(out))
    return out


def test_nexus_structure_signal_axes_units_default(made):
    with h5py.File(made, "r") as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == STREAM
        e = f[STREAM]
        assert e.attrs["NX_class"] == "NXentry"
        assert e.attrs["default"] == "profile_intensity"
        nx = e["profile_intensity"]
        assert nx.attrs["NX_class"] == "NXdata" and nx.attrs["signal"] == "intensity"
        assert list(nx.attrs["axes"]) == ["message_id", "radial"]
        assert nx.attrs["radial_indices"] == 1 and nx.attrs["message_id_indices"] == 0
        assert nx["intensity"].shape == (12, 8)
        assert nx["radial"].shape == (8,)  # the axis stored once, not per row
        # pyFAI's unit name is not a unit: the unit, and the name in long_name.
        assert nx["radial"].attrs["units"] == "1/nm"
        assert nx["radial"].attrs["long_name"] == "q (nm^-1)"
        assert nx["radial"].attrs["pyfai_unit"] == "q_nm^-1"
        for lineage in ("timestamp", "published"):
            assert e[lineage].attrs["units"] == "s"
        np.testing.assert_allclose(nx["radial"][:], np.linspace(0.1, 1.0, 8))
        np.testing.assert_array_equal(nx["intensity_errors"][:], e["profile.sigma"][:])
        assert nx["message_id"][:].tolist() == list(range(1, 13))
        trace = e["profile_total"]  # a per-frame scalar: a trace against message id
        assert trace.attrs["NX_class"] == "NXdata" and trace.attrs["signal"] == "total"
        assert list(trace.attrs["axes"]) == ["message_id"]
        assert trace["total"].attrs["units"] == "counts"
        assert e["errors"].attrs["NX_class"] == "NXcollection"
        assert e["errors/message_id"].shape == (0,)


def test_provenance_version_host_times_config_kernels_source(made):
    with h5py.File(made, "r") as f:
        e = f[STREAM]
        p = e["process"]
        assert p.attrs["NX_class"] == "NXprocess" and p["program"][()] == b"shmpipe"
        assert p["version"][()].decode().split(" ")[0] == provenance.version() != "unknown"
        kernel = p["profile"]
        assert kernel["program"][()] == b"tests.plugins:Profile"
        assert kernel["parameters/npt"][()] == 8 and kernel["parameters/scale"][()] == 1.0
        source = json.loads(p["source/data"][()])
        assert source["kind"] == "sim" and source["frames"] == 12
        toml = p["configuration/data"][()].decode()
        assert load_config(raw=tomllib.loads(toml)).kernels[0].params.npt == 8
        assert e["start_time"][()].decode() < e["end_time"][()].decode()
        runs = results.load(str(made)).runs
        assert len(runs) == 1 and runs[0]["host"] and runs[0]["end_time"]
        assert runs[0]["version"] and runs[0]["first_row"] == 0


def test_silx_opens_the_default_plot(made):
    silx_nxdata = pytest.importorskip("silx.io.nxdata")
    import silx.io

    with silx.io.open(str(made)) as f:
        nx = silx_nxdata.get_default(f)
        assert nx is not None and nx.is_valid
        assert nx.signal_dataset_name == "intensity"
        assert nx.axes_dataset_names == ["message_id", "radial"]
        assert nx.interpretation == "spectrum" and nx.errors is not None
        np.testing.assert_allclose(nx.axes[1], np.linspace(0.1, 1.0, 8))
        # What silx labels the axes and the curve with.
        assert nx.axes_names == ["message id", "q (nm^-1)"]
        assert nx.signal_name == "profile.intensity"  # the legend (no long_name declared)
        entry = f[STREAM]
        for name in ("profile_intensity", "profile_total"):
            assert silx_nxdata.is_valid_nxdata(entry[name]), name
        trace = silx_nxdata.NXdata(entry["profile_total"])
        assert trace.signal_name == "profile.total (counts)"


def test_reader_equals_h5py(made):
    r = results.load(str(made))
    with h5py.File(made, "r") as f:
        e = f[STREAM]
        for name in ("profile.intensity", "profile.sigma", "profile.total"):
            np.testing.assert_array_equal(r[name], e[name][:])
        np.testing.assert_array_equal(r.axis("profile.intensity"), e["profile.radial"][:])
        np.testing.assert_array_equal(r.message_id, e["message_id"][:])
    assert r.units == {"profile.radial": "q_nm^-1", "profile.total": "counts"}  # as declared
    assert r.errors_of == {"profile.intensity": "profile.sigma"}
    assert r.axis_of == {n: "profile.radial" for n in ("profile.intensity", "profile.sigma")}
    np.testing.assert_allclose(r["profile.total"], totals(r.message_id))
    assert r.lineage["name"][0].startswith(STREAM) and len(r.errors["message_id"]) == 0


def test_other_parameter_is_refused_and_the_file_left_byte_for_byte(made, tmp_path):
    out = tmp_path / "profiles.h5"
    shutil.copy(made, out)
    before = digest(out)
    with pytest.raises(StartupError) as new:
        run(raw_config(out, scale=2.0))
    assert str(out) in str(new.value) and '"resume"' in str(new.value)
    assert '"overwrite"' in str(new.value)
    with pytest.raises(StartupError) as resume:
        run(raw_config(out, mode="resume", scale=2.0))
    assert "kernels.profile.scale: 1.0 -> 2.0" in str(resume.value)
    assert digest(out) == before


def test_resume_with_the_same_parameters_appends_each_id_once(made, tmp_path):
    out = tmp_path / "profiles.h5"
    shutil.copy(made, out)
    run(raw_config(out, frames=20, mode="resume"))  # the source starts again from id 1
    r = results.load(str(out))
    assert r.message_id.tolist() == list(range(1, 21))
    np.testing.assert_allclose(r["profile.total"], totals(range(1, 21)))
    assert [x["first_row"] for x in r.runs] == [0, 12]


def test_overwrite_replaces_the_file(made, tmp_path):
    out = tmp_path / "profiles.h5"
    shutil.copy(made, out)
    run(raw_config(out, frames=5, mode="overwrite", scale=3.0))
    r = results.load(str(out))
    assert r.message_id.tolist() == [1, 2, 3, 4, 5] and len(r.runs) == 1
    np.testing.assert_allclose(r["profile.intensity"][:, -1], 3.0 * np.array(totals(range(1, 6))))


def test_an_axis_that_changes_is_stored_per_version(tmp_path):
    out = tmp_path / "shift.h5"
    run(raw_config(out, frames=6, shift_axis_from=4))
    with h5py.File(out, "r") as f:
        assert f[f"{STREAM}/profile.radial_versions"].shape == (2, 8)
        assert f[f"{STREAM}/profile.radial_version"][:].tolist() == [0, 0, 0, 1, 1, 1]
    axis = results.load(str(out)).axis("profile.intensity")
    assert axis.shape == (6, 8)
    np.testing.assert_allclose(axis[3] - axis[0], 1.0)


def test_cli_results_prints_streams_rows_errors_runs_and_the_summary_says_where(tmp_path):
    out = tmp_path / "cli_{stream}.h5"
    done = run_cli(
        "run", "--progress", "off", "--frames", "7", "--sink", "hdf5", "--output", str(out),
        "--set", "source.module_shape=[48, 64]",
        "--set", 'kernels.profile.kind="tests.plugins:Profile"',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    path = tmp_path / f"cli_{STREAM}.h5"
    assert f"written: {path}" in done.stderr
    shown = run_cli("results", str(path), "--config", "--all")
    assert shown.returncode == 0, shown.stderr
    assert f"stream {STREAM}: 7 rows, ids 1..7, 0 errors, finished" in shown.stdout
    assert "profile.radial (8,) [q_nm^-1]" in shown.stdout
    assert "kernels.profile.npt = 8" in shown.stdout and "run run-" in shown.stdout  # --all
    missing = run_cli("results", str(tmp_path / "nothing.h5"))
    assert missing.returncode == 1 and "nothing.h5" in missing.stderr


def test_streams_as_entries_of_one_file(tmp_path):
    out = tmp_path / "all.h5"
    raw = raw_config(out, frames=5)
    raw["source"]["streams"] = 2  # the second entry is made while the file is in SWMR mode
    run(raw)
    with h5py.File(out, "r") as f:
        assert [n for n in f if f[n].attrs.get("NX_class") == "NXentry"] == [
            "scan_0001",
            "scan_0002",
        ]
        assert f.attrs["default"] == "scan_0001"
        assert f["scan_0001"].attrs["next_stream"] == b"scan_0002"
    first, second = (results.load(str(out), s) for s in ("scan_0001", "scan_0002"))
    for r in (first, second):
        assert r.message_id.tolist() == [1, 2, 3, 4, 5] and r.runs[0]["end_time"]
    np.testing.assert_allclose(first["profile.total"], totals(first.message_id))
    assert not np.array_equal(first["profile.total"], second["profile.total"])
    with pytest.raises(ValueError, match="name one"):
        results.load(str(out))


def test_a_reader_follows_the_file_while_it_is_written(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "live_{stream}.h5"
    path = tmp_path / f"live_{STREAM}.h5"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpipe", "run", "--progress", "off", "--frames", "60",
         "--sink", "hdf5", "--output", str(out), "--set", "source.module_shape=[48, 64]",
         "--set", "source.rate=30.0", "--set", "run.commit_interval_s=0.05",
         "--set", 'kernels.profile.kind="tests.plugins:Profile"'],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen: list[int] = []
    try:

        def grown_while_running() -> bool:
            if proc.poll() is not None or not path.exists():
                return False
            try:
                r = results.load(str(path))
            except (OSError, KeyError):
                return False  # the entry is being made (not SWMR yet): nothing committed
            seen.append(len(r))
            assert r.message_id.tolist() == list(range(1, len(r) + 1))
            return 0 < len(r) < 60

        wait_for(grown_while_running, timeout=60, what="committed rows while the run writes")
    finally:
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(results.load(str(path))) == 60


def test_each_stream_entry_has_its_own_start_and_end_time(tmp_path):
    out = tmp_path / "two.h5"
    raw = raw_config(out, frames=12)
    raw["source"]["streams"] = 2
    run(raw)
    with h5py.File(out, "r") as f:
        times = {s: (f[s]["start_time"][()].decode(), f[s]["end_time"][()].decode()) for s in f}
        run_end = f["scan_0002/runs/end_time"][0].decode()
    (start1, end1), (start2, end2) = times["scan_0001"], times["scan_0002"]
    assert start1 <= end1 <= end2 <= run_end and start1 < start2 <= end2
    assert end1 < run_end  # the first stream ended before the run did
