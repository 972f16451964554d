"""``shmpipe serve --config service.toml``: the subcommand.

The configuration and every recipe are checked before anything starts (``--check`` stops
there); then the HTTP socket is bound (a port in use is a start-up error, exit 2), the state
is opened, the scheduler thread adopts or resumes what was running, and uvicorn serves until
SIGTERM or Ctrl-C, after which every pipeline drains and the service exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading

from shmpipe.engine import exit_codes

log = logging.getLogger("shmpipe.serve")

HELP = """examples:
  shmpipe serve --config examples/service.toml --check   # validate, start nothing
  shmpipe serve --config examples/service.toml           # run the node's pipelines
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the subcommands."""
    p = sub.add_parser(
        "serve",
        help="run this node's pipelines as a service: recipes, reprocessing, an HTTP API",
        description="Start a pipeline from each recipe on each matching data source of the "
        "followed beamtimes, reprocess on request into versioned outputs, share the node's "
        "workers; state in SQLite, an HTTP API and a page (docs/service.md).",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="the service TOML")
    p.add_argument(
        "--check", action="store_true", help="validate the service and every recipe, then exit"
    )
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def run(args: argparse.Namespace) -> int:
    """The ``serve`` subcommand; configuration errors propagate (exit 2 in ``cli.main``)."""
    import uvicorn

    from shmpipe.observe.logs import configure_logging
    from shmpipe.serve.api import create_app
    from shmpipe.serve.check import check_recipes
    from shmpipe.serve.config import load_service_config
    from shmpipe.serve.registry import ServiceRecord
    from shmpipe.serve.scheduler import Scheduler
    from shmpipe.serve.state import StateInUse, StateLock, StateStore

    configure_logging(args.log_format, "info")
    service = load_service_config(args.config)
    for line in check_recipes(service):
        print(line, file=sys.stderr)
    if args.check:
        print(
            f"shmpipe serve: {args.config} is valid: {len(service.recipes)} recipes, "
            f"{len(service.beamtimes)} beamtimes, {service.workers} workers",
            file=sys.stderr,
        )
        return 0
    try:
        sock = _bind(service.serve.host, service.serve.port)
    except OSError as exc:
        print(
            f"shmpipe serve: cannot start: {service.serve.host}:{service.serve.port} "
            f"(serve.port): {exc.strerror}",
            file=sys.stderr,
        )
        return exit_codes.EXIT_CONFIG_ERROR
    try:
        owner = StateLock(service.state_path)
    except StateInUse as exc:
        print(f"shmpipe serve: cannot start: {exc} (serve.state)", file=sys.stderr)
        return exit_codes.EXIT_CONFIG_ERROR
    store = StateStore(service.state_path)
    scheduler = Scheduler(service, store)
    stop = threading.Event()
    worker = threading.Thread(target=scheduler.loop, args=(stop,), name="scheduler")
    worker.start()
    host, port = sock.getsockname()[:2]
    url = f"http://{host}:{port}/"
    record = ServiceRecord(url, str(service.state_path))
    print(
        f"shmpipe serve: {url} ({len(service.recipes)} recipes, {service.workers} workers, "
        f"state {service.state_path})",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(scheduler), log_level="warning", lifespan="off")
    )
    # uvicorn raises the signal that stopped it again once it is done: with the default
    # handlers that would end this process before its pipelines have drained.
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        server.run(sockets=[sock])
    finally:
        log.info("stopping: the pipelines drain")
        stop.set()
        scheduler.wake.set()
        worker.join()
        record.release()
        store.close()
        owner.release()
    return exit_codes.EXIT_OK
