"""The built-in reducers and the reduce stage on their own (no pipeline): each result equals
numpy's on the same frames, in any order and merged from parts; the stage adds a frame once,
however often it is redelivered, across checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.sink import Record, ReducedRecord, RunInfo, Sink
from shmpipe.plugins.reducers import (
    HistogramParams,
    HistogramReducer,
    MeanParams,
    MeanReducer,
    SumReducer,
)
from shmpipe.plugins.scanmap import MapParams, MapReducer
from shmpipe.reduce.stage import ReduceStage

PROFILE = ArraySpec("integrate.intensity", (7,), "float32")


def _record(mid: int, value, meta=None, stream="s") -> Record:
    arrays = {"integrate.intensity": value, "stats.sum": np.float64(np.sum(value))}
    return Record(stream, mid, f"f{mid}", meta or {}, arrays, 0.0)


def _frames(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(100.0, 10.0, (n, 7)).astype(np.float32)
    x[rng.random((n, 7)) < 0.1] = np.nan  # masked bins in some frames
    return x


def _reduce(reducer, frames, order, metas=None):
    state = reducer.new_state()
    for i in order:
        grown = reducer.add(state, frames[i], _record(i + 1, frames[i], (metas or {}).get(i)))
        state = grown or state
    return state


def test_mean_in_any_order_and_merged_from_parts_equals_numpy():
    frames = _frames(50)
    r = MeanReducer("avg", MeanParams(input="integrate.intensity"), PROFILE)
    rng = np.random.default_rng(3)
    a = r.finish(_reduce(r, frames, range(50)))
    b = r.finish(_reduce(r, frames, rng.permutation(50)))
    part1, part2 = _reduce(r, frames, range(0, 50, 2)), _reduce(r, frames, range(1, 50, 2))
    merged = r.finish(r.merge(part1, part2))
    x = frames.astype(np.float64)
    n = np.sum(~np.isnan(x), axis=0)
    sem = np.nanstd(x, axis=0, ddof=1) / np.sqrt(n)
    for out in (a, b, merged):
        np.testing.assert_allclose(out["mean"], np.nanmean(x, axis=0), rtol=1e-12)
        np.testing.assert_allclose(out["sem"], sem, rtol=1e-9)
        assert out["count"].tolist() == n.tolist()


def test_weighted_mean_by_a_metadata_key():
    frames = _frames(20, seed=5)
    frames[np.isnan(frames)] = 1.0
    weights = np.arange(1, 21, dtype=float)
    r = MeanReducer("avg", MeanParams(input="integrate.intensity", weight="monitor"), PROFILE)
    metas = {i: {"monitor": weights[i]} for i in range(20)}
    out = r.finish(_reduce(r, frames, range(20), metas))
    want = np.average(frames.astype(np.float64), axis=0, weights=weights)
    np.testing.assert_allclose(out["mean"], want, rtol=1e-12)
    with pytest.raises(ValueError, match="weight 'monitor'"):
        r.add(r.new_state(), frames[0], _record(1, frames[0]))


def test_sum_and_histogram_equal_numpy():
    frames = np.nan_to_num(_frames(30), nan=-5.0)
    s = SumReducer("total", None, PROFILE)
    np.testing.assert_allclose(
        s.finish(_reduce(s, frames, range(30)))["sum"], frames.astype(np.float64).sum(0)
    )
    h = HistogramReducer(
        "hist", HistogramParams(input="integrate.intensity", bins=12, range=[70.0, 130.0]), PROFILE
    )
    parts = h.merge(_reduce(h, frames, range(15)), _reduce(h, frames, range(15, 30)))
    out = h.finish(parts)
    want, edges = np.histogram(frames, bins=12, range=(70.0, 130.0))
    assert out["counts"].tolist() == want.tolist()
    np.testing.assert_allclose(out["edges"], edges)
    assert out["outside"].tolist() == [np.sum(frames < 70), np.sum(frames >= 130), 0]


@pytest.mark.parametrize("grid", ["given", "learned"])
def test_map_places_each_frame_by_its_position(grid):
    nx, ny = 5, 4
    values = np.arange(1, nx * ny + 1, dtype=np.float64) * 1.5
    metas = {i: {"motor_x": 0.2 * (i % nx), "motor_y": -1.0 + 0.5 * (i // nx)} for i in range(20)}
    extra = {"x_grid": [0.0, 0.8, nx], "y_grid": [-1.0, 0.5, ny]} if grid == "given" else {}
    r = MapReducer("m", MapParams(input="stats.sum", **extra), ArraySpec("stats.sum", (), "f8"))
    order = np.random.default_rng(0).permutation(20)
    state = r.new_state()
    for i in order:
        state = r.add(state, values[i], _record(i + 1, values[i], metas[i])) or state
    state = r.add(state, 1.0, _record(99, np.float64(1.0), {})) or state  # no position
    out = r.finish(state)
    np.testing.assert_array_equal(out["map"], values.reshape(ny, nx))
    np.testing.assert_allclose(out["x"], 0.2 * np.arange(nx), atol=1e-12)
    np.testing.assert_allclose(out["y"], -1.0 + 0.5 * np.arange(ny), atol=1e-12)
    assert int(out["unplaced"]) == 1 and out["count"].sum() == 20


class Collect(Sink):
    """Keeps what the stage hands the sinks."""

    def __init__(self) -> None:
        super().__init__(None)
        self.results: dict[tuple[str, str, int], ReducedRecord] = {}

    def write(self, record: Record) -> None:
        pass

    def write_reduced(self, result: ReducedRecord) -> None:
        self.results[(result.stream, result.reducer, result.window)] = result


def _stage(config_raw: dict, path, sink: Collect, run_uid: str) -> ReduceStage:
    from shmpipe.config import load_config

    cfg = load_config(raw=config_raw)
    run = RunInfo("t", {}, "", [], outputs=[PROFILE], run_uid=run_uid, result_hash="h")
    stage = ReduceStage.create(cfg, run, [sink], logging.getLogger("test"))
    assert stage is not None and stage.path == str(path)
    return stage


def test_a_redelivered_frame_is_added_once_across_a_checkpoint(tmp_path):
    """Frames 1-12 checkpointed; a new stage (a replaced publisher) gets 1-25 again (the
    unacknowledged ones come back, with some acknowledged ones): each counted once."""
    path = tmp_path / "state.ckpt"
    raw = {
        "run": {"reducer_state": str(path)},
        "kernels": {"integrate": {"kind": "null"}},
        "reducers": {
            "avg": {"kind": "mean", "input": "integrate.intensity"},
            "avg5": {"kind": "mean", "input": "integrate.intensity", "every": 5},
        },
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "o.h5"), "mode": "resume"}],
    }
    frames = _frames(25, seed=9)
    first = Collect()
    stage = _stage(raw, path, first, "run-1")
    for i in range(12):
        stage.add(_record(i + 1, frames[i]))
    stage.commit()
    for i in range(12, 14):  # added but never checkpointed: the publisher dies here
        stage.add(_record(i + 1, frames[i]))
    sink = Collect()
    again = _stage(raw, path, sink, "run-1")
    for i in np.random.default_rng(2).permutation(25):
        again.add(_record(int(i) + 1, frames[i]))
        again.add(_record(int(i) + 1, frames[i]))  # and a duplicate DONE
    again.skip("s", 26)
    again.stream_finished("s")
    whole = sink.results[("s", "avg", 0)]
    assert whole.frames == 25 and whole.ids == [(1, 25)]
    x = frames.astype(np.float64)
    np.testing.assert_allclose(whole.arrays["avg.mean"], np.nanmean(x, 0), rtol=1e-12)
    # Windows 0 and 1 (ids 1-10) were written by the first stage; the rest by this one.
    assert sorted(k[2] for k in first.results if k[1] == "avg5") == [0, 1]
    windows = {**first.results, **sink.results}
    for k in range(5):
        w = windows[("s", "avg5", k)]
        assert (w.first_id, w.last_id, w.frames) == (5 * k + 1, 5 * k + 5, 5)
        want = np.nanmean(x[5 * k : 5 * k + 5], 0)
        np.testing.assert_allclose(w.arrays["avg5.mean"], want, rtol=1e-12)
    assert ("s", "avg5", 5) not in windows  # id 26 was an error: no frame, no window


def test_reducer_mistakes_are_reported_before_start_naming_the_key(tmp_path):
    from tests.conftest import run_cli

    base = ["run", "--frames", "3", "--progress", "off", "--set", "reducers.avg.kind=mean"]
    r = run_cli(*base, "--set", "reducers.avg.input=checksum.nothing")
    assert r.returncode == 2, r.stderr
    assert "reducers.avg.input: 'checksum.nothing' is not an output of the chain" in r.stderr
    assert "checksum.digest" in r.stderr  # what it could have been
    r = run_cli(*base, "--set", "reducers.avg.input=integrate.intensity")
    assert r.returncode == 2 and "command line (--set reducers.avg.input=" in r.stderr
    assert "no kernel 'integrate'" in r.stderr
    # A checkpoint left by an earlier run, and sinks that never continue one (mode = "new").
    state = tmp_path / "state.ckpt"
    state.write_bytes(b"")
    where = ["--sink", "hdf5", "--output", str(tmp_path / "o.h5")]
    where += ["--set", f'run.reducer_state="{state}"']
    r = run_cli(*base, "--set", "reducers.avg.input=checksum.digest", *where)
    assert r.returncode == 2, r.stderr
    assert "run.reducer_state" in r.stderr and 'mode = "new"' in r.stderr
    assert not (tmp_path / "o.h5").exists()


def test_a_torn_checkpoint_write_leaves_the_one_before(tmp_path):
    """The two files take turns: a write cut short (the process killed inside it) leaves
    the other file's checkpoint, the newer complete one, to be read."""
    from shmpipe.reduce import checkpoint
    from shmpipe.reduce.windows import StreamWindows, Window, id_set

    path = str(tmp_path / "state.ckpt")
    writer = checkpoint.Writer(path)
    for n in (3, 4, 5):
        cp = checkpoint.Checkpoint("uid", "hash", covered={"s": id_set([(1, n)])})
        w = Window({"sum": np.full(1000, float(n))}, id_set([(1, n)]))
        cp.windows[("total", "s")] = StreamWindows(open={0: w})
        writer.save(cp)
    writer.close()
    assert checkpoint.load(path).covered["s"].hi == [5]
    newest = checkpoint.files(path)[(writer.generation - 1) % 2]  # the last one written
    raw = open(newest, "rb").read()
    for cut in (10, len(raw) // 2, len(raw) - 1):
        with open(newest, "wb") as f:
            f.write(raw[:cut])
        cp = checkpoint.load(path)
        assert cp.covered["s"].hi == [4]  # the one before
        assert cp.windows[("total", "s")].open[0].state["sum"][0] == 4.0
    assert checkpoint.Writer(path).generation == 2  # continues after the complete one


def test_reducer_names_and_asapo_outputs_of_reducers_are_checked_before_start():
    from tests.conftest import run_cli

    r = run_cli("run", "--frames", "2", "--set", "reducers.a-b.kind=mean",
                "--set", "reducers.a-b.input=checksum.nbytes")  # fmt: skip
    assert r.returncode == 2 and "reducers.a-b: 'a-b': a reducer's name is letters" in r.stderr
    asapo = ["--set", "sinks.0.kind=asapo", "--set", "sinks.0.carry=reduced"]
    r = run_cli("run", "--frames", "2", *asapo)
    assert r.returncode == 2 and 'carry = "reduced" and reducer = "NAME" go together' in r.stderr
    r = run_cli("run", "--frames", "2", *asapo, "--set", "sinks.0.reducer=avg")
    assert r.returncode == 2, r.stderr
    assert "asapo reducer = 'avg' names no [reducers.*] table (reducers: none)" in r.stderr


@pytest.mark.parametrize("mode", ["resume", "overwrite"])
def test_an_earlier_runs_checkpoint_is_continued_or_replaced_as_the_sinks_mode_says(tmp_path, mode):
    path = tmp_path / "state.ckpt"
    raw = {
        "run": {"reducer_state": str(path)},
        "kernels": {"integrate": {"kind": "null"}},
        "reducers": {"avg": {"kind": "mean", "input": "integrate.intensity"}},
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / "o.h5"), "mode": mode}],
    }
    frames = _frames(6, seed=4)
    first = _stage(raw, path, Collect(), "run-1")
    for i in range(3):
        first.add(_record(i + 1, frames[i]))
    first.commit()
    sink = Collect()
    second = _stage(raw, path, sink, "run-2")  # another run of the same name
    for i in range(3, 6):  # a resumed source goes on where the first run stopped
        second.add(_record(i + 1, frames[i]))
    second.stream_finished("s")
    done = sink.results[("s", "avg", 0)]
    included = frames if mode == "resume" else frames[3:]
    assert done.frames == len(included)
    np.testing.assert_allclose(
        done.arrays["avg.mean"], np.nanmean(included.astype(np.float64), 0), rtol=1e-12
    )
