"""The Prometheus endpoint of a running pipeline: scraped with urllib while frames flow."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shmpipe.config import load_config
from shmpipe.engine.supervisor import Pipeline, StartupError
from shmpipe.observe.metrics import PipelineCollector
from shmpipe.observe.runs import live_runs
from shmpipe.observe.status import format_status
from shmpipe.shm.ring import RingGeometry, SlotRing
from tests.conftest import REPO, wait_for

FRAME_BYTES = 12 * 48 * 64 * 2  # twelve 48 x 64 uint16 modules (each a multiple of 64 bytes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float] | None:
    """Samples by (name, sorted labels); None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def write_config(tmp_path, port: int) -> str:
    path = tmp_path / "metrics.toml"
    path.write_text(
        f"""
[run]
name = "metrics-test"
workers = 2
on_error = "skip"
progress = "off"
[metrics]
port = {port}
[ring]
slots = 6
[source]
kind = "sim"
module_shape = [48, 64]
frames = 10
streams = 20
rate = 10.0
[kernels.checksum]
kind = "checksum"
[kernels.picky]
kind = "tests.plugins:FailOn"
ids = [3, 5]
"""
    )
    return str(path)


def test_metrics_endpoint_of_a_running_pipeline(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmpipe", "run", "--config", write_config(tmp_path, port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        stream = (("stream", "scan_0001"),)

        def first_stream_done():
            m = scrape(port)
            if m is None:
                return None
            done = m.get(("shmpipe_stream_frames_out_total", stream), 0) + m.get(
                ("shmpipe_stream_frames_error_total", stream), 0
            )
            return m if done >= 10 else None

        m = wait_for(first_stream_done, 60, "the first stream to be published")
        # Scraped while the run goes on (20 streams of 10 frames at 10 frames/s).
        assert proc.poll() is None
        assert m[("shmpipe_stream_frames_in_total", stream)] == 10
        assert m[("shmpipe_stream_frames_out_total", stream)] == 8
        assert m[("shmpipe_stream_frames_error_total", stream)] == 2  # ids 3 and 5
        assert m[("shmpipe_stream_bytes_in_total", stream)] == 10 * FRAME_BYTES
        assert m[("shmpipe_frames_in_total", ())] < 200
        assert m[("shmpipe_frames_error_total", ())] >= 2
        assert m[("shmpipe_info", (("chain", "checksum -> picky"), ("run", "metrics-test")))] == 1
        # Ring occupancy: every slot is in exactly one state.
        assert m[("shmpipe_ring_capacity_slots", ())] == 6  # ring.slots
        states = [v for (name, _), v in m.items() if name == "shmpipe_ring_slots"]
        assert len(states) == 7 and sum(states) == 6
        # Histograms: every frame passed checksum; picky times only the frames it passed.
        checksum_n = m[("shmpipe_kernel_seconds_count", (("kernel", "checksum"),))]
        picky_n = m[("shmpipe_kernel_seconds_count", (("kernel", "picky"),))]
        assert checksum_n >= 10 and picky_n <= checksum_n - 2
        assert m[("shmpipe_kernel_seconds_bucket", (("kernel", "checksum"), ("le", "+Inf")))] == (
            checksum_n
        )
        assert 8 <= m[("shmpipe_latency_seconds_count", ())] <= m[("shmpipe_frames_in_total", ())]
        assert m[("shmpipe_latency_seconds_sum", ())] > 0
        # Per process: both workers did some of the work, none restarted, all alive.
        w = [m[("shmpipe_process_frames_total", (("process", f"worker{i}"),))] for i in (0, 1)]
        assert sum(w) >= 10
        for role in ("dispatcher", "publisher", "worker0", "worker1"):
            assert m[("shmpipe_process_up", (("process", role),))] == 1
        assert m[("shmpipe_worker_restarts_total", (("process", "worker0"),))] == 0
        assert 0 <= m[("shmpipe_process_busy_ratio", (("process", "worker0"),))] <= 1
        for role in ("supervisor", "metrics", "worker0"):
            assert m[("shmpipe_process_resident_memory_bytes", (("process", role),))] > 5e6
            # CPU time moves in 10 ms clock ticks: a process with little to do may read 0.
            assert m[("shmpipe_process_cpu_seconds_total", (("process", role),))] >= 0
        cpu_total = sum(
            v for (name, _), v in m.items() if name == "shmpipe_process_cpu_seconds_total"
        )
        assert cpu_total > 0.05  # the supervisor alone spent more than that importing numpy
        # The metrics process is one more child: dispatcher, publisher, 2 workers, metrics.
        assert len(psutil.Process(proc.pid).children()) == 5
        # shmpipe status names the endpoint.
        info = next(r for r in live_runs() if r["name"] == "metrics-test")
        status = format_status(info, cpu_window_s=0)
        assert f"  metrics http://127.0.0.1:{port}/metrics" in status.splitlines()
        metrics_row = next(line.split() for line in status.splitlines() if "  metrics  " in line)
        assert int(metrics_row[1]) == info["metrics_pid"]
        assert info["metrics_pid"] in {c.pid for c in psutil.Process(proc.pid).children()}
        proc.send_signal(signal.SIGTERM)  # drain and stop; the source would go on
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert f"metrics: http://127.0.0.1:{port}/metrics" in err
    totals = re.search(r"(\d+) frames in, (\d+) out, (\d+) errors", err)
    n_in, n_out, n_err = map(int, totals.groups())
    assert n_in == n_out + n_err and n_err >= 2  # the drain finished every frame taken
    assert scrape(port) is None  # the endpoint ends with the run


def test_metrics_port_in_use_is_a_startup_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = load_config(
            raw={
                "run": {"progress": "off", "workers": 1},
                "metrics": {"port": port},
                "source": {"kind": "sim", "module_shape": [8, 8], "frames": 1},
            }
        )
        with pytest.raises(StartupError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            Pipeline(cfg).run()


def collector_names() -> set[str]:
    ring = SlotRing(RingGeometry(4, 4096, 4096, 64, 4))
    try:
        ring.streams.count_in("scan_0001", 100)  # per-stream series exist once a stream does
        c = PipelineCollector(ring, "t", [("checksum", "checksum")], os.getpid())
        return {s.name for fam in c.collect() for s in fam.samples}
    finally:
        ring.close()


def test_grafana_dashboard_uses_only_metrics_we_export():
    path = REPO / "examples" / "grafana" / "shmpipe-dashboard.json"
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    used = {n for e in exprs for n in re.findall(r"\bshmpipe_[a-z_]+", e)}
    names = collector_names()
    assert used, "the dashboard queries our metrics"
    assert used <= names, f"not exported: {sorted(used - names)}"
    # The list of figures is all on the dashboard.
    for needed in (
        "shmpipe_stream_frames_in_total",
        "shmpipe_stream_frames_out_total",
        "shmpipe_stream_frames_error_total",
        "shmpipe_stream_bytes_in_total",
        "shmpipe_ring_slots",
        "shmpipe_process_busy_seconds_total",
        "shmpipe_kernel_seconds_bucket",
        "shmpipe_latency_seconds_bucket",
        "shmpipe_worker_restarts_total",
        "shmpipe_process_cpu_seconds_total",
        "shmpipe_process_resident_memory_bytes",
    ):
        assert needed in used, needed


def test_stream_table_counts_per_stream_and_reuses_the_oldest_row():
    from shmpipe.shm.layout import (
        MAX_STREAMS,
    )

    ring = SlotRing(RingGeometry(4, 4096, 4096, 64, 4))
    try:
        st = ring.streams
        a = st.count_in("scan_a", 100)
        assert st.count_in("scan_a", 50) == a
        b = st.count_in("scan_b", 7)
        st.count_out(a, error=False)
        st.count_out(a, error=True)
        st.count_out(b, error=False)
        st.count_out(-1, error=False)  # a control record: no stream row, counted nowhere
        got = {s.stream: s for s in st.read()}
        assert (got["scan_a"].frames_in, got["scan_a"].bytes_in) == (2, 150)
        assert (got["scan_a"].frames_out, got["scan_a"].errors) == (1, 1)
        assert (got["scan_b"].frames_in, got["scan_b"].frames_out) == (1, 1)
        for i in range(MAX_STREAMS - 1):
            st.count_in(f"s{i}", 1)
        names = [s.stream for s in st.read()]
        assert len(names) == MAX_STREAMS
        assert "scan_a" not in names and names[0] == "scan_b"  # the oldest row went first
        st.count_in("scan_a", 1)  # a returning stream takes a fresh row, counted from zero
        assert {s.stream: s.frames_in for s in st.read()}["scan_a"] == 1
    finally:
        ring.close()
