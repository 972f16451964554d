"""The metrics endpoint's HTTP side against slow and stray clients (loopback only)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Gauge

from shmpipe.observe.metrics_http import MetricsHTTPServer
from tests import asapo_wire as wire


@pytest.fixture
def endpoint():
    registry = CollectorRegistry()
    Gauge("shmpipe_test_value", "A value to scrape.", registry=registry).set(42)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = MetricsHTTPServer(sock, registry, timeout_s=1.0, max_connections=8)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    server.shutdown()
    thread.join()
    server.server_close()


def _get(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_half_sent_request_does_not_block_scrapes_and_times_out(endpoint):
    with wire.connect(endpoint) as stuck:
        stuck.sendall(b"GET /metr")  # and nothing more
        t0 = time.monotonic()
        status, text = _get(endpoint, "/metrics")
        assert status == 200 and "shmpipe_test_value 42.0" in text
        assert time.monotonic() - t0 < 1.0  # served while the other request hangs
        assert wire.closed_by_peer(stuck)  # which is closed after its timeout
        assert time.monotonic() - t0 < 5.0


def test_only_metrics_is_served(endpoint):
    for path in ("/", "/favicon.ico", "/metrics/../secret", "/metricsx"):
        status, text = _get(endpoint, path)
        assert status == 404 and "shmpipe_test_value" not in text
    assert _get(endpoint, "/metrics?name[]=shmpipe_test_value")[0] == 200
