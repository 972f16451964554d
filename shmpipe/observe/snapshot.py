"""The one reader of the shared tables: run totals, ring occupancy and the process rows, read
the same way by the run summary, the progress line, ``shmpipe status``, the metrics endpoint and
the benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from shmpipe.shm.layout import (
    HELD_BY,
    IN_FLIGHT,
    P_BUSY_NS,
    P_BYTES,
    P_ERRORS,
    P_FRAMES,
    P_MSG_ID,
    P_PID,
    P_RESTARTS,
    P_STALLED_NS,
    P_STARTED_NS,
    P_STATE,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
    PROC_STATE_NAMES,
    PS_BUSY,
    STATE,
    STATE_NAMES,
    Holder,
)


def role_name(proc: int) -> str:
    """The role of row ``proc`` of the process table: dispatcher, publisher, worker 3."""
    if proc == PROC_DISPATCHER:
        return "dispatcher"
    if proc == PROC_PUBLISHER:
        return "publisher"
    return f"worker {proc - PROC_FIRST_WORKER}"


@dataclass(frozen=True)
class RunTotals:
    """Totals of a run at one instant (each a counter with one writer; none rolls over)."""

    frames_in: int  # messages taken from the source (dispatcher)
    bytes_in: int  # their payload bytes
    frames_out: int  # results and error records published (publisher)
    errors: int  # error records published
    ring_used: int  # slots holding a message in flight (``shm.layout.SLOT_STATES``)
    ring_slots: int
    workers_busy: int
    workers: int

    @classmethod
    def read(cls, procs: np.ndarray, table: np.ndarray) -> RunTotals:
        """Read the process table ``procs`` and the slot table ``table`` (live or copies)."""
        workers = procs[PROC_FIRST_WORKER:]
        return cls(
            frames_in=int(procs[PROC_DISPATCHER, P_FRAMES]),
            bytes_in=int(procs[PROC_DISPATCHER, P_BYTES]),
            frames_out=int(procs[PROC_PUBLISHER, P_FRAMES]),
            errors=int(procs[PROC_PUBLISHER, P_ERRORS]),
            ring_used=int(np.count_nonzero(IN_FLIGHT[table[:, STATE]])),
            ring_slots=int(table.shape[0]),
            workers_busy=int(np.count_nonzero(workers[:, P_STATE] == PS_BUSY)),
            workers=int(workers.shape[0]),
        )


def stalled_seconds(procs: np.ndarray) -> float:
    """How long nothing has been published with frames in flight, as the supervisor's
    watchdog marks it in the publisher's row (0.0: not stalled)."""
    since = int(procs[PROC_PUBLISHER, P_STALLED_NS])
    return max(0.0, (time.monotonic_ns() - since) / 1e9) if since else 0.0


@dataclass(frozen=True)
class ProcessFigures:
    """One row of the process table at one instant, as people read it."""

    role: str  # "dispatcher", "publisher", "worker 3"
    pid: int
    state: str  # a name of PROC_STATE_NAMES ("?" for a value out of range)
    frames: int
    bytes: int
    errors: int
    busy_pct: float  # share of the process's life spent on frames
    message: int  # the message id it holds or last held
    restarts: int


def read_processes(procs: np.ndarray) -> list[ProcessFigures]:
    """Every row of the process table ``procs`` (live or a copy), in row order."""
    now = time.monotonic_ns()
    rows = []
    for i, r in enumerate(procs):
        alive_ns = max(1, now - int(r[P_STARTED_NS])) if r[P_STARTED_NS] else 1
        state = int(r[P_STATE])
        rows.append(
            ProcessFigures(
                role=role_name(i),
                pid=int(r[P_PID]),
                state=PROC_STATE_NAMES[state] if 0 <= state < len(PROC_STATE_NAMES) else "?",
                frames=int(r[P_FRAMES]),
                bytes=int(r[P_BYTES]),
                errors=int(r[P_ERRORS]),
                busy_pct=min(100.0, 100.0 * int(r[P_BUSY_NS]) / alive_ns),
                message=int(r[P_MSG_ID]),
                restarts=int(r[P_RESTARTS]),
            )
        )
    return rows


def ring_occupancy(table: np.ndarray) -> dict[str, int]:
    """Slots of the slot table ``table`` per state, states with none left out."""
    states = np.bincount(table[:, STATE], minlength=len(STATE_NAMES))
    return {STATE_NAMES[i]: int(n) for i, n in enumerate(states) if n}


def ring_holders(table: np.ndarray) -> dict[str, int]:
    """Slots holding a message, per holder (``shm.layout.SLOT_STATES``): ``dispatcher``,
    ``worker`` (all seats), ``publisher``; holders with none left out."""
    state = table[:, STATE]
    held = {h.value: int(np.count_nonzero(HELD_BY[h][state] & IN_FLIGHT[state])) for h in Holder}
    return {name: n for name, n in held.items() if n}
