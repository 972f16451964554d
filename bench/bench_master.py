"""DECTRIS master files: what the dispatcher pays per frame, raw chunks against HDF5 decoding.

    pytest bench/bench_master.py -s                         # EIGER2 4M frames, uint32
    pytest bench/bench_master.py --benchmark-disable        # smoke mode: tiny frames, once

``read_raw`` is the files source with ``raw_chunks = true`` (the chunk copied as stored; the
workers decompress: ``decompress``); ``read_decoded`` is HDF5 decoding the frame in the
dispatcher (``raw_chunks = false``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from native_kernels.compression import decompress_into
from native_kernels.master import read_master
from scripts.make_eiger_master import make_master
from shmpipe.plugins.sources.files import FileSource, FilesParams

FRAMES = 4


@pytest.fixture
def master(benchmark, tmp_path_factory):
    detector = "Pilatus100k" if benchmark.disabled else "Eiger2_4M"
    path, frames = make_master(
        tmp_path_factory.mktemp("master"), detector=detector, frames=FRAMES, frames_per_file=FRAMES
    )
    return path, frames


def _parts(path, raw: bool):
    src = FileSource(FilesParams(paths=[str(path)], layout="master", raw_chunks=raw))
    src.open()
    parts = [src.next(1.0).parts[0] for _ in range(FRAMES)]
    return src, parts


def _record(benchmark, name: str, nbytes: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        mean = stats.stats.mean
        benchmark.extra_info[name] = {"ms": mean * 1e3, "GB/s": nbytes / mean / 1e9}
        print(f"\n{name}: {mean * 1e3:.2f} ms per frame, {nbytes / mean / 1e9:.2f} GB/s")


@pytest.mark.parametrize("raw", [True, False], ids=["read_raw", "read_decoded"])
def test_dispatcher_read(benchmark, master, raw):
    path, frames = master
    src, parts = _parts(path, raw)
    try:
        bufs = [np.empty(p.nbytes, np.uint8) for p in parts]
        it = itertools.cycle(range(FRAMES))

        def read():
            i = next(it)
            parts[i].read_into(bufs[i])

        benchmark.pedantic(read, rounds=20, iterations=1, warmup_rounds=1)
        _record(benchmark, "read_raw" if raw else "read_decoded", frames[0].nbytes)
    finally:
        src.close()


def test_worker_decompress(benchmark, master):
    path, frames = master
    src, parts = _parts(path, True)
    try:
        bufs = [np.empty(p.nbytes, np.uint8) for p in parts]
        for p, b in zip(parts, bufs, strict=True):
            p.read_into(b)
    finally:
        src.close()
    m = read_master(path)
    out = np.empty(m.shape, m.dtype)
    it = itertools.cycle(bufs)
    benchmark.pedantic(
        lambda: decompress_into(next(it), out, "bslz4_h5"), rounds=20, iterations=1, warmup_rounds=1
    )
    _record(benchmark, "decompress", frames[0].nbytes)
