"""TrackedConnections: a threading server that can end its live connections on stop."""

from __future__ import annotations

import socket
import threading

from shmpipe.asapo.limits import Limits
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

    def _init_tracking(self, limits: Limits) -> None:
        """Call before the server's own ``__init__`` binds: bounds from ``limits``, no
        connection tracked yet."""
        self._init_bounds(limits.max_connections, limits.idle_timeout_s, limits.listen_backlog)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._closing = False

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            if not alive:
                self._conns.discard(conn)
                return
            if not self._closing:
                self._conns.add(conn)
                return
        # Accepted before the stop, its handler thread started after close_all(): left open,
        # it would serve its keep-alive client on and server_close() would wait for it until
        # the idle timeout.
        _shut(conn)

    def close_all(self) -> None:
        """Shut every live connection down so handler threads return; a connection whose
        handler starts later is shut down as it starts."""
        with self._conns_lock:
            self._closing = True
            conns = list(self._conns)
        for conn in conns:
            _shut(conn)


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
