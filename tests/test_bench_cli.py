"""``shmpipe bench --quick``: the report has every section and the plots exist (no timings
are asserted: the quick mode runs tiny frames to check the code paths)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

SECTIONS = {
    "meta",
    "copy",
    "engine_bound",
    "naive_pool",
    "naive_pool_lambda",
    "small_messages",
    "startup",
    "scaling",
    "end_to_end",
    "latency",
    "model",
    "goals",
}


def test_bench_quick_writes_report_and_plots(tmp_path):
    out = tmp_path / "report"
    res = run_cli(
        "bench", "--quick", "--workers", "1,2", "--no-cold-start", "--output", str(out),
        timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert SECTIONS <= set(report)
    assert [r["workers"] for r in report["scaling"]["runs"]] == [1, 2]
    for key in ("fps_steady", "gbps_steady", "latency_p50_s", "latency_p99_s", "kernel_ms"):
        assert key in report["engine_bound"]
    assert set(report["scaling"]["runs"][0]["kernel_ms"]) == {
        "decompress",
        "stitch",
        "integrate",
        "stats",
    }
    for key in ("p50_s", "p99_s", "chain_ms", "p99_over_chain"):
        assert key in report["latency"]
    for key in ("predicted_fps", "nodes_for_detector", "assumptions", "bound_by"):
        assert key in report["model"]
    assert "warm" in report["startup"]
    # Toy frames check the machinery only: no goal judged, no node model printed.
    assert report["goals"] == [] and "no goal is judged" in report["note"]
    said = res.stdout + res.stderr
    assert "no goal is judged" in res.stdout
    assert "NOT met" not in said and " met" not in said and "nodes for" not in said
    assert "issue" not in said.lower()
    md = (out / "report.md").read_text()
    assert "| goal |" not in md and "| node model |" not in md and "no goal is judged" in md
    beam = report["beamline"]
    assert set(beam["chains"]) == {"beamline", "stitch_first"}
    assert "stitch" not in beam["chains"]["beamline"]["stage_cpu_ms"]
    assert beam["max_relative_difference"] <= 1e-6
    assert "## Beamline chain vs stitch-first chain" in md and "nodes for" not in md
    # Every figure is a number (a run too short for a steady window says so) and the start-up
    # lines carry theirs; the CPU model and the bandwidth measured in the run are named.
    assert "nan" not in said.lower() and "nan" not in md.lower(), [
        line for line in (said + md).splitlines() if "nan" in line.lower()
    ]
    assert "first result after" in res.stderr
    cpu = report["machine"]["cpu_model"]
    assert cpu and f"CPU: {cpu}; one core reads" in md
    assert report["machine"]["read_gbs_one_core"] > 0
    assert report["model"]["assumptions"]["mem_bandwidth_gbs"] == report["machine"]["read_gbs_node"]
    chain = beam["chains"]["beamline"]
    assert chain["bandwidth_bounds"]["integrate"]["over_bound"] > 0
    assert chain["integrate_alone_ms"]["integrate"] > 0
    assert any(v["engine"] for v in chain["integrate_engines"].values())
    # The decompression stage: its output rate per core and the decoder build chosen here.
    assert "GB/s of decoded modules per core" in md
    from native_kernels.bslz4_decode import builds

    decoder = chain["integrate_engines"]["decompress bitshuffle-LZ4"]
    assert (
        decoder["engine"] in {b.name for b in builds()}  # a library build, or its LZ4 + ours
        and f"- `decompress bitshuffle-LZ4`: {decoder['engine']}" in md
    )
    for png in ("throughput_vs_workers.png", "stages.png"):
        assert (out / png).stat().st_size > 1000
    # The latency plot is drawn only over frames published after settling.
    assert (out / "latency.png").exists() == (report["latency"]["frames_counted"] > 0)


def test_goal_names_are_the_benchmarks_own():
    from shmpipe.benchmark import GOALS

    assert not [k for k in GOALS if "issue" in k]


def test_node_model_takes_the_tightest_bound():
    from shmpipe.benchmark import ModelAssumptions, node_model

    a = ModelAssumptions(cores=16, service_cores=2, mem_bandwidth_gbs=80, detector_rate_hz=2000)
    m = node_model({"k1": 40.0, "k2": 15.0}, 1.0, 1.0, 300e6, a)
    assert m["workers"] == 14
    assert abs(m["fps_compute"] - 14 / 0.056) < 1e-6
    assert abs(m["fps_memory"] - 80e9 / 300e6) < 1e-6
    assert m["bound_by"] == "compute" and m["predicted_fps"] == m["fps_compute"]
    assert m["nodes_for_detector"] == 8  # 2000 / 250
    m = node_model({"k": 1.0}, 0.0, 1.0, 300e6, a)
    assert m["bound_by"] == "memory bandwidth"


def test_benchmark_chains_take_the_detector_from_the_source_without_deprecated_keys(
    tmp_path, caplog
):
    """The LAMBDA chains name no kernel geometry key (each would log a deprecation warning):
    the run's detector is the simulated source's layout, the one the geometry file holds."""
    import logging

    from native_kernels.geometry import load_geometry
    from shmpipe.benchmark import geometry_file, lambda_chain, sim_source
    from shmpipe.benchmark.beamline import chains
    from shmpipe.config import load_config
    from shmpipe.engine.startup import run_detector

    shape = (32, 48)
    geo = geometry_file(tmp_path, shape)
    tables = {"lambda": lambda_chain(geo, shape), **chains(geo, shape)}
    for name, kernels in tables.items():
        with caplog.at_level(logging.WARNING, logger="shmpipe.config"):
            raw = {"source": sim_source(2, shape), "kernels": kernels, "sinks": [{"kind": "null"}]}
            cfg = load_config(raw=raw)
        assert "deprecated" not in caplog.text, name
        detector = run_detector(cfg, cfg.source_instance().layout())
        assert detector.geometry.digest() == load_geometry(str(geo)).digest(), name


def test_steady_rate_skips_the_start():
    import numpy as np

    from shmpipe.benchmark import steady_rate

    t = np.concatenate([[0.0, 5.0], 5.0 + np.arange(1, 99) * 0.01])  # slow start, then 100/s
    assert abs(steady_rate(t) - 100.0) < 1e-6


def test_bench_compare_refuses_a_revision_that_is_not_a_commit(tmp_path):
    res = run_cli("bench", "--compare", "no-such-revision", "--output", str(tmp_path / "r"))
    assert res.returncode == 2
    assert "--compare 'no-such-revision': not a commit" in res.stderr
    assert not (tmp_path / "r").exists()  # refused before anything ran


@pytest.mark.slow
def test_bench_compare_runs_both_trees_alternately(tmp_path):
    """HEAD against this checkout: both sides measured, ratios, CPU model and bandwidth."""
    out = tmp_path / "r"
    res = run_cli(
        "bench", "--compare", "HEAD", "--quick", "--rounds", "2", "--output", str(out),
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "compare.json").read_text())
    assert report["rounds"] == 2 and report["cpu_model"] in res.stdout
    assert report["read_bandwidth_gbs"]["this"] > 0 and report["read_bandwidth_gbs"]["rev"] > 0
    names = {r["measurement"] for r in report["rows"]}
    assert names == {
        "integrate1d stitched no",
        "integrate1d stitched bbox",
        "decompress 12 modules",
    }
    assert "decompress bitshuffle-LZ4" in report["engines"]
    for row in report["rows"]:
        assert row["rev_over_this"] > 0 and row["over_bound"] > 0
    assert res.stderr.count("round 1/2: rev") == 1 and res.stderr.count("round 2/2: this") == 1
