"""The exit status of a forked process and what it means: the one table of child exit codes.

These are the statuses of the processes the supervisor forks (dispatcher, publisher, workers,
side processes), not of ``shmpipe run`` (``shmpipe.engine.exit_codes``). A child that stops
the run on purpose leaves its reason in its process row (``SlotRing.set_exit_reason``) and
exits ``CHILD_FAILED``; anything else that ends it (a signal, a kernel calling ``exit``) is
a death, which the supervisor recovers from (``shmpipe.engine.recovery``).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import Enum

CHILD_FINISHED = 0
"""Stopped on purpose: the dispatcher drained its source, the publisher wrote the last frame."""
CHILD_RAISED = 1
"""What multiprocessing gives a process whose target raised (and ``sys.exit("text")``)."""
CHILD_FAILED = 3
"""Stopped on purpose, its reason in its process row: the run cannot go on."""
CHILD_REFUSED = 4
"""Stopped because the source refused its settings (bad token, unknown beamtime): the run
fails as a configuration error."""


class ExitKind(Enum):
    """What ended a child, whatever its role."""

    FINISHED = "finished"
    RAISED = "raised"
    FAILED = "failed"
    REFUSED = "refused"
    DIED = "died"


@dataclass(frozen=True)
class ChildExit:
    """A child's exit status, classified.

    Attributes
    ----------
    kind : ExitKind
        What ended it.
    code : int
        ``Process.exitcode``: negative for a signal.
    """

    kind: ExitKind
    code: int

    @property
    def cause(self) -> str:
        """The exit in words, for a log line: ``killed by signal 9 (SIGKILL)``, ``exit code 7``."""
        if self.code < 0:
            return f"killed by signal {-self.code} ({signal.Signals(-self.code).name})"
        return f"exit code {self.code}"


_KINDS = {
    CHILD_FINISHED: ExitKind.FINISHED,
    CHILD_RAISED: ExitKind.RAISED,
    CHILD_FAILED: ExitKind.FAILED,
    CHILD_REFUSED: ExitKind.REFUSED,
}


def classify_exit(code: int) -> ChildExit:
    """Classify ``Process.exitcode`` of a child that has ended (its sentinel fired).

    Parameters
    ----------
    code : int
        The exit status: a code the child chose, or minus the signal that killed it.

    Returns
    -------
    ChildExit
        ``DIED`` for a signal or any code not in this module's table.
    """
    return ChildExit(_KINDS.get(code, ExitKind.DIED), code)
