"""Replacing a dead dispatcher or publisher: what the slot table says each one held.

A worker's slots are found by their OWNER column (``Pipeline._recover_seat``). The dispatcher
and the publisher own rows by state instead: the dispatcher FREE, FILLING and FILLED rows, the
publisher DONE and PUBLISHING rows. When one of them dies the supervisor moves its rows on
(``protocol.abandon_fill``, ``protocol.requeue``) and starts a replacement that continues from
the numbers the table holds:

- the dispatcher resumes at ``dispatched_so_far``: the highest sequence number whose slot was
  filled. Sequence numbers count every item the source gave (messages and stream-finished
  markers), so for a positional source (files, sim) it is also the position to resume at;
  the message of a slot abandoned half-filled is read again.
- the publisher starts at ``publish_point``: every sequence number still in the ring is
  published (again, for the rows the dead one was publishing: the sinks are idempotent by
  message id); every other one up to the highest it ever released is already out.

The process that died is known to be dead (its sentinel fired), and a row's SEQ column is
written before its STATE (``protocol.begin_fill``), so a row seen FILLED or later carries its
own sequence number. A FREE row's SEQ is ignored: it may be a fill that had just begun.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shmpipe.engine import protocol
from shmpipe.shm.channel import ASSIGN, DONE
from shmpipe.shm.layout import (
    ASSIGNED,
    FILLED,
    FILLING,
    FREE,
    OWNER,
    P_RELEASED_SEQ,
    PROC_PUBLISHER,
    PUBLISHING,
    SEQ,
    STATE,
    TICKET,
)
from shmpipe.shm.layout import (
    DONE as S_DONE,
)


def _scan(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """STATE and SEQ of every row, each pair read while its STATE did not change."""
    for _ in range(1000):
        before = table[:, STATE].copy()
        seq = table[:, SEQ].copy()
        after = table[:, STATE].copy()
        if np.array_equal(before, after):
            return after, seq
    # Rows move on every few microseconds under load; take the rows that held still.
    steady = before == after
    return np.where(steady, after, FILLING), seq


def dispatched_so_far(ring) -> int:
    """The sequence number the replacement dispatcher continues after (the dispatcher is
    dead; the publisher may be running). Read the rows first, then the publisher's released
    mark: a row released during the scan is then counted by the mark."""
    state, seq = _scan(ring.table)
    held = (state >= FILLED) & (state <= PUBLISHING)
    highest = int(seq[held].max()) if held.any() else 0
    return max(highest, int(ring.procs[PROC_PUBLISHER, P_RELEASED_SEQ]))


@dataclass
class DispatcherRows:
    """What the supervisor did with a dead dispatcher's rows."""

    resume_at: int
    abandoned: int = 0
    assigned: int = 0
    resent: int = 0


def recover_dispatcher(ring, scheduler, seats: list, done_pipe, workers: int) -> DispatcherRows:
    """Move a dead dispatcher's rows on and say where its replacement resumes.

    A half-filled slot is freed (its message is read again), a filled one not yet handed out
    goes to a worker, and the pipe records the dispatcher may have died before writing (an
    ASSIGN after ``mark_assigned``, a DONE after ``skip_to_done``) are written again; the
    receivers ignore a record they already had (``claim`` and ``take_for_publishing`` check
    state and ticket).
    """
    rows = DispatcherRows(dispatched_so_far(ring))
    table = ring.table
    for slot in range(table.shape[0]):
        row = table[slot]
        state = int(row[STATE])
        if state == FILLING:
            protocol.abandon_fill(row)
            rows.abandoned += 1
        elif state == FILLED:
            seat = scheduler.least_loaded_seat(workers)
            scheduler.assign(slot, seat, seats[seat])
            rows.assigned += 1
        elif state == ASSIGNED:
            seats[int(row[OWNER])].send(ASSIGN, slot, int(row[TICKET]), 0)
            rows.resent += 1
        elif state == S_DONE:
            done_pipe.send(DONE, slot, int(row[TICKET]))
            rows.resent += 1
    return rows


def recover_publisher(ring) -> int:
    """PUBLISHING rows of a dead publisher back to DONE; return how many."""
    table, n = ring.table, 0
    for slot in np.nonzero(table[:, STATE] == PUBLISHING)[0]:
        protocol.requeue(table[slot])
        n += 1
    return n


@dataclass
class PublishPoint:
    """Where a replacement publisher starts.

    Attributes
    ----------
    next_seq : int
        Ordered mode: the first sequence number to publish.
    watermark : int
        Every sequence number up to it is published.
    published : set of int
        Published beyond the watermark (unordered mode).
    done : list of int
        Slots DONE now, to take at once (their DONE records may have gone to the dead one).
    free : list of int
        Slots FREE now (the dead one may have freed them without telling the dispatcher).
    """

    next_seq: int
    watermark: int
    published: set[int] = field(default_factory=set)
    done: list[int] = field(default_factory=list)
    free: list[int] = field(default_factory=list)


def publish_point(ring) -> PublishPoint:
    """Read the table for a replacement publisher (the dead one's rows already requeued)."""
    state, seq = _scan(ring.table)
    released = int(ring.procs[PROC_PUBLISHER, P_RELEASED_SEQ])
    pending = seq[(state >= FILLED) & (state <= PUBLISHING)]
    low = int(pending.min()) if len(pending) else released + 1
    watermark = min(low - 1, released)
    published = set(range(watermark + 1, released + 1)) - set(pending.tolist())
    return PublishPoint(
        next_seq=watermark + 1,
        watermark=watermark,
        published=published,
        done=np.nonzero(state == S_DONE)[0].tolist(),
        free=np.nonzero(state == FREE)[0].tolist(),
    )
