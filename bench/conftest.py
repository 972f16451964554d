"""Shared fixtures of the benchmark suites: sizes for real runs and for smoke mode.

``pytest bench`` measures (full-size LAMBDA 9M frames); ``pytest bench --benchmark-disable``
(CI) runs every benchmark once on tiny frames so the code paths never rot. No test asserts a
time: the figures go to ``benchmark.extra_info`` and to stdout (``-s``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from shmpipe.benchmark import LAMBDA_MODULE_SHAPE, QUICK_MODULE_SHAPE, geometry_file, lambda_chain


@dataclass(frozen=True)
class Sizes:
    smoke: bool
    shape: tuple[int, int]
    null_frames: int
    pool_frames: int
    small_messages: int
    chain_frames: int
    copy_repeats: int


@pytest.fixture(scope="session", autouse=True)
def _isolated_run_registry(tmp_path_factory):
    os.environ.setdefault("SHMPIPE_RUN_DIR", str(tmp_path_factory.mktemp("runs")))


@pytest.fixture
def sizes(benchmark) -> Sizes:
    """Frame shape and counts: full size when measuring, tiny in smoke mode."""
    if benchmark.disabled:
        return Sizes(True, QUICK_MODULE_SHAPE, 30, 10, 300, 6, 5)
    return Sizes(False, LAMBDA_MODULE_SHAPE, 1000, 200, 40000, 60, 60)


@pytest.fixture(scope="session")
def table_cache(tmp_path_factory):
    """One kernel-table cache (CSR/LUT) for the session, so only the first run builds it."""
    return tmp_path_factory.mktemp("tables")


@pytest.fixture
def chain(sizes, tmp_path) -> dict:
    """The LAMBDA chain (decompress, stitch, integrate, statistics) for the sizes' frames."""
    return lambda_chain(geometry_file(tmp_path, sizes.shape), sizes.shape)


def report(benchmark, title: str, **figures) -> None:
    """Store figures in ``benchmark.extra_info`` and print them."""
    benchmark.extra_info.update(figures)
    print(f"\n{title}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in figures.items()))


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
