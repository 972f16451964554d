"""SideProcess: a helper process beside the data path that the supervisor restarts when it dies.

A side process (the Tango device) only reads the shared tables; its death never stops the
run. It is started again after a pause that doubles while it keeps dying soon after starting
(0.5 s up to 30 s), so a device that cannot start costs a log line now and then, not a loop.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger("shmpipe.supervisor")

FIRST_PAUSE_S = 0.5
LONGEST_PAUSE_S = 30.0
STABLE_S = 10.0  # alive this long: the next death restarts after FIRST_PAUSE_S again


class SideProcess:
    """One restartable side process.

    Parameters
    ----------
    role : str
        Its name in logs (``tango``).
    start : callable
        Forks it and returns the process (``Pipeline._start`` with its target and arguments).
    started : callable, optional
        Called with the pid after each start (the supervisor records it in the run registry).
    """

    def __init__(
        self,
        role: str,
        start: Callable[[], BaseProcess],
        started: Callable[[int], None] | None = None,
    ) -> None:
        self.role = role
        self._start = start
        self._started_hook = started
        self.proc: BaseProcess | None = None
        self.restarts = 0
        self._started = 0.0
        self._pause = FIRST_PAUSE_S
        self._due = 0.0

    def start(self) -> None:
        self.proc = self._start()
        self._started = time.monotonic()
        if self._started_hook is not None:
            self._started_hook(self.proc.pid)

    @property
    def sentinel(self) -> int | None:
        return self.proc.sentinel if self.proc is not None else None

    def exited(self, cause: str) -> None:
        """The process died (its sentinel fired): schedule the restart."""
        assert self.proc is not None
        self.proc.join()
        self.proc = None
        lived = time.monotonic() - self._started
        self._pause = FIRST_PAUSE_S if lived >= STABLE_S else min(LONGEST_PAUSE_S, self._pause * 2)
        self._due = time.monotonic() + self._pause
        log.warning(
            "the %s process died (%s); the run goes on, restarting it in %.1f s",
            self.role,
            cause,
            self._pause,
        )

    def tick(self) -> None:
        """Restart the process when its pause is over (called from the supervisor's loop)."""
        if self.proc is None and self._due and time.monotonic() >= self._due:
            self._due = 0.0
            self.restarts += 1
            self.start()
            log.info("%s process restarted (pid %d)", self.role, self.proc.pid)

    def stop(self, grace_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; no restart afterwards."""
        self._due = 0.0
        proc, self.proc = self.proc, None
        if proc is None or proc.pid is None:
            return
        if proc.exitcode is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            proc.join(timeout=grace_s)
            if proc.exitcode is None:
                os.kill(proc.pid, signal.SIGKILL)
        proc.join()
