"""The one reader of the shared tables: run totals and ring occupancy, read the same way by
the run summary, the progress line, the metrics endpoint and the benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shmpipe.shm.layout import (
    FREE,
    P_BYTES,
    P_ERRORS,
    P_FRAMES,
    P_STALLED_NS,
    P_STATE,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
    PS_BUSY,
    STATE,
)


def role_name(proc: int) -> str:
    """The role of row ``proc`` of the process table: dispatcher, publisher, worker 3."""
    if proc == PROC_DISPATCHER:
        return "dispatcher"
    if proc == PROC_PUBLISHER:
        return "publisher"
    return f"worker {proc - PROC_FIRST_WORKER}"


@dataclass(frozen=True)
class Snapshot:
    """Totals of a run at one instant (each a counter with one writer; none rolls over)."""

    frames_in: int  # messages taken from the source (dispatcher)
    bytes_in: int  # their payload bytes
    frames_out: int  # results and error records published (publisher)
    errors: int  # error records published
    ring_used: int  # slots not FREE
    ring_slots: int
    workers_busy: int
    workers: int

    @classmethod
    def read(cls, procs: np.ndarray, table: np.ndarray) -> Snapshot:
        """Read the process table ``procs`` and the slot table ``table`` (live or copies)."""
        workers = procs[PROC_FIRST_WORKER:]
        return cls(
            frames_in=int(procs[PROC_DISPATCHER, P_FRAMES]),
            bytes_in=int(procs[PROC_DISPATCHER, P_BYTES]),
            frames_out=int(procs[PROC_PUBLISHER, P_FRAMES]),
            errors=int(procs[PROC_PUBLISHER, P_ERRORS]),
            ring_used=int(np.count_nonzero(table[:, STATE] != FREE)),
            ring_slots=int(table.shape[0]),
            workers_busy=int(np.count_nonzero(workers[:, P_STATE] == PS_BUSY)),
            workers=int(workers.shape[0]),
        )


def stalled_seconds(procs: np.ndarray) -> float:
    """How long nothing has been published with frames in flight, as the supervisor's
    watchdog marks it in the publisher's row (0.0: not stalled)."""
    since = int(procs[PROC_PUBLISHER, P_STALLED_NS])
    return max(0.0, (time.monotonic_ns() - since) / 1e9) if since else 0.0
