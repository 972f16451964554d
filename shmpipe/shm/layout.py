"""The memory layout shared by every process: slot states, table columns, flags, sizes.

The slot table and the process table are int64 arrays with one row per slot / per process.
``SlotState``, ``SlotColumn``, ``SlotFlag``, ``ProcColumn`` and ``ProcState`` are the typed
names; the module-level ints below them are the same numbers for the per-message paths
(indexing a numpy row with a plain int is the cheap way, and these are read 35 000 times a
second).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag

import numpy as np


class SlotState(IntEnum):
    """Where a slot is in its cycle (``shmpipe.engine.protocol`` moves it; ``SLOT_STATES``
    says who holds it)."""

    FREE = 0
    FILLING = 1
    FILLED = 2
    ASSIGNED = 3
    CLAIMED = 4
    DONE = 5
    PUBLISHING = 6


class Holder(Enum):
    """The process that holds a slot-table row (the only one that may write it)."""

    DISPATCHER = "dispatcher"
    WORKER = "worker"  # the seat named in the row's OWNER column
    PUBLISHER = "publisher"


@dataclass(frozen=True)
class StateRule:
    """What a slot state means to everyone who scans the slot table.

    Attributes
    ----------
    holder : Holder
        Who holds a row in this state. A process that dies leaves exactly these rows to the
        supervisor's recovery (``shmpipe.engine.recovery``).
    in_flight : bool
        The row holds a message taken from the source and not yet released.
    numbered : bool
        Its SEQ column is the message's for good (a FILLING row's may be abandoned, and the
        number given again).
    """

    holder: Holder
    in_flight: bool
    numbered: bool


SLOT_STATES: dict[SlotState, StateRule] = {
    SlotState.FREE: StateRule(Holder.DISPATCHER, in_flight=False, numbered=False),
    SlotState.FILLING: StateRule(Holder.DISPATCHER, in_flight=True, numbered=False),
    SlotState.FILLED: StateRule(Holder.DISPATCHER, in_flight=True, numbered=True),
    SlotState.ASSIGNED: StateRule(Holder.WORKER, in_flight=True, numbered=True),
    SlotState.CLAIMED: StateRule(Holder.WORKER, in_flight=True, numbered=True),
    SlotState.DONE: StateRule(Holder.PUBLISHER, in_flight=True, numbered=True),
    SlotState.PUBLISHING: StateRule(Holder.PUBLISHER, in_flight=True, numbered=True),
}
"""The one declaration of who holds a slot in each state: every scan of the slot table (the
recovery, the scheduler, the watchdog, the status reader) is derived from it."""


def state_mask(**rule: object) -> np.ndarray:
    """A boolean array indexed by state value, true where the state's ``StateRule`` has every
    attribute given: ``state_mask(holder=Holder.WORKER)[table[:, STATE]]`` marks the rows
    held by worker seats (one fancy index: the scans run once a batch on the hot path)."""
    mask = np.zeros(len(SlotState), dtype=bool)
    for state, declared in SLOT_STATES.items():
        mask[state] = all(getattr(declared, k) == v for k, v in rule.items())
    return mask


IN_FLIGHT = state_mask(in_flight=True)
NUMBERED = state_mask(numbered=True)
HELD_BY = {holder: state_mask(holder=holder) for holder in Holder}


class SlotColumn(IntEnum):
    """Columns of the slot table; each is written by one aligned 8-byte store."""

    STATE = 0
    OWNER = 1  # the worker seat holding the slot (ASSIGNED, CLAIMED)
    TICKET = 2  # bumped at every hand-over, so a stale pipe record is recognised
    ATTEMPT = 3
    SEQ = 4  # dispatch order
    MSG_ID = 5
    HEADER_LEN = 6
    PAYLOAD_LEN = 7
    FLAGS = 8
    T_FILL = 9
    T_CLAIM = 10
    T_DONE = 11
    ERROR_LEN = 12
    OWNER_PID = 13
    STREAM_ROW = 14  # the message's row in the stream table (written by the dispatcher)
    PARAMS_VERSION = 15  # the live-parameter version the worker processed the frame with


class SlotFlag(IntFlag):
    """Bits of the FLAGS column."""

    ERROR = 1  # the result slot holds an error record instead of outputs
    QUARANTINED = 2  # the frame killed workers max_attempts times
    CONTROL = 4  # not a frame: a stream-finished marker travelling in order with the frames


class ProcColumn(IntEnum):
    """Columns of the process table (dispatcher, publisher, then the worker seats)."""

    PID = 0
    STATE = 1
    FRAMES = 2
    BYTES = 3
    BUSY_NS = 4
    MSG_ID = 5
    STARTED_NS = 6
    RESTARTS = 7
    ERRORS = 8
    READY_NS = 9
    KERNEL = 10
    EXIT = 11
    HANDOVERS = 12  # dispatcher: batches of filled slots handed to the workers
    END_SEQ = 13  # dispatcher: 1 + the sequence numbers dispatched, once it sent END (else 0)
    RELEASED_SEQ = 14  # publisher: the highest sequence number it ever released (or will)
    STALLED_NS = 15  # publisher row, written by the supervisor: since when nothing published


class ProcState(IntEnum):
    """The STATE column of the process table."""

    STARTING = 0
    IDLE = 1
    BUSY = 2
    DEAD = 3
    EXITED = 4


# Plain-int forms of the enums, for the hot paths.
FREE, FILLING, FILLED, ASSIGNED, CLAIMED, DONE, PUBLISHING = map(int, SlotState)
STATE_NAMES = tuple(s.name.lower() for s in SlotState)

STATE, OWNER, TICKET, ATTEMPT, SEQ, MSG_ID, HEADER_LEN, PAYLOAD_LEN = map(int, list(SlotColumn)[:8])
FLAGS, T_FILL, T_CLAIM, T_DONE, ERROR_LEN, OWNER_PID, STREAM_ROW = map(int, list(SlotColumn)[8:15])
PARAMS_VERSION = int(SlotColumn.PARAMS_VERSION)
N_COLUMNS = 16

ERROR, QUARANTINED, CONTROL = map(int, (SlotFlag.ERROR, SlotFlag.QUARANTINED, SlotFlag.CONTROL))

P_PID, P_STATE, P_FRAMES, P_BYTES, P_BUSY_NS, P_MSG_ID, P_STARTED_NS = map(
    int, list(ProcColumn)[:7]
)
P_RESTARTS, P_ERRORS, P_READY_NS, P_KERNEL, P_EXIT, P_HANDOVERS = map(int, list(ProcColumn)[7:13])
P_END_SEQ, P_RELEASED_SEQ, P_STALLED_NS = map(int, list(ProcColumn)[13:])
P_COLUMNS = 16
PROC_DISPATCHER, PROC_PUBLISHER, PROC_FIRST_WORKER = 0, 1, 2
PS_STARTING, PS_IDLE, PS_BUSY, PS_DEAD, PS_EXITED = map(int, ProcState)
PROC_STATE_NAMES = tuple(s.name.lower() for s in ProcState)

ALIGN = 4096
ERROR_BYTES = 16384
EXIT_REASON_BYTES = 4096

# Timing histograms kept in shared memory (one writer per row, read by metrics and benchmarks).
MAX_KERNELS = 16
# Upper bounds (seconds) of the histogram buckets; the last bucket is everything above.
# fmt: off
KERNEL_BUCKETS_S = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5,
                    1.0, 2.0, 5.0, 10.0)
LATENCY_BUCKETS_S = (1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 2.0,
                     5.0, 10.0, 30.0, 60.0)
# fmt: on
N_BUCKETS = len(KERNEL_BUCKETS_S) + 1  # both lists have the same length

# Per-stream counters (see shmpipe.streams): a fixed number of rows, reused oldest first.
MAX_STREAMS = 64
STREAM_WORDS = 32  # int64 words per row: counters, then the name's bytes
