"""TrackedConnections: a threading server that can end its live connections on stop."""

from __future__ import annotations

import socket
import threading

from shmpipe.netserver import BoundedServerMixIn


class TrackedConnections(BoundedServerMixIn):
    """Mixin for ``socketserver`` threading servers whose clients keep connections open.

    Bounded as every shmpipe server is (:class:`~shmpipe.netserver.BoundedServerMixIn`:
    connection limit, idle timeout, listen backlog). Handlers call :meth:`track` when a
    connection starts and ends; :meth:`close_all` shuts
    every live one down so that handler threads return and ``server_close()`` can join them
    (the ASAPO clients reuse connections, so without this a stop would wait for them).
    """

    allow_reuse_address = True
    daemon_threads = False  # joined by server_close() after close_all()
    block_on_close = True

    def _init_tracking(self) -> None:
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def close_all(self) -> None:
        """Shut every live connection down so handler threads return."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
