"""The view process: a side process of the run when ``[view] port`` is set, or
``shmpipe view RUN`` attached to a running pipeline.

As for metrics, the supervisor binds the port before any fork (a port in use is a start-up
error), forks the view and closes its copy of the socket, so that it never runs a server
thread itself and stays safe to fork. The view only reads shared memory: if it dies the
pipeline goes on and the supervisor starts another one (binding the port again) after a pause.
"""

from __future__ import annotations

import os
import signal
import socket

from shmpipe.api.sideprocess import SideProcess
from shmpipe.child.plumbing import Plumbing
from shmpipe.child.roles import start_role
from shmpipe.config.schema import ViewSection


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
    # No per-message deflate: the frames are PNGs, already compressed; deflating them again
    # cost the view more CPU than rendering them.
    config = uvicorn.Config(
        app,
        log_level="warning",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="on",
    )
    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        feed.close()


def view_main(p: Plumbing, sock: socket.socket, supervisor_pid: int) -> None:  # noqa: ARG001
    """Body of the view process forked by the supervisor (a side process)."""
    log = start_role(p, -1, "view", "view")
    # The supervisor stops this process with SIGTERM at the end of the run; it holds no state.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # At the run's priority: import the server and load the image kernels (compiled into
    # Numba's cache in the setup phase), so that the view answers at once; at nice 19 beside
    # busy workers this took minutes.
    import uvicorn  # noqa: F401 - imported here, at full priority (as the server below)

    from shmpipe.view.feed import TapFeed
    from shmpipe.view.server import create_app  # noqa: F401
    from shmpipe.view.warm import image_dtypes, warm_kernels

    feed = TapFeed(p.tap, p.ring.table, p.ring.procs, p.config.run.workers)
    try:
        warm_kernels(image_dtypes(feed.outputs().values(), feed.part_specs))
    except Exception:  # noqa: BLE001 - a slower first image, not a reason to stop
        log.exception("view: loading the image kernels failed")
    if p.config.view.nice:
        # Below the workers: on busy cores the view skips images, the pipeline keeps its pace.
        os.nice(p.config.view.nice)
    if p.config.reducers:
        from shmpipe.reduce.live import LiveReduced
        from shmpipe.view.reduced import ReducedFeed

        feed = ReducedFeed(feed, LiveReduced(p.config, p.run_info.outputs))
    serve(feed, sock, p.config.view, signals=False)


def _setup(config, outputs, parts) -> None:
    from shmpipe.view.warm import warm_for_run

    warm_for_run(config, outputs, parts)


SIDE_PROCESS = SideProcess(
    name="view",
    enabled=lambda config: config.view.port > 0,
    target=view_main,
    prepare=lambda config: open_view_socket(config.view.host, config.view.port),
    setup=_setup,
)
