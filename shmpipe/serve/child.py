"""The process a service run lives in: ``python -m shmpipe.serve.child EXIT_FILE run ...``.

It is ``shmpipe run`` itself, in the same process, and on the way out writes its exit code to
EXIT_FILE. The service is its parent and reads the exit code directly; after a restart of the
service the child belongs to it no more (it was adopted by the system), and the file is the
only way to learn how it ended.
"""

from __future__ import annotations

import json
import os
import sys


def write_exit(path: str, code: int) -> None:
    """Record ``code`` in ``path`` atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"exit_code": code}, f)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    from shmpipe.cli import main as shmpipe_main

    exit_file, args = argv[0], argv[1:]
    code = 1
    try:
        code = shmpipe_main(args)
    except SystemExit as exc:  # argparse's refusal of the command line
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        write_exit(exit_file, code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
