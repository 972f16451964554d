"""The HDF5 sink's cost per commit: a batch of integrated profiles written in SWMR mode.

A commit writes the batch, flushes, advances the committed row count and flushes again (what
makes a killed run's file safe); this measures that against the publisher's budget. Run::

    PYTHONPATH=. python -m pytest bench/bench_results.py -s
"""

from __future__ import annotations

import numpy as np

from bench.conftest import report
from shmpipe.api.kernel import ArraySpec
from shmpipe.api.sink import Record, RunInfo
from shmpipe.plugins.sinks.hdf5 import HDF5Params, HDF5Sink

NPT = 1000
BATCH = 64  # run.commit_every's default


def _sink(path) -> HDF5Sink:
    specs = [
        ArraySpec("integrate.radial", (NPT,), "float64", unit="q_nm^-1"),
        ArraySpec(
            "integrate.intensity",
            (NPT,),
            "float64",
            axis="integrate.radial",
            errors="integrate.sigma",
        ),
        ArraySpec("integrate.sigma", (NPT,), "float64", axis="integrate.radial"),
        ArraySpec("stats.sum", (), "float64", unit="counts"),
    ]
    sink = HDF5Sink(HDF5Params(output=str(path)))
    cfg = {"run": {}, "ring": {}, "metrics": {}, "source": {"kind": "sim"}, "kernels": {}}
    sink.open(RunInfo("bench", {**cfg, "sinks": []}, "h", ["integrate"], specs, run_uid="b"))
    return sink


def test_hdf5_commit_of_a_batch_of_profiles(benchmark, sizes, tmp_path):
    sink = _sink(tmp_path / "bench.h5")
    radial = np.linspace(0.1, 40, NPT)
    profile = np.random.default_rng(0).random(NPT)
    next_id = iter(range(1, 10**9))

    def batch() -> None:
        for _ in range(BATCH):
            mid = next(next_id)
            arrays = {
                "integrate.radial": radial,
                "integrate.intensity": profile,
                "integrate.sigma": profile,
                "stats.sum": np.float64(mid),
            }
            sink.write(Record("scan", mid, f"scan/frame_{mid:06d}", {}, arrays, 0.0))
        sink.commit()

    rounds = 3 if sizes.smoke else 200
    benchmark.pedantic(batch, rounds=rounds, warmup_rounds=1)
    sink.close()
    if not benchmark.disabled:
        med = benchmark.stats.stats.median
        report(
            benchmark,
            "hdf5 commit",
            batch=BATCH,
            ms_per_commit=med * 1e3,
            us_per_row=med / BATCH * 1e6,
            rows_per_s=BATCH / med,
        )
