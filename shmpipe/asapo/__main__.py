"""``python -m shmpipe.asapo --port 8400 [--data-dir DIR]``: run the standalone ASAPO service.

The same options as ``shmpipe asapo-standalone`` (:mod:`shmpipe.asapo.command`).
"""

from __future__ import annotations

import argparse

from shmpipe.asapo.command import add_arguments, run


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m shmpipe.asapo",
        description="ASAPO-compatible standalone service for the asapo_consumer/asapo_producer "
        "25.3 clients (give them server_name HOST:PORT).",
    )
    add_arguments(parser)
    run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    main()
