"""The view process: started by the supervisor when ``[view] port`` is set, or by
``shmpipe view RUN`` attached to a running pipeline.

As for metrics, the supervisor binds the port (a port in use is a start-up error), forks the
view and closes its copy of the socket, so that it never runs a server thread itself and
stays safe to fork. The view only reads shared memory: if it dies the pipeline goes on and
the supervisor starts another one (binding the port again) after a pause.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from typing import Any

from shmpipe.config import ViewSection
from shmpipe.plumbing import Plumbing, become_child

log = logging.getLogger("shmpipe.supervisor")
RESTART_DELAY_S = 1.0


class ViewPortError(OSError):
    """The configured view port cannot be bound."""


def open_view_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on ``host:port`` (not inherited by later children)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ViewPortError(
            f"cannot serve the view on {host}:{port}: {exc.strerror}; choose another "
            "view.port, or 0 for no view"
        ) from exc
    sock.set_inheritable(False)
    return sock


def serve(feed, sock: socket.socket, view: ViewSection, signals: bool = True) -> None:
    """Run the view server on a bound socket until SIGTERM/SIGINT (or, with ``signals``
    False, until killed: the pipeline's view leaves signals to its supervisor)."""
    import contextlib

    import uvicorn

    from shmpipe.view.server import ViewOptions, create_app

    class Server(uvicorn.Server):
        def capture_signals(self):
            return super().capture_signals() if signals else contextlib.nullcontext()

    app = create_app(feed, ViewOptions(max_fps=view.max_hz, image=view.image, zmq=view.zmq))
    config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="on")
    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        feed.close()


def view_main(p: Plumbing, sock: socket.socket) -> None:
    """Body of the view process forked by the supervisor."""
    # Ctrl-C and SIGTERM reach the whole process group; like every child the view leaves
    # them to the supervisor, which stops it with SIGKILL (it keeps no state).
    become_child("view")
    from shmpipe.view.feed import TapFeed

    feed = TapFeed(p.tap, p.ring.table, p.ring.procs, p.config.run.workers)
    serve(feed, sock, p.config.view, signals=False)


class ViewProcess:
    """The supervisor's handle on the view process: start, notice its death, restart."""

    def __init__(self, start, p: Plumbing, sock: socket.socket | None, on_start=None) -> None:
        self._start, self.p, self.sock, self._on_start = start, p, sock, on_start
        self.proc = None
        self.restart_at: float | None = None
        self.restarts = 0

    @property
    def sentinel(self) -> Any:
        return None if self.proc is None else self.proc.sentinel

    def start(self) -> None:
        v = self.p.config.view
        sock = self.sock
        if sock is None:
            try:
                sock = open_view_socket(v.host, v.port)
            except ViewPortError as exc:
                log.warning("%s; trying again in 5 s", exc)
                self.restart_at = time.monotonic() + 5.0
                return
        self.proc = self._start(view_main, (self.p, sock), "shmpipe-view")
        sock.close()  # processes forked from now on must not hold the listening socket
        self.sock = None
        self.restart_at = None
        log.info("view: http://%s:%d/ (pid %d)", v.host, v.port, self.proc.pid)
        if self._on_start is not None:
            self._on_start(self.proc.pid)

    def exited(self) -> None:
        """The view died: note it and start another after a pause."""
        self.proc.join()
        log.warning(
            "the view process died (exit code %s); the pipeline goes on, a new view starts "
            "in %.0f s",
            self.proc.exitcode,
            RESTART_DELAY_S,
        )
        self.proc = None
        self.restarts += 1
        self.restart_at = time.monotonic() + RESTART_DELAY_S

    def tick(self) -> None:
        due = self.restart_at is not None and time.monotonic() >= self.restart_at
        if self.proc is None and due:
            self.start()

    def stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        proc, self.proc = self.proc, None
        if proc is None or proc.pid is None:
            return
        if proc.exitcode is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.join()
