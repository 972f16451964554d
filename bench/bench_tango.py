"""The Tango device's cost and speed: throughput with the device on and off (interleaved in one
run), and the time from a frame's publication to the change event a client receives.

    PYTHONPATH=. python -m pytest bench/bench_tango.py -s            # measure
    PYTHONPATH=. python -m pytest bench/bench_tango.py --benchmark-disable   # smoke

The pipelines run as ``shmpipe run`` commands: this process is the Tango client, and a process
that has started Tango's ORB must not fork a device server.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from bench.conftest import report
from shmpipe.benchmark import geometry_file, lambda_chain, percentiles, sim_source, steady_rate
from shmpipe.config import load_config, to_toml
from shmpipe.observe.runs import registry_dir
from shmpipe.shm.preview import PreviewTap

tango = pytest.importorskip(
    "tango", reason="pytango is not installed (pip install 'shmpipe[tango]')"
)

REPO = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chain(tmp: Path, shape) -> dict:
    kernels = lambda_chain(geometry_file(tmp, shape), shape, npt=500)
    del kernels["decompress"]
    kernels["stitch"]["input"] = "parts"
    kernels["stats"]["max_rois"] = 4
    return kernels


def _config(tmp: Path, name: str, source: dict, kernels: dict, device: bool, timing: Path):
    raw = {
        "run": {"name": name, "workers": 2, "progress": "off", "log_level": "warning"},
        "source": source,
        "kernels": kernels,
        "sinks": [{"kind": "shmpipe.benchmark:TimingSink", "path": str(timing)}],
    }
    port = _port()
    if device:
        raw["tango"] = {"device": "bench/shmpipe/1", "nodb": True, "port": port}
    path = tmp / f"{name}.toml"
    path.write_text(to_toml(load_config(raw=raw).effective()))
    return path, f"tango://127.0.0.1:{port}/bench/shmpipe/1#dbase=no"


def _start(path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shmpipe", "run", "--config", str(path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _steady_fps(tmp: Path, i: int, source: dict, kernels: dict, device: bool) -> float:
    timing = tmp / f"timing-{i}.npy"
    path, _ = _config(tmp, f"bench-tango-{i}", source, kernels, device, timing)
    proc = _start(path)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    t, _lat = np.load(timing)
    return steady_rate(t)


def test_throughput_device_on_off(benchmark, sizes, tmp_path):
    """Frames/s of the LAMBDA chain with the device on against off, interleaved."""
    frames = 12 if sizes.smoke else 400
    source = sim_source(frames, sizes.shape)
    kernels = _chain(tmp_path, sizes.shape)
    rounds = 1 if sizes.smoke else 3
    fps: dict[bool, list[float]] = {False: [], True: []}

    def measure():
        for r in range(rounds):
            for device in (False, True):
                fps[device].append(_steady_fps(tmp_path, 2 * r + device, source, kernels, device))

    benchmark.pedantic(measure, rounds=1)
    off, on = float(np.median(fps[False])), float(np.median(fps[True]))
    report(
        benchmark,
        "tango on/off",
        fps_off=off,
        fps_on=on,
        ratio=on / off,
        goal=0.97,
        runs_off=[round(float(x), 1) for x in fps[False]],
        runs_on=[round(float(x), 1) for x in fps[True]],
    )


def test_publish_to_change_event_latency(benchmark, sizes, tmp_path):
    """Time from a frame's publication (the tap's commit time) to the client's change event."""
    events = 5 if sizes.smoke else 120
    shape = sizes.shape
    source = sim_source(0, shape, rate=50.0 if sizes.smoke else 8.0)
    path, url = _config(
        tmp_path, "bench-tango-events", source, _chain(tmp_path, shape), True, tmp_path / "t.npy"
    )
    proc = _start(path)
    received: list[tuple[float, int]] = []
    lock = threading.Lock()

    def on_event(ev):
        if not ev.err and ev.attr_value is not None:
            now = time.time()
            with lock:
                received.append((now, int(ev.attr_value.value)))

    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                proxy = tango.DeviceProxy(url)
                proxy.ping()
                break
            except tango.DevFailed:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)  # the device server is starting
        info = json.loads((registry_dir() / "bench-tango-events.json").read_text())
        tap = PreviewTap.attach(info)
        device = psutil.Process(info["tango_pid"])
        cpu0, t0 = sum(device.cpu_times()[:2]), time.monotonic()

        def collect():
            eid = proxy.subscribe_event("LastAnalyzedFrame", tango.EventType.CHANGE_EVENT, on_event)
            end = time.monotonic() + 60 + events / 5
            while len(received) < events + 1 and time.monotonic() < end:
                time.sleep(0.05)  # events arrive on Tango's thread
            proxy.unsubscribe_event(eid)

        benchmark.pedantic(collect, rounds=1)
        # The device's own cost, robust on a shared machine where frames/s are noisy.
        device_cpu = (sum(device.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
        h = tap.history("stats.sum")
        published = dict(zip(h.message_id.tolist(), h.t.tolist(), strict=True))
        tap.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    with lock:
        got = received[1:]  # the first is the subscription's current value, not a change
    # The frame an event announces: its publication to the event's arrival.
    lat = np.array([t - published[mid] for t, mid in got if mid in published])
    # Every frame between the first and last announced: its publication to the first event
    # announcing it or a later one (what a client waiting for that frame sees; rate-limited
    # events make this up to 1 / event_hz longer).
    t_ev = np.array([t for t, _ in got])
    ids_ev = np.maximum.accumulate(np.array([mid for _, mid in got]))
    waits = [
        float(t_ev[np.searchsorted(ids_ev, mid)] - t_pub)
        for mid, t_pub in published.items()
        if got and got[0][1] < mid <= ids_ev[-1]
    ]
    p50, p99 = percentiles(lat)
    w50, w99 = percentiles(np.array(waits))
    report(
        benchmark,
        "publish -> change event",
        events=len(lat),
        announced_p50_s=p50,
        announced_p99_s=p99,
        frames=len(waits),
        any_frame_p50_s=w50,
        any_frame_p99_s=w99,
        device_cpu_cores=device_cpu,
    )
