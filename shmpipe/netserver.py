"""BoundedServerMixIn: a threading socket server that cannot be held open or flooded.

For every network-facing server of shmpipe (the ASAPO service's two ports, the metrics
endpoint): connections beyond ``max_connections`` are closed as they arrive, each live one
gets a receive/send timeout (an idle or half-sent request ends the connection instead of
holding a thread forever), and the listen backlog is large enough that a burst of connects
is queued by the kernel rather than retried by the clients one second later.

The timeouts are the kernel's (``SO_RCVTIMEO``/``SO_SNDTIMEO``) on a blocking socket, not
Python's socket timeout: that one puts the socket in non-blocking mode and adds a ``poll`` before
every ``recv`` and ``send``, which costs a small-message service measurably. A timed-out call
fails with ``BlockingIOError`` (or a short read), which ends the connection.
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


class BoundedServerMixIn:
    """Mixin for ``socketserver.ThreadingMixIn`` servers (put it first in the bases).

    Call :meth:`_init_bounds` before the server's own ``__init__`` binds the socket.
    """

    request_queue_size = 1024
    max_connections = 512
    idle_timeout_s: float | None = 300.0

    def _init_bounds(
        self, max_connections: int, idle_timeout_s: float | None, backlog: int
    ) -> None:
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.request_queue_size = backlog  # read by server_activate() -> listen()
        self._active = 0
        self._active_lock = threading.Lock()
        self._refused = 0
        self._last_refusal_log = 0.0

    @property
    def active_connections(self) -> int:
        """Connections being served now."""
        return self._active

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self._active_lock:
            if self._active >= self.max_connections:
                self._refused += 1
                refused, now = self._refused, time.monotonic()
                if now - self._last_refusal_log < 10.0:
                    return False
                self._last_refusal_log = now
            else:
                self._active += 1
                if self.idle_timeout_s is not None:
                    set_kernel_timeouts(request, self.idle_timeout_s)
                return True
        log.warning(
            "%s: %d connections open (the limit); refused %d so far",
            type(self).__name__,
            self.max_connections,
            refused,
        )
        return False

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            with self._active_lock:
                self._active -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr; one line in the log is enough
        # (what a client sent must never fill the log with tracebacks)
        exc = sys.exc_info()[1]
        quiet = isinstance(exc, ConnectionError | TimeoutError | BlockingIOError)
        level = logging.DEBUG if quiet else logging.WARNING
        log.log(
            level, "%s: connection ended by %s: %s", type(self).__name__, type(exc).__name__, exc
        )

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except RuntimeError:  # no thread could be started: give the slot back
            with self._active_lock:
                self._active -= 1
            self.shutdown_request(request)  # type: ignore[attr-defined]


def set_kernel_timeouts(sock: socket.socket, seconds: float) -> None:
    """Make every blocking receive and send on ``sock`` fail after ``seconds`` of no progress."""
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
