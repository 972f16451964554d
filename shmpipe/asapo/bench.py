"""Throughput of the standalone service with the real clients: ``python -m shmpipe.asapo.bench``.

For each case, a producer sends ``frames`` frames of ``parts`` parts of ``size`` bytes (a
12-part dataset per frame models the LAMBDA 9M's modules), waits until the service confirmed
them all, then a consumer reads them back (``get_next``/``get_next_dataset`` and
``retrieve_data`` for each part, i.e. meta over HTTP and payload over the cache-read op 6).
A third phase runs producer and consumer at the same time (end to end).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from shmpipe.asapo.testing import running_asapo


@dataclass
class Result:
    """Rates of one phase."""

    phase: str
    frames: int
    seconds: float
    part_bytes: int
    parts: int

    def line(self) -> str:
        mb = self.frames * self.parts * self.part_bytes / 1e6
        msgs = self.frames * self.parts
        return (
            f"{self.phase:<9} {self.frames:>6} frames x {self.parts:>2} x "
            f"{self.part_bytes / 1e3:>8.1f} kB: {self.frames / self.seconds:>8.1f} frames/s "
            f"{msgs / self.seconds:>9.1f} msg/s {mb / self.seconds:>8.1f} MB/s"
        )


def _produce(producer, stream: str, frames: int, parts: int, data: np.ndarray) -> None:
    errors: list = []

    def callback(_payload, err):
        if err is not None:
            errors.append(err)

    for i in range(1, frames + 1):
        for part in range(1, parts + 1):
            dataset = (part, parts) if parts > 1 else None
            producer.send(
                i,
                f"{stream}/{i}_{part}.bin",
                data,
                stream=stream,
                dataset=dataset,
                callback=callback,
            )
    producer.wait_requests_finished(600_000)
    if errors:
        raise RuntimeError(f"{len(errors)} send errors, first: {errors[0]}")


def _consume(consumer, stream: str, frames: int, parts: int, size: int) -> None:
    import asapo_consumer

    group = consumer.generate_group_id()
    got = 0
    while got < frames:
        try:
            if parts > 1:
                dataset = consumer.get_next_dataset(group, stream=stream, ordered=False)
                for meta in dataset["content"]:
                    assert consumer.retrieve_data(meta).nbytes == size
            else:
                data, _ = consumer.get_next(group, meta_only=False, stream=stream, ordered=False)
                assert data.nbytes == size
        except asapo_consumer.AsapoEndOfStreamError:
            continue  # end to end: the producer is behind
        got += 1


def run_case(asapo, size: int, parts: int, frames: int, nthreads: int) -> list[Result]:
    """Produce then consume, then both at once; returns the three phases' rates."""
    data = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    producer = asapo.producer("bench", nthreads=nthreads, timeout_ms=60_000)
    producer.set_requests_queue_limits(0, 2000)  # bounded queue volume (MB) for big payloads
    _produce(producer, f"warmup{size}_{parts}", 1, 1, data[:16])  # receiver discovery
    results = []
    stream = f"s{size}_{parts}"
    t0 = time.perf_counter()
    _produce(producer, stream, frames, parts, data)
    results.append(Result("produce", frames, time.perf_counter() - t0, size, parts))
    consumer = asapo.consumer("bench", timeout_ms=1000)
    t0 = time.perf_counter()
    _consume(consumer, stream, frames, parts, size)
    results.append(Result("consume", frames, time.perf_counter() - t0, size, parts))
    stream += "_e2e"
    t0 = time.perf_counter()
    reader = threading.Thread(target=_consume, args=(consumer, stream, frames, parts, size))
    reader.start()
    _produce(producer, stream, frames, parts, data)
    reader.join()
    results.append(Result("end2end", frames, time.perf_counter() - t0, size, parts))
    producer.cleanup()
    return results


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark cases and print one line per phase."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nthreads", type=int, default=4, help="producer threads")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply frame counts")
    parser.add_argument(
        "--dir", default=None, help="parent of the service's data folder (default: the temp dir)"
    )
    args = parser.parse_args(argv)
    cases = [
        (1000, 1, 3000),
        (1000, 12, 300),
        (1_600_000, 1, 200),
        (1_600_000, 12, 30),
        (20_000_000, 1, 20),
    ]
    with (
        tempfile.TemporaryDirectory(prefix="asapo-bench-", dir=args.dir) as tmp,
        running_asapo(tmp) as asapo,
    ):
        for size, parts, frames in cases:
            for result in run_case(
                asapo, size, parts, max(1, int(frames * args.scale)), args.nthreads
            ):
                print(result.line(), flush=True)


if __name__ == "__main__":
    main()
