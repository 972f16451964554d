"""The slot protocol: every transition of a slot-table row, each as one function.

State machine (one row per slot; ``SlotState`` in ``shmpipe.shm.layout``)::

    FREE ──begin_fill──► FILLING ──mark_filled──► FILLED ──mark_assigned──► ASSIGNED
      ▲        (dispatcher)   │        (dispatcher)          (dispatcher)      │ ▲
      │                       │ skip_to_done (control marker,                  │ │ mark_assigned
      │                       │ or an error record from the source)   claim    │ │ (supervisor,
      │                       ▼                                (owning worker) ▼ │  recovery)
    release ◄── PUBLISHING ◄──take_for_publishing── DONE ◄──finish── CLAIMED ─────┘
    (publisher)                   (publisher)         ▲  (owning worker)   │
                                                      └───quarantine───────┘
                                                          (supervisor)

After a dispatcher or publisher died, the supervisor moves that process's rows on:
FILLING ──abandon_fill──► FREE and PUBLISHING ──requeue──► DONE.

Writers: at any instant each row has exactly one writer, the holder that
``shm.layout.SLOT_STATES`` declares for its state (the one declaration every scan of the
table derives from): the dispatcher for FREE, FILLING and FILLED rows, the worker seat named
in OWNER for ASSIGNED and CLAIMED rows, the publisher for DONE and PUBLISHING rows (it learns
of them through a READY record). The supervisor's recovery (``engine.recovery``) writes a row
only when the process that held it is dead (``mark_assigned`` to
another seat, ``retry``, ``quarantine``). So the table needs no lock, and a process killed at
any instant cannot leave a row held.

Store order: every function writes the row's data columns first and STATE last, each an
aligned 8-byte store. On x86-64 stores become visible in program order, so a reader that
sees the new STATE also sees the columns written before it; a reader in another process acts
on a row only after the pipe record that follows the transition (the write syscall orders
the stores before it) or, for the supervisor's recovery scan, only by the STATE it sees.
TICKET is bumped at every hand-over (``mark_assigned``, ``skip_to_done``, ``quarantine``), so
a pipe record from before a recovery is recognised as stale and ignored.

These functions are on the per-message path (35 000 small messages a second): they take the
row as a numpy int64 view and use the plain-int column names.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from shmpipe.shm.layout import (
    ASSIGNED,
    ATTEMPT,
    CLAIMED,
    DONE,
    ERROR,
    ERROR_BYTES,
    ERROR_LEN,
    FILLED,
    FILLING,
    FLAGS,
    FREE,
    OWNER,
    OWNER_PID,
    PAYLOAD_LEN,
    PUBLISHING,
    QUARANTINED,
    SEQ,
    STATE,
    T_CLAIM,
    T_DONE,
    T_FILL,
    TICKET,
)


def begin_fill(row: np.ndarray, seq: int, t_ns: int) -> None:
    """FREE → FILLING (dispatcher): a fresh cycle, no owner, no error, no attempt yet.

    SEQ before STATE like every column: a scan that sees a row FILLING or later also sees
    its sequence number (``engine.recovery`` counts on it when a dispatcher or publisher is
    replaced)."""
    row[SEQ] = seq
    row[ATTEMPT] = 0
    row[FLAGS] = 0
    row[ERROR_LEN] = 0
    row[OWNER] = -1
    row[T_FILL] = t_ns
    row[STATE] = FILLING


def mark_filled(row: np.ndarray, payload_len: int) -> None:
    """FILLING → FILLED (dispatcher): header and payload are in the slot."""
    row[PAYLOAD_LEN] = payload_len
    row[STATE] = FILLED


def mark_assigned(row: np.ndarray, seat: int) -> int:
    """FILLED → ASSIGNED (dispatcher), or ASSIGNED/CLAIMED → ASSIGNED to another seat
    (supervisor, after the owner died). Ticket and owner before the state: the recovery scan
    acts on rows it sees ASSIGNED. Returns the new ticket, for the seat's ASSIGN record."""
    ticket = int(row[TICKET]) + 1
    row[TICKET] = ticket
    row[OWNER] = seat
    row[STATE] = ASSIGNED
    return ticket


def skip_to_done(row: np.ndarray) -> int:
    """FILLING → DONE (dispatcher): a row no worker needs (a stream-finished marker, or an
    error record written by ``record_error``). Returns the ticket for the READY record."""
    ticket = int(row[TICKET]) + 1
    row[TICKET] = ticket
    row[STATE] = DONE
    return ticket


def claim(row: np.ndarray, seat: int, ticket: int, pid: int, t_ns: int) -> bool:
    """ASSIGNED → CLAIMED (the owning worker). False, changing nothing, for a stale ASSIGN
    record: the slot went to another seat (or round) after a recovery."""
    if row[OWNER] != seat or row[TICKET] != ticket or row[STATE] != ASSIGNED:
        return False
    row[OWNER_PID] = pid
    row[T_CLAIM] = t_ns
    row[STATE] = CLAIMED
    return True


def finish(row: np.ndarray, t_ns: int) -> None:
    """CLAIMED → DONE (the owning worker): outputs or an error record are in the result slot."""
    row[T_DONE] = t_ns
    row[STATE] = DONE


def retry(row: np.ndarray) -> int:
    """Count one more attempt of a CLAIMED row whose worker died (supervisor); return it."""
    row[ATTEMPT] += 1
    return int(row[ATTEMPT])


def quarantine(row: np.ndarray) -> int:
    """CLAIMED → DONE (supervisor): the frame killed ``max_attempts`` workers; the caller has
    written its error record. Returns the ticket for the READY record."""
    row[FLAGS] = int(row[FLAGS]) | QUARANTINED
    ticket = int(row[TICKET]) + 1
    row[TICKET] = ticket
    row[STATE] = DONE
    return ticket


def take_for_publishing(row: np.ndarray, ticket: int) -> bool:
    """DONE → PUBLISHING (publisher). False for a duplicate READY record (recovery re-sends
    one when a worker died between marking DONE and telling the publisher)."""
    if row[STATE] != DONE or row[TICKET] != ticket:
        return False
    row[STATE] = PUBLISHING
    return True


def abandon_fill(row: np.ndarray) -> None:
    """FILLING → FREE (supervisor, after the dispatcher died half-way through a fill): the
    replacement dispatcher reads the message again. SEQ is cleared: the number is given
    again to whatever the replacement reads next."""
    row[SEQ] = 0
    row[STATE] = FREE


def requeue(row: np.ndarray) -> None:
    """PUBLISHING → DONE (supervisor, after the publisher died): the replacement publishes
    the row again; idempotent sinks ignore what the dead one had already written."""
    row[STATE] = DONE


def release(row: np.ndarray) -> None:
    """PUBLISHING → FREE (publisher): committed and acknowledged; the FREED record follows."""
    row[STATE] = FREE


def record_error(ring: Any, slot: int, kernel: str, error: str, traceback: str = "") -> None:
    """Write the one kind of error record: ``{"kernel", "error", "traceback"}`` in the slot's
    error area, its length, then the ERROR flag (by whoever owns the row at the time)."""
    doc = {"kernel": kernel, "error": error, "traceback": traceback}
    raw = json.dumps(doc, default=str).encode()
    if len(raw) > ERROR_BYTES:
        doc["traceback"] = str(traceback)[-(ERROR_BYTES // 2) :]
        raw = json.dumps(doc, default=str).encode()[:ERROR_BYTES]
    ring.error_area(slot)[: len(raw)] = raw
    row = ring.table[slot]
    row[ERROR_LEN] = len(raw)
    row[FLAGS] = int(row[FLAGS]) | ERROR


def read_error(ring: Any, slot: int) -> dict[str, Any]:
    """The error record of ``slot`` (publisher)."""
    length = int(ring.table[slot, ERROR_LEN])
    try:
        return json.loads(bytes(ring.error_area(slot)[:length]))
    except ValueError:
        return {"error": "unreadable error record", "kernel": ""}
