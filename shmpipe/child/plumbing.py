"""Plumbing: everything the supervisor creates before forking, shared by every process."""

from __future__ import annotations

import ctypes
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.sink import RunInfo
from shmpipe.api.source import Source
from shmpipe.config import PipelineConfig
from shmpipe.shm.channel import RecordPipe
from shmpipe.shm.params import LiveParams
from shmpipe.shm.resultlayout import ChainLayout
from shmpipe.shm.ring import (
    SlotRing,
)


@dataclass
class Plumbing:
    config: PipelineConfig
    ring: SlotRing
    layout: ChainLayout
    parts: list[ArraySpec] | None
    seats: list[RecordPipe]
    done: RecordPipe
    dispatcher_inbox: RecordPipe
    source: Source
    cache_dir: Path
    run_info: RunInfo
    live: LiveParams | None = None  # kernel parameters changed during the run
    tap: Any = None  # shmpipe.shm.preview.PreviewTap when the run has a view

    @property
    def workers(self) -> int:
        return len(self.seats)


def now_ns() -> int:
    return time.monotonic_ns()


_PR_SET_PDEATHSIG = 1


def become_child(role: str) -> logging.Logger:
    """Common start of every child: die with the supervisor, leave signals to it."""
    try:
        # If the supervisor is SIGKILLed, its children must not live on holding slots.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    # Ctrl-C reaches the whole foreground process group; only the supervisor decides what it
    # means (drain first, stop at once on the second), so children ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return logging.getLogger(f"shmpipe.{role}")
