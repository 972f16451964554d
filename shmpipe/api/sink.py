"""The sink protocol: where results go. Sinks are opened and written in the publisher only.

Sinks must be idempotent on ``(stream, message_id)``: the engine delivers at least once (a
frame whose worker died after the sink wrote but before the acknowledgement is redelivered),
so a sink that has already stored a message must ignore the second copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from shmpipe.api.kernel import ArraySpec


@dataclass
class RunInfo:
    """What a sink may record about the run that produced its data."""

    run_name: str
    config: dict[str, Any]
    config_hash: str
    chain: list[str]
    outputs: list[ArraySpec]
    config_toml: str = ""
    """``config`` as TOML text, as a user would write it back (for result files)."""


@dataclass
class Record:
    """The results of one message: views on the result slot, valid until the sinks' next
    ``commit`` returns (the publisher frees the slot only after that)."""

    stream: str
    message_id: int
    name: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    timestamp: float
    attempt: int = 0
    lineage: dict[str, Any] = field(default_factory=dict)


@dataclass
class ErrorRecord:
    """A message that could not be processed, and why."""

    stream: str
    message_id: int
    name: str
    kernel: str
    error: str
    traceback: str = ""
    quarantined: bool = False
    attempt: int = 0


class Sink:
    """Base class of every sink."""

    Params: ClassVar[type]

    def __init__(self, params: Any) -> None:
        self.params = params

    def check(self) -> None:  # noqa: B027
        """Validate settings before any process starts (output directory writable, ...)."""

    def open(self, run: RunInfo) -> None:  # noqa: B027
        pass

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def write_error(self, error: ErrorRecord) -> None:  # noqa: B027
        pass

    def stream_finished(self, stream: str, next_stream: str, last_id: int = 0) -> None:  # noqa: B027
        """Every message of ``stream`` up to ``last_id`` has been written before this call."""

    def commit(self) -> None:  # noqa: B027
        """Make everything written so far durable; acknowledgements follow this call."""

    def close(self) -> None:  # noqa: B027
        pass

    def written(self, run_name: str, streams: list[str]) -> list[str]:
        """Where this sink put a run's results, for the summary (paths, or a service's
        streams); called in the supervisor with the names of the streams the run saw."""
        return []
