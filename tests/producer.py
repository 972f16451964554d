"""The demo detector (``scripts/asapo_produce.py``, the real ``asapo_producer``) in its own
process, feeding the service of :class:`shmpipe.asapo.process.AsapoProcess` in the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def produce(
    endpoint: str,
    beamtime: str,
    frames: int,
    streams: list[str],
    module_shape: list[int],
    *,
    rate: float = 0.0,
    finish: bool = True,
) -> subprocess.Popen:
    """Run the demo producer script (the real asapo_producer) in its own process."""
    repo = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [
            sys.executable,
            str(repo / "scripts" / "asapo_produce.py"),
            "--endpoint",
            endpoint,
            "--beamtime",
            beamtime,
            "--frames",
            str(frames),
            "--streams",
            ",".join(streams),
            "--rate",
            str(rate),
            "--module-shape",
            ",".join(map(str, module_shape)),
            *([] if finish else ["--no-finish"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
