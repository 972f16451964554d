"""The command line of the standalone service, shared by ``shmpipe asapo-standalone`` and
``python -m shmpipe.asapo``: one set of options, one token syntax, one meaning.
"""

from __future__ import annotations

import argparse
import logging

from shmpipe.asapo.auth import parse_token_specs, read_token_file
from shmpipe.asapo.limits import Limits

TOKEN_HELP = (
    "accept only this token: TOKEN for every beamtime, TOKEN=BT1,BT2 for those beamtimes "
    "(repeatable; default: any token). A token on the command line is visible to every user "
    "of the node (ps): prefer --token-file"
)


def _octal(text: str) -> int:
    return int(text, 8)


_octal.__name__ = "octal mode"  # argparse names the type in its error message


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the service's options to ``parser``."""
    parser.add_argument(
        "--port", type=int, default=8400, help="HTTP port (default 8400; 0: any free port)"
    )
    parser.add_argument(
        "--receiver-port",
        type=int,
        default=None,
        help="receiver port (default PORT+1 when free, else any free port)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="persistent data folder (default: memory only)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument(
        "--token", action="append", dest="tokens", default=[], metavar="TOKEN[=BT,...]",
        help=TOKEN_HELP,
    )  # fmt: skip
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="read token specs (TOKEN or TOKEN=BT1,BT2), one a line, # comments",
    )
    defaults = Limits()
    parser.add_argument(
        "--max-payload-mb",
        type=float,
        default=defaults.max_payload_bytes / 2**20,
        help="largest payload of one message in MiB (default %(default)g)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="connections served at once, per port (default %(default)s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout_s,
        help="close a connection silent for this many seconds (default %(default)g)",
    )
    parser.add_argument(
        "--file-mode",
        type=_octal,
        default=defaults.file_mode,
        help="octal permission bits of the payload files written (default 640)",
    )
    parser.add_argument("--log-level", default="INFO")


def token_grants(args: argparse.Namespace) -> dict[str, list[str]] | None:
    """Token -> beamtimes from ``--token`` and ``--token-file``; None when neither is given.

    Raises
    ------
    ValueError
        A malformed spec (the message never shows the token).
    OSError
        An unreadable token file.
    """
    specs = list(args.tokens or [])
    if args.token_file:
        specs += read_token_file(args.token_file)
    return parse_token_specs(specs) if specs or args.token_file else None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve until SIGINT/SIGTERM; a configuration mistake exits 2 before anything starts."""
    from shmpipe.asapo.service import serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        tokens = token_grants(args)
    except (ValueError, OSError) as exc:
        parser.error(f"--token/--token-file: {exc}")
    if args.max_payload_mb <= 0 or args.max_connections <= 0 or args.idle_timeout <= 0:
        parser.error("--max-payload-mb, --max-connections and --idle-timeout must be positive")
    limits = Limits(
        max_payload_bytes=int(args.max_payload_mb * 2**20),
        max_connections=args.max_connections,
        idle_timeout_s=args.idle_timeout,
        file_mode=args.file_mode & 0o777,
    )
    try:
        serve(
            args.port,
            args.data_dir,
            args.host,
            tokens=tokens,
            receiver_port=args.receiver_port,
            limits=limits,
        )
    except OSError as exc:  # typically the port is taken
        parser.exit(1, f"cannot start the service on {args.host}:{args.port}: {exc}\n")
    return 0
