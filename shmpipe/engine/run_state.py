"""The state of a run as the supervisor holds it, and as ``shmpipe status`` shows it."""

from __future__ import annotations

from enum import IntEnum


class RunState(IntEnum):
    """Where a run is in its life; the supervisor alone changes it (``Pipeline._set_state``).

    The value is written to the run registry as ``state`` (the lower-case name), so any
    reader of the registry sees it without attaching to the tables.
    """

    STARTING = 0
    """Start-up checks, memory and the first processes being forked."""
    RUNNING = 1
    """Every process started; messages flow."""
    DRAINING = 2
    """No new messages (a stop was asked, or the source ended); frames in flight finish."""
    STOPPING = 3
    """The supervision loop ended; the processes are being stopped."""
    FINISHED = 4
    """Every process stopped after a complete or drained run."""
    FAILED = 5
    """The run ended on an error or was stopped at once."""

    @property
    def label(self) -> str:
        """The name as people read it (status, logs): ``draining``."""
        return self.name.lower()
