"""The declaration of a side process: an observer the supervisor runs beside the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SideProcess:
    """An observer process (metrics, live view, Tango device) that only reads shared memory.

    Parameters
    ----------
    name : str
        Its role name: the process title is ``shmpipe: <name> [<run>]``.
    enabled : callable
        ``enabled(config) -> bool``: whether this run has it (``[metrics] port > 0``).
    target : callable
        ``target(plumbing, resource, supervisor_pid)``, the body of the child process. It may
        read the ring and the tables; it never writes a slot.
    prepare : callable, optional
        ``prepare(config) -> resource``, called in the supervisor before each fork (a listening
        socket). An exception at the first start is a start-up error, at a restart a failed
        restart. The supervisor closes its copy of the resource (``close()``) after the fork.
    setup : callable, optional
        ``setup(config, outputs, parts)``, called in the run's setup phase, in the process
        that sets the kernels up, before any worker starts: compile what the process will
        need (Numba kernels, into Numba's cache), so that it starts at once however busy the
        workers keep the cores. ``outputs``: the chain's declared outputs (qualified
        ``ArraySpec``), ``parts``: the source's parts or None. A failure is logged; the run
        goes on.
    """

    name: str
    enabled: Callable[[Any], bool]
    target: Callable[[Any, Any, int], None]
    prepare: Callable[[Any], Any] | None = None
    setup: Callable[[Any, Any, Any], None] | None = None
