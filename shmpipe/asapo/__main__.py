"""``python -m shmpipe.asapo --port 8400 [--data-dir DIR]``: run the standalone ASAPO service."""

from __future__ import annotations

import argparse
import logging

from shmpipe.asapo.service import serve


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m shmpipe.asapo",
        description="ASAPO-compatible standalone service for the asapo_consumer/asapo_producer "
        "25.3 clients (give them server_name HOST:PORT).",
    )
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
        "--token",
        action="append",
        dest="tokens",
        default=None,
        metavar="TOKEN[=BT,...]",
        help="accept only this token, for any beamtime or the ones listed "
        "(repeatable; default: any token)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tokens = None
    if args.tokens:
        tokens = {}
        for spec in args.tokens:
            token, _, beamtimes = spec.partition("=")
            tokens[token] = beamtimes.split(",") if beamtimes else ["*"]
    try:
        serve(args.port, args.data_dir, args.host, tokens=tokens, receiver_port=args.receiver_port)
    except OSError as exc:  # typically the port is taken
        parser.exit(1, f"cannot start the service on {args.host}:{args.port}: {exc}\n")


if __name__ == "__main__":
    main()
