"""Reducers in real runs: a mean of integrate.intensity per stream and per 10 frames equals
numpy's mean of the HDF5 rows (to 1e-12 relative), also with the publisher SIGKILLed
mid-stream and with the whole process group SIGKILLed and the run resumed; a map over a
simulated 20 x 15 mesh scan equals the grid built from the per-frame rows."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest

from shmpipe.config import load_config
from shmpipe.engine.supervisor import EXIT_OK, Pipeline
from shmpipe.plugins.sinks import hdf5_reduced
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, sim_geometry
from tests import faults
from tests.conftest import SMALL_SIM, run_cli, wait_for

MEANS = {
    "avg": {"kind": "mean", "input": "integrate.intensity"},
    "avg10": {"kind": "mean", "input": "integrate.intensity", "every": 10},
}


def chain(tmp: Path) -> dict:
    """Integration and frame statistics of the small simulated detector."""
    geo = tmp / "geometry.json"
    if not geo.exists():
        sim_geometry(SimParams(module_shape=SMALL_SIM["module_shape"])).to_file(geo)
    common = {"input": "parts", "geometry": str(geo)}
    return {
        "integrate": {"kind": "azimuthal_integrate", **common, "dist": 0.1, "poni1": 0.006,
                      "poni2": 0.005, "wavelength": 1e-10, "npt": 40},
        "stats": {"kind": "frame_stats", **common},
    }  # fmt: skip


def reduced(path: Path, stream: str, name: str) -> dict:
    with h5py.File(path, "r", swmr=True) as f:
        return hdf5_reduced.read(f[stream]["reducers"][name])


def assert_means_of_rows(path: Path, stream: str, frames: int) -> None:
    """Per stream and per 10 ids: the mean of the stored rows, each frame once."""
    d = read_stream(str(path), stream)
    ids, rows = d["message_id"], d["integrate.intensity"].astype(np.float64)
    assert sorted(ids.tolist()) == list(range(1, frames + 1))
    whole, tens = reduced(path, stream, "avg"), reduced(path, stream, "avg10")
    assert whole["frames"].tolist() == [frames]
    np.testing.assert_allclose(whole["mean"][0], rows.mean(0), rtol=1e-12)
    sem = rows.std(0, ddof=1) / np.sqrt(frames)
    np.testing.assert_allclose(whole["sem"][0], sem, rtol=1e-9)
    np.testing.assert_array_equal(whole["mean_errors"], whole["sem"])  # NeXus's errors link
    np.testing.assert_array_equal(whole["axis"], d["integrate.radial"])
    assert tens["window"].tolist() == list(range(frames // 10))
    assert tens["frames"].tolist() == [10] * (frames // 10)
    for k in range(frames // 10):
        assert (tens["first_id"][k], tens["last_id"][k]) == (10 * k + 1, 10 * k + 10)
        mean = rows[(ids - 1) // 10 == k].mean(0)
        np.testing.assert_allclose(tens["mean"][k], mean, rtol=1e-12)


def test_mean_per_stream_and_per_10_frames_equals_numpy_of_the_rows(tmp_path):
    raw = {
        "run": {"workers": 2, "progress": "off", "ordered": False,
                "reducer_state": str(tmp_path / "state.ckpt")},
        "source": {**SMALL_SIM, "streams": 2},
        "kernels": chain(tmp_path),
        "reducers": MEANS,
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "out_{stream}.h5")}],
    }  # fmt: skip
    summary = Pipeline(load_config(raw=raw)).run()
    assert summary.exit_code == EXIT_OK, summary.error
    for stream in ("scan_0001", "scan_0002"):
        assert_means_of_rows(tmp_path / f"out_{stream}.h5", stream, SMALL_SIM["frames"])
    # `shmpipe results` lists the reducers beside the per-frame outputs
    n = SMALL_SIM["frames"]
    shown = run_cli("results", str(tmp_path / "out_scan_0002.h5"))
    assert shown.returncode == 0, shown.stderr
    assert (
        f"reducer avg (mean of integrate.intensity, the whole stream): 1 window, {n} frames, "
        f"ids 1..{n}" in shown.stdout
    )
    assert (
        f"reducer avg10 (mean of integrate.intensity, every 10 frames): {n // 10} windows, "
        f"{n} frames, ids 1..{n}" in shown.stdout
    )
    assert "avg.mean (40,)" in shown.stdout and "avg10.sem (40,)" in shown.stdout
    assert "avg.mean_errors" not in shown.stdout
    # the reducers' settings at their defaults are left out, as the kernels' are
    assert "reducers.avg10.every = 10" in shown.stdout
    assert "reducers.avg.every" not in shown.stdout and "weight" not in shown.stdout


def test_publisher_sigkilled_mid_stream_each_frame_counted_once(tmp_path):
    raw = faults.config(tmp_path, chain(tmp_path), frames=60, ordered=False,
                        reducer_state=str(tmp_path / "state.ckpt"), commit_every=4)  # fmt: skip
    raw["source"].update(rate=120.0, streams=2)
    raw["reducers"] = MEANS
    raw["ring"] = {"slots": 8}
    expected = {"scan_0001": 60, "scan_0002": 60}
    f = faults.role_replaced(tmp_path, "publisher", raw, expected, kills=3, every=25)
    assert f.exit_code == EXIT_OK, f.details["summary"].error
    assert f.faults >= 3 and (f.lost, f.duplicates) == (0, 0)
    for stream in expected:
        assert_means_of_rows(tmp_path / f"out_{stream}.h5", stream, 60)


def test_whole_group_sigkilled_and_resumed_each_frame_counted_once(tmp_path):
    """Two runs SIGKILLed (the whole process group) mid-stream, each resumed into the same
    files and reducer state (mode = "resume"), a third completes: the means are exact."""
    frames, state = 120, tmp_path / "state.ckpt"
    args = ["run", "--progress", "off", "--workers", "2", "--frames", str(frames),
            "--sink", "hdf5", "--output", str(tmp_path / "out_{stream}.h5"),
            "--set", 'sinks.0.mode="resume"', "--set", f"run.reducer_state={str(state)!r}",
            "--set", "run.commit_every=4", "--set", "run.commit_interval_s=0.02"]  # fmt: skip
    for key, value in {**SMALL_SIM, "frames": frames, "rate": 100.0}.items():
        args += ["--set", f"source.{key}={value!r}".replace("'", '"')]
    for name, table in chain(tmp_path).items():
        for key, value in table.items():
            args += ["--set", f"kernels.{name}.{key}={value!r}".replace("'", '"')]
    for name, table in MEANS.items():
        for key, value in table.items():
            args += ["--set", f"reducers.{name}.{key}={value!r}".replace("'", '"')]
    for i, until in enumerate((25, 70)):
        name = f"reduce-kill-{os.getpid()}-{i}"
        proc = faults.cli(*args, "--set", f"run.name={name}", new_session=True)
        try:
            wait_for(
                lambda n=name, u=until, p=proc: faults.published(n) >= u or p.poll() is not None,
                timeout=120,
                what=f"{until} frames published",
            )
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the run ended before it was killed"
        assert state.exists()
    last = run_cli(*args, "--set", f"run.name=reduce-kill-{os.getpid()}-done", timeout=300)
    assert last.returncode == 0, last.stderr
    assert_means_of_rows(tmp_path / "out_scan_0001.h5", "scan_0001", frames)


@pytest.mark.parametrize("grid", ["given", "learned"])
def test_map_over_a_20_by_15_mesh_equals_the_grid_of_the_rows(tmp_path, grid):
    nx, ny = 20, 15
    extra = {"x_grid": [0.0, 1.9, nx], "y_grid": [0.0, 1.4, ny]} if grid == "given" else {}
    raw = {
        "run": {"workers": 2, "progress": "off", "ordered": False,
                "reducer_state": str(tmp_path / "state.ckpt")},
        "source": {**SMALL_SIM, "frames": nx * ny, "mesh": [nx, ny], "pool": 7},
        "kernels": chain(tmp_path),
        "reducers": {"m": {"kind": "map", "input": "stats.sum", **extra}},
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "out_{stream}.h5")}],
    }  # fmt: skip
    summary = Pipeline(load_config(raw=raw)).run()
    assert summary.exit_code == EXIT_OK, summary.error
    path = tmp_path / "out_scan_0001.h5"
    d = read_stream(str(path), "scan_0001")
    grid_of_rows = np.full((ny, nx), np.nan)
    i = d["message_id"] - 1
    grid_of_rows[i // nx, i % nx] = d["stats.sum"]
    m = reduced(path, "scan_0001", "m")
    np.testing.assert_array_equal(m["map"][0], grid_of_rows)
    np.testing.assert_allclose(m["x"][0], 0.1 * np.arange(nx), atol=1e-9)
    np.testing.assert_allclose(m["y"][0], 0.1 * np.arange(ny), atol=1e-9)
    assert m["count"][0].min() == 1 and int(m["unplaced"][0]) == 0
    assert len(np.unique(grid_of_rows)) == 7  # the pool's frames differ: a misplaced one shows


def test_two_nodes_on_one_asapo_group_merge_to_the_single_node_result(tmp_path):
    """Two pipeline instances share one consumer group (ASAPO splits the stream between
    them); each writes its partial results with their frame counts; merged, they equal the
    result of one node reading every frame (and numpy's of all rows)."""
    pytest.importorskip("asapo_consumer")
    from shmpipe.asapo.process import AsapoProcess
    from shmpipe.reduce.merge import merge_files
    from tests.test_asapo_pipeline import BEAMTIME, _run_cli, _write_toml, config, produce

    frames = 40
    reducers = {
        "avg": {"kind": "mean", "input": "stats.sum"},
        "avg10": {"kind": "mean", "input": "stats.sum", "every": 10},
        "hist": {"kind": "histogram", "input": "stats.max", "bins": 8, "range": [0.0, 400.0]},
    }
    with AsapoProcess(tmp_path / "asapo-data") as asapo:

        def node_config(group: str) -> Path:
            raw = config(asapo, tmp_path, group=group)
            raw["run"]["reducer_state"] = str(tmp_path / "state_{run}.ckpt")
            raw["kernels"] = {"stats": {"kind": "frame_stats", "input": "parts"}}
            raw["reducers"] = reducers
            raw["sinks"] = [
                {"kind": "hdf5", "output": str(tmp_path / "out_{stream}_{run}.h5")},
                {"kind": "asapo", "endpoint": asapo.server_name, "beamtime": BEAMTIME,
                 "data_source": f"avg10_{group}", "carry": "reduced", "reducer": "avg10",
                 "stream": "{stream}-{run}"},  # each node's partial windows apart
            ]  # fmt: skip
            return _write_toml(tmp_path / f"{group}.toml", raw)

        shared = node_config("shared")
        nodes = [_run_cli(shared, "node-a"), _run_cli(shared, "node-b")]
        try:
            producer = produce(asapo.server_name, frames, ["scan_0001"], rate=40.0)
            out, err = producer.communicate(timeout=120)
            assert producer.returncode == 0, out + err
            for p in nodes:
                _, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
        finally:
            for p in nodes:
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        single = _run_cli(node_config("single"), "single")
        _, err = single.communicate(timeout=120)
        assert single.returncode == 0, err
        windows = _reduced_records(asapo.server_name, "avg10_single", "scan_0001-single")
    parts = [str(tmp_path / f"out_scan_0001_{n}.h5") for n in ("node-a", "node-b")]
    parts = [p for p in parts if Path(p).exists()]  # a node that never took a frame: none
    rows = [read_stream(p, "scan_0001") for p in parts]
    per_node = [len(r["message_id"]) for r in rows]
    assert sum(per_node) == frames, per_node
    one = str(tmp_path / "out_scan_0001_single.h5")
    sums = np.concatenate([r["stats.sum"] for r in rows]).astype(np.float64)
    for name in reducers:
        merged, alone = merge_files(parts, "scan_0001", name), merge_files([one], "scan_0001", name)
        assert merged.windows == alone.windows and merged.frames.tolist() == alone.frames.tolist()
        for key, value in alone.arrays.items():
            np.testing.assert_allclose(merged.arrays[key], value, rtol=1e-12, err_msg=key)
    assert merge_files(parts, "scan_0001", "avg").frames.tolist() == [frames]
    np.testing.assert_allclose(
        merge_files(parts, "scan_0001", "avg").arrays["avg.mean"][0], sums.mean(), rtol=1e-12
    )
    # Each node's partial result counts its own frames (however the broker split them; a
    # node that got none has no result).
    with_frames = [p for p, r in zip(parts, rows, strict=True) if len(r["message_id"])]
    assert sorted(int(reduced(Path(p), "scan_0001", "avg")["frames"][0]) for p in with_frames
                  ) == sorted(n for n in per_node if n)  # fmt: skip
    # The single node's ASAPO output: one record per window of 10 ids, naming them.
    tens = merge_files([one], "scan_0001", "avg10")
    assert [m["reduced"]["window"] for _, m in windows] == [0, 1, 2, 3]
    for k, (data, meta) in enumerate(windows):
        w = meta["reduced"]
        assert (w["first_id"], w["last_id"], w["frames"]) == (10 * k + 1, 10 * k + 10, 10)
        assert w["id_runs"] == [[10 * k + 1, 10 * k + 10]]
        mean = next(a for a in meta["arrays"] if a["name"] == "avg10.mean")
        value = np.frombuffer(data, mean["dtype"], offset=mean["offset"], count=1)[0]
        assert value == tens.arrays["avg10.mean"][k]


def _reduced_records(endpoint: str, data_source: str, stream: str) -> list[tuple[bytes, dict]]:
    """Every record of an ASAPO output of reducer results, read with the real consumer."""
    import asapo_consumer

    from tests.test_asapo_pipeline import BEAMTIME

    c = asapo_consumer.create_consumer(endpoint, "", False, BEAMTIME, data_source, "", 5000)
    last = int(c.get_stream_info(stream)["lastId"])
    out = []
    for i in range(1, last + 1):
        try:
            data, meta = c.get_by_id(i, meta_only=False, stream=stream)
        except asapo_consumer.AsapoStreamFinishedError:
            break
        out.append((np.asarray(data).view(np.uint8).tobytes(), meta["meta"]))
    return out


def test_the_custom_reducer_of_the_docs_runs_as_documented(tmp_path):
    """examples/custom_reducer: its configuration, on small frames, gives the peak hold of
    the stored profiles and the frame each peak came from; docs/reducers.md shows it as is."""
    from tests.conftest import REPO

    example = REPO / "examples" / "custom_reducer"
    page = (REPO / "docs" / "reducers.md").read_text()
    for name in ("peak_hold.py", "peak_hold.toml"):
        assert (example / name).read_text().rstrip() in page, f"docs show {name} otherwise"
    small = chain(tmp_path)["integrate"]
    sets = [
        f"source.module_shape={SMALL_SIM['module_shape']}",
        "source.pool=3",
        f'kernels.integrate.geometry="{small["geometry"]}"',
        "kernels.integrate.npt=40",
    ]
    sets += [f"kernels.integrate.{k}={small[k]}" for k in ("dist", "poni1", "poni2")]
    # The repository is on PYTHONPATH (conftest): the examples package imports from anywhere.
    r = run_cli("run", "--config", str(example / "peak_hold.toml"), "--progress", "off",
                *(a for s in sets for a in ("--set", s)), cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    path = tmp_path / "peak_hold_scan_0001.h5"
    d = read_stream(str(path), "scan_0001")
    rows, ids = d["integrate.intensity"].astype(np.float64), d["message_id"]
    peak = reduced(path, "scan_0001", "peak")
    np.testing.assert_array_equal(peak["peak"][0], rows.max(0))
    np.testing.assert_array_equal(peak["message_id"][0], ids[rows.argmax(0)])
    tens = reduced(path, "scan_0001", "peak10")
    for k in range(4):
        np.testing.assert_array_equal(tens["peak"][k], rows[(ids - 1) // 10 == k].max(0))
    np.testing.assert_allclose(reduced(path, "scan_0001", "avg")["mean"][0], rows.mean(0),
                               rtol=1e-12)  # fmt: skip


def test_publisher_killed_after_the_checkpoint_before_the_ack_adds_nothing_twice(tmp_path):
    """The publisher dies the instant after a commit's checkpoint, before acknowledging it:
    the replacement publishes that commit's frames again, and the reducers skip them."""
    raw = faults.config(tmp_path, chain(tmp_path), frames=40, ordered=False,
                        reducer_state=str(tmp_path / "state.ckpt"), commit_every=8)  # fmt: skip
    raw["source"].update(kind="tests.reduce_plugins:KillOnAck", kill_at=23, rate=40.0,
                         marker=str(tmp_path / "killed"))  # fmt: skip
    raw["reducers"] = MEANS
    summary = Pipeline(load_config(raw=raw)).run()
    assert summary.exit_code == EXIT_OK, summary.error
    assert (tmp_path / "killed").exists() and summary.publisher_restarts == 1
    assert_means_of_rows(tmp_path / "out_scan_0001.h5", "scan_0001", 40)
