#!/usr/bin/env python
"""Send simulated LAMBDA 9M frames to ASAPO with the real producer (the demo's detector).

Each frame is a dataset of 12 module parts (raw uint16, or bitshuffle-LZ4 compressed), sent at
a given rate over one or more streams, each stream ended with a finished flag naming the next.

    python scripts/asapo_produce.py --endpoint localhost:8400 --frames 100 --streams 2 --rate 50
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np


def send_frames(
    endpoint: str,
    beamtime: str = "asapo_test",
    data_source: str = "detector",
    token: str = "",
    frames: int = 100,
    streams: list[str] | None = None,
    rate: float = 0.0,
    compression: str = "none",
    module_shape: tuple[int, int] = (516, 1556),
    modules: int = 12,
    seed: int = 0,
    finish: bool = True,
    stream_meta: dict | None = None,
    timeout_ms: int = 30000,
) -> int:
    """Send ``frames`` datasets to each stream; return how many parts failed to send."""
    import asapo_producer

    from shmpipe.plugins.sources.sim import SimParams, SimSource

    streams = streams or ["scan_0001"]
    sim = SimSource(
        SimParams(
            module_shape=list(module_shape),
            modules=modules,
            seed=seed,
            compression=compression,
            pool=2,
        )
    )
    sim.open()
    producer = asapo_producer.create_producer(
        endpoint, "processed", beamtime, "auto", data_source, token, 2, timeout_ms
    )
    # The client's JSON log lines are retries it recovers from; failures are counted below.
    producer.set_log_level("error")
    failed = []
    lock = threading.Lock()

    def callback(payload, err):
        if err is not None and not isinstance(err, asapo_producer.AsapoServerWarning):
            with lock:
                failed.append(err)

    t0 = time.monotonic()
    sent = 0
    for si, stream in enumerate(streams):
        if stream_meta is not None:
            producer.send_stream_meta(json.dumps(stream_meta), stream=stream, callback=callback)
        for i in range(1, frames + 1):
            if rate > 0:
                wait = t0 + sent / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # detector pacing
            parts = sim.frame_parts(sent % 2)
            for m, part in enumerate(parts, start=1):
                data = np.ascontiguousarray(part).reshape(-1).view(np.uint8)
                producer.send(
                    i,
                    f"{stream}/frame_{i:06d}_m{m:02d}",
                    data,
                    user_meta=json.dumps({"frame": i, "module": m}),
                    dataset=(m, len(parts)),
                    stream=stream,
                    callback=callback,
                )
            sent += 1
        if finish:
            producer.wait_requests_finished(timeout_ms)
            nxt = streams[si + 1] if si + 1 < len(streams) else None
            producer.send_stream_finished_flag(stream, frames, next_stream=nxt, callback=callback)
    producer.wait_requests_finished(timeout_ms)
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--endpoint", default="localhost:8400")
    ap.add_argument("--beamtime", default="asapo_test")
    ap.add_argument("--data-source", default="detector")
    ap.add_argument("--token", default="")
    ap.add_argument("--frames", type=int, default=100, help="frames per stream")
    ap.add_argument("--streams", default="scan_0001", help="comma-separated stream names, or N")
    ap.add_argument("--rate", type=float, default=0.0, help="frames/s; 0: as fast as possible")
    ap.add_argument("--compression", choices=["none", "bitshuffle-lz4"], default="none")
    ap.add_argument("--module-shape", default="516,1556")
    ap.add_argument("--no-finish", action="store_true", help="send no finished flags")
    a = ap.parse_args(argv)
    streams = (
        [f"scan_{i + 1:04d}" for i in range(int(a.streams))]
        if a.streams.isdigit()
        else a.streams.split(",")
    )
    shape = tuple(int(x) for x in a.module_shape.split(","))
    t0 = time.monotonic()
    failed = send_frames(
        a.endpoint,
        a.beamtime,
        a.data_source,
        a.token,
        a.frames,
        streams,
        a.rate,
        a.compression,
        shape,
        finish=not a.no_finish,
    )
    dt = time.monotonic() - t0
    n = a.frames * len(streams)
    print(
        f"sent {n} frames of 12 parts to {a.endpoint} {a.beamtime}/{a.data_source} "
        f"streams {', '.join(streams)} in {dt:.1f} s ({n / dt:.1f} frames/s); {failed} failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
