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
    """What a sink may record about the run that produced its data.

    ``check_rerun`` receives it before the kernels are set up, with ``outputs`` still empty;
    ``open`` receives it complete.
    """

    run_name: str
    config: dict[str, Any]
    """The effective configuration (``PipelineConfig.effective()``)."""
    config_hash: str
    chain: list[str]
    outputs: list[ArraySpec] = field(default_factory=list)
    config_toml: str = ""
    """``config`` as TOML text, as a user would write it back (for result files)."""
    result_config: dict[str, Any] = field(default_factory=dict)
    """The result-shaping keys of the configuration (``shmpipe.api.provenance.result_shaping``)."""
    result_hash: str = ""
    """Hash of ``result_config``: results with equal hashes may share a file or stream."""
    run_uid: str = ""
    """Unique to this run: a sink reopening its own file after a restart recognises it."""
    started: float = 0.0
    """Unix time the run started."""
    host: str = ""
    version: str = ""
    """shmpipe version."""
    commit: str = ""
    """git commit shmpipe runs from, "" when unknown."""
    reducers: list[ReducerInfo] = field(default_factory=list)
    """The run's reducers (``[reducers.*]``) and their outputs; empty when it has none."""


@dataclass
class ReducerInfo:
    """One configured reducer as sinks see it (``RunInfo.reducers``)."""

    name: str
    kind: str
    input: str
    every: int
    outputs: list[ArraySpec]
    """Qualified ``name.output``; a shape ``(0, 0)`` is known only when a result is made."""
    input_axis: str | None = None
    """The input's axis output (``integrate.radial``), stored with the results."""


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
class ReducedRecord:
    """One result of a reducer: a window of ``every`` message ids, or a whole stream.

    Sinks store it idempotently by ``(stream, reducer, window)``: after a crash the same
    window may be written again (with the same frames, so the same values).
    """

    stream: str
    reducer: str
    window: int
    """0-based window index (``first_id = window * every + 1``); 0 for a per-stream result."""
    first_id: int
    last_id: int
    """The window's message ids (per stream: the lowest and highest included)."""
    frames: int
    """Frames added (error records and frames of other nodes are not)."""
    ids: list[tuple[int, int]]
    """The included message ids, as runs ``(lo, hi)``."""
    arrays: dict[str, np.ndarray]
    """The finished outputs by qualified name (``avg.mean``)."""
    state: dict[str, np.ndarray]
    """The reducer's state, so that partial results of several nodes can be merged."""
    axis: np.ndarray | None = None
    """The input's axis values (the integrator's radial axis), when it has one."""


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

    def check_rerun(self, run: RunInfo) -> None:  # noqa: B027
        """Refuse (``ValueError``) to mix this run's results with results already stored.

        Called before any process starts, after ``check``; ``run.outputs`` is still empty.
        """

    def open(self, run: RunInfo) -> None:  # noqa: B027
        pass

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def write_error(self, error: ErrorRecord) -> None:  # noqa: B027
        pass

    def write_reduced(self, result: ReducedRecord) -> None:  # noqa: B027
        """Store a reducer's result (before the next ``commit``); default: ignore it."""

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

    def stored(self, run: RunInfo, published: dict[str, int]) -> list[str]:
        """Lines for the run's summary: where this sink put the run's results and how many
        it stored, apart from those it skipped as already stored (a resumed file, a stream
        read again); called in the supervisor after the run.

        ``published`` counts the records (not the error records) the publisher handed to
        the sinks, per input stream. The default names the places of ``written``.
        """
        return self.written(run.run_name, list(published))
