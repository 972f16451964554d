"""A browser stand-in for the view benchmarks: subscribes over the WebSocket and writes, per
frame received, the time from publish to arrival, plus the view process's CPU seconds, the
images received and the last status pushed (with the publisher's tap-copy counters).

    python -m bench.view_client PORT IMAGE SECONDS OUT.json
"""

from __future__ import annotations

import json
import struct
import sys
import time

import psutil
from websockets.sync.client import connect

from shmpipe.observe.runs import live_runs


def main(port: int, image: str, seconds: float, out: str) -> None:
    deadline = time.monotonic() + 120
    ws = None
    while ws is None:
        try:
            ws = connect(f"ws://127.0.0.1:{port}/ws", max_size=None)
        except Exception:  # noqa: BLE001 - not listening yet, or already closing
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # the pipeline is still starting
    view = next((r for r in live_runs() if r.get("view_pid")), {})
    proc = psutil.Process(view["view_pid"]) if view else None
    latencies, seen, status, first_status = [], set(), {}, {}

    def cpu_s() -> float:
        try:
            return sum(proc.cpu_times()[:2]) if proc else float("nan")
        except psutil.Error:
            return float("nan")  # the view ended with the run

    with ws:
        ws.send(json.dumps({"image": {"name": image, "width": 1024}}))
        cpu0, t0, own0 = cpu_s(), time.monotonic(), time.process_time()
        # The view's CPU and the images are counted up to the last frame received, so that
        # a run that ends before ``seconds`` (and takes the view with it) is measured too.
        cpu, elapsed, images, own = 0.0, 0.0, 0, 0.0
        end = t0 + seconds
        while time.monotonic() < end:
            try:
                msg = ws.recv(timeout=max(0.01, end - time.monotonic()))
            except TimeoutError:
                break
            except Exception:  # noqa: BLE001 - the run ended
                break
            now = time.time()
            n = struct.unpack(">I", msg[:4])[0]
            header = json.loads(msg[4 : 4 + n])
            status = header.get("status") or status
            first_status = first_status or status
            mid = header.get("message_id")
            if mid is not None and "image" in header and mid not in seen:
                seen.add(mid)
                latencies.append(now - header["t"])
            c = cpu_s()
            if c == c:
                cpu, elapsed, images = c - cpu0, time.monotonic() - t0, len(latencies)
                own = time.process_time() - own0
    with open(out, "w") as f:
        doc = {
            "client_cpu_s": own,  # the browser stand-in's own CPU, over the same time
            "latency_s": latencies,
            "view_cpu_s": cpu,
            "elapsed_s": elapsed,
            "images": images,
            "status": status,
            "first_status": first_status,  # the tap's counters at the start of the window
        }
        json.dump(doc, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4])
