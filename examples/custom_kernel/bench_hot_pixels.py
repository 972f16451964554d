"""Benchmark of the example kernel with pytest-benchmark (see docs/custom-kernel.md).

python -m pytest examples/custom_kernel/bench_hot_pixels.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest

from examples.custom_kernel.hot_pixels import module_stats


@pytest.fixture(scope="module")
def module():
    # One LAMBDA 9M module of Poisson counts.
    return np.random.default_rng(0).poisson(100, (516, 1556)).astype(np.uint16)


def test_module_stats_speed(benchmark, module):
    hot, mean = np.zeros(1, np.int64), np.zeros(1)
    module_stats(module, 120, hot, mean, 0)  # compile (or load from cache) outside the timing
    benchmark(module_stats, module, 120, hot, mean, 0)
    assert hot[0] == np.count_nonzero(module > 120)
    assert mean[0] == pytest.approx(module.mean())
