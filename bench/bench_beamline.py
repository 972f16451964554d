"""The beamline chain against the stitch-first chain, side by side in one run.

Per stage CPU and bytes, frames/s per worker at 1 and 2 workers and their ratio, the largest
relative profile difference, RSS/PSS per worker, the node model's frames/s and nodes for a
2 kHz LAMBDA 9M (see ``shmpipe.benchmark.beamline``). Run::

    PYTHONPATH=. python -m pytest bench/bench_beamline.py -s

``shmpipe bench --beamline`` prints the same comparison as a Markdown table.
"""

from __future__ import annotations

import os

# Before anything in this process runs bitshuffle: with its OpenMP thread pool started, the
# pipelines this benchmark forks would deadlock in their first bitshuffle call.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from bench.conftest import report  # noqa: E402
from shmpipe.benchmark import geometry_file  # noqa: E402
from shmpipe.benchmark.beamline import compare_chains, report_markdown  # noqa: E402


def test_beamline_vs_stitch_first(benchmark, sizes, tmp_path, table_cache):
    geo = geometry_file(tmp_path, sizes.shape)
    smoke = sizes.smoke
    r = benchmark.pedantic(
        compare_chains,
        args=(geo, sizes.shape, 12, tmp_path, table_cache),
        kwargs=dict(
            frames=6 if smoke else 150,
            stage_frames=2 if smoke else 20,
            workers=(1,) if smoke else (1, 2),  # smoke: every code path once, quickly
            memory_workers=(1,) if smoke else (1, 2, 4),
            repeats=1 if smoke else 2,
        ),
        rounds=1,
        iterations=1,
    )
    a, b = r["chains"]["beamline"], r["chains"]["stitch_first"]
    for c in (a, b):
        for w, e in c["engine"].items():
            assert not e["runs"][0]["error"], (w, e["runs"][0]["error"])
    print("\n" + report_markdown(r))
    report(
        benchmark,
        "beamline vs stitch-first",
        cpu_ms_beamline=a["cpu_ms_per_frame"],
        cpu_ms_stitch_first=b["cpu_ms_per_frame"],
        cpu_ratio=r["cpu_ratio"],
        **{f"fps_per_worker_ratio_{w}": v for w, v in r["fps_per_worker_ratio"].items()},
        max_relative_difference=r["max_relative_difference"],
        model_fps=a["model"]["predicted_fps"],
        model_nodes_2khz=a["model"]["nodes_for_detector"],
    )
