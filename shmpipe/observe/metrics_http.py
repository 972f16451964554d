"""MetricsHTTPServer: the HTTP side of the metrics process, safe to expose on a shared node.

Threaded, so a slow or half-sent request cannot hold up a scrape; every connection has a
timeout and their number is capped (:class:`~shmpipe.netserver.BoundedServerMixIn`); only
``/metrics`` answers (anything else is 404); scrapes run one at a time, because the collector
keeps per-scrape state (CPU deltas).
"""

from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import MetricsHandler
from prometheus_client.registry import Collector

from shmpipe.netserver import BoundedServerMixIn

#: seconds a scrape connection may stay silent (Prometheus itself times out after 10 s)
SCRAPE_TIMEOUT_S = 10.0
#: connections served at once: Prometheus, a browser or two, and a curl
MAX_SCRAPE_CONNECTIONS = 32


class MetricsHTTPServer(BoundedServerMixIn, ThreadingHTTPServer):
    """Serve ``registry`` at ``/metrics`` on an already bound and listening ``sock``.

    Parameters
    ----------
    sock
        The listening socket (bound by the supervisor before any fork).
    registry
        What a scrape collects.
    timeout_s, max_connections
        Per-connection timeout and the cap on connections served at once.
    """

    daemon_threads = True

    def __init__(
        self,
        sock: socket.socket,
        registry: Collector,
        timeout_s: float = SCRAPE_TIMEOUT_S,
        max_connections: int = MAX_SCRAPE_CONNECTIONS,
    ) -> None:
        self._init_bounds(max_connections, timeout_s, backlog=128)
        super().__init__(sock.getsockname()[:2], _scrape_handler(registry), bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # already bound and listening
        host, port = sock.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)


def _scrape_handler(registry: Collector) -> type[MetricsHandler]:
    lock = threading.Lock()

    class ScrapeHandler(MetricsHandler):
        def do_GET(self) -> None:
            if urlsplit(self.path).path != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            with lock:
                super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Log nothing (a scrape every few seconds)."""

    ScrapeHandler.registry = registry
    return ScrapeHandler
