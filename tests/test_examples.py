"""Every example configuration is valid (``shmpipe config show``) and runs where its plug-ins
are installed; an example is skipped, naming what it needs, only when a plug-in is missing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

import h5py
import numpy as np
import pytest

from shmpipe.config import ConfigError, load_config
from shmpipe.engine.supervisor import EXIT_OK, Pipeline
from shmpipe.plugins.kernels import frame_digest
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, SimSource
from tests.conftest import REPO, run_cli

EXAMPLES = sorted((REPO / "examples").rglob("*.toml"))
MISSING = re.compile(r"unknown (kernel|source|sink) '[^']+'|cannot import '[^']+'")


def _id(path) -> str:
    return str(path.relative_to(REPO / "examples"))


def missing_plugin(path) -> str | None:
    """Why the example cannot run here (a plug-in that is not installed), or None."""
    try:
        load_config(path)
    except ConfigError as exc:
        m = MISSING.search(str(exc))
        if m:
            return f"{_id(path)} needs a plug-in that is not installed: {m.group(0)}"
        raise
    return None


def test_there_are_examples_of_each_kind():
    names = {_id(p) for p in EXAMPLES}
    assert {
        "sim_to_hdf5.toml",
        "files_to_hdf5.toml",
        "asapo_lambda.toml",
        "beamline.toml",
        "compare/integrate_coarse.toml",
        "compare/integrate_fine.toml",
        "custom_kernel/hot_pixels.toml",
        "custom_kernel/image_peak.toml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=_id)
def test_example_is_a_valid_configuration(path):
    r = run_cli("config", "show", "--config", str(path), timeout=60)
    if r.returncode != 0:
        m = MISSING.search(r.stderr)
        if m:
            pytest.skip(f"{_id(path)} needs a plug-in that is not installed: {m.group(0)}")
    assert r.returncode == 0, r.stderr
    # The effective configuration reads back as the same configuration.
    shown = tomllib.loads(r.stdout)
    assert load_config(raw=shown).effective() == load_config(path).effective()
    assert shown["run"]["name"], "every example names its run (for shmpipe status)"


def _run(path, tmp_path, *overrides: str):
    cfg = load_config(path, ["run.progress=off", *overrides])
    summary = Pipeline(cfg).run()
    assert summary.exit_code == EXIT_OK, summary.error
    return summary


def test_sim_to_hdf5_runs(tmp_path):
    path = REPO / "examples" / "sim_to_hdf5.toml"
    out = tmp_path / "results_{stream}.h5"
    summary = _run(path, tmp_path, "source.frames=4", f'sinks.0.output="{out}"')
    assert summary.frames_out == 8  # two streams of four
    src = SimSource(SimParams(frames=4))  # the example's detector: default module shape, pool
    src.open()
    for stream in ("scan_0001", "scan_0002"):
        data = read_stream(str(tmp_path / f"results_{stream}.h5"), stream)
        assert data["message_id"].tolist() == [1, 2, 3, 4]
        for i, mid in enumerate(data["message_id"]):
            # Frames cycle through the pool of two; four frames a stream keeps the phase.
            parts = src.frame_parts((int(mid) - 1) % 2)
            assert bytes(data["checksum.digest"][i]) == frame_digest(parts)


def test_files_to_hdf5_runs(tmp_path):
    rng = np.random.default_rng(1)
    modules = [rng.integers(0, 4000, (3, 16, 24), dtype=np.uint16) for _ in range(12)]
    for i, m in enumerate(modules):
        with h5py.File(tmp_path / f"scan_m{i + 1:02d}.h5", "w") as f:
            f.create_dataset("entry/data/data", data=m)
    path = REPO / "examples" / "files_to_hdf5.toml"
    out = tmp_path / "reduced_{stream}.h5"
    _run(
        path,
        tmp_path,
        f'source.paths=["{tmp_path}/scan_m*.h5"]',
        f'sinks.0.output="{out}"',
    )
    data = read_stream(str(tmp_path / "reduced_scan.h5"), "scan")
    assert data["message_id"].tolist() == [1, 2, 3]
    for i in range(3):
        assert bytes(data["checksum.digest"][i]) == frame_digest([m[i] for m in modules])


def test_custom_kernel_example_runs(tmp_path):
    path = REPO / "examples" / "custom_kernel" / "hot_pixels.toml"
    out = tmp_path / "hot_{stream}.h5"
    _run(
        path,
        tmp_path,
        "source.frames=6",
        "source.module_shape=[40, 60]",
        "kernels.hot.threshold=60",  # tiny frames of fewer photons than the example's
        f'sinks.0.output="{out}"',
    )
    data = read_stream(str(tmp_path / "hot_scan_0001.h5"), "scan_0001")
    pool = SimSource(SimParams(frames=6, module_shape=[40, 60]))
    pool.open()
    for i, mid in enumerate(data["message_id"]):
        parts = pool.frame_parts((int(mid) - 1) % 2)
        assert data["hot.hot"][i].tolist() == [int((p > 60).sum()) for p in parts]
        np.testing.assert_allclose(data["hot.mean"][i], [p.mean() for p in parts])
    assert data["hot.hot"].sum() > 0


def test_asapo_lambda_example_runs(tmp_path):
    path = REPO / "examples" / "asapo_lambda.toml"
    reason = missing_plugin(path)
    if reason:
        pytest.skip(reason)
    pytest.importorskip("shmpipe.asapo.testing", reason="needs the ASAPO service (asapo-service)")
    from tests.asapo_example import run_asapo_example

    run_asapo_example(path, tmp_path)


def test_comparison_examples_run_side_by_side(tmp_path):
    paths = [REPO / "examples" / "compare" / f"integrate_{k}.toml" for k in ("coarse", "fine")]
    for path in paths:
        reason = missing_plugin(path)
        if reason:
            pytest.skip(reason)
    procs = []
    for path in paths:
        out = tmp_path / f"{path.stem}_{{stream}}.h5"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shmpipe",
                    "run",
                    "--config",
                    str(path),
                    "--frames",
                    "3",
                    "--progress",
                    "off",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    # Both ran on the same frames; each profile has the number of bins its file asks for.
    for path in paths:
        npt = tomllib.loads(path.read_text())["kernels"]["integrate"]["npt"]
        data = read_stream(str(tmp_path / f"{path.stem}_scan_0001.h5"), "scan_0001")
        assert data["message_id"].tolist() == [1, 2, 3]
        shapes = {k: np.shape(v) for k, v in data.items() if k.startswith("integrate.")}
        assert any(s and s[-1] == npt for s in shapes.values()), json.dumps(
            {k: list(v) for k, v in shapes.items()}
        )
