"""Process death in one room: what a child's exit means, what it held, the restart budget.

The supervisor waits on every child's sentinel and hands each exit of the data path here
(``Recovery.after_exit``), then forks whatever the answer says. One policy for every role:

- the exit status is classified once (``shmpipe.child.exits.classify_exit``);
- a child that stopped the run on purpose (``CHILD_FAILED``, ``CHILD_REFUSED``, or a
  dispatcher or publisher whose code raised past its role) fails the run with the reason it
  left in its process row;
- a dispatcher or publisher that finished ended its part: the input is drained, or the run;
- anything else is a death: the rows the dead process held (``shm.layout.SLOT_STATES`` says
  which) are moved on, the death is counted against ``run.max_restarts`` (one budget for
  every role), and the supervisor forks a replacement into the same process row. A worker
  that exits by itself is a death too: its kernel may have called ``exit``, and the frame is
  retried like any other that killed its worker.

What each role held, and where its replacement starts:

- a worker seat: its ASSIGNED rows go to other seats; a CLAIMED row is retried (attempt+1)
  or, after ``run.max_attempts``, quarantined as an error record; a DONE row it may not have
  announced is announced again.
- the dispatcher (FREE, FILLING, FILLED rows): a half-filled slot is freed (its message is
  read again), a filled one goes to a worker; the replacement resumes at
  ``dispatched_so_far``: the highest sequence number whose slot was filled. Sequence numbers
  count every item the source gave (messages and stream-finished markers), so for a
  positional source (files, sim) it is also the position to resume at.
- the publisher (DONE, PUBLISHING rows): its PUBLISHING rows go back to DONE; the
  replacement starts at ``publish_point``: every sequence number still in the ring is
  published (again, for the rows the dead one was publishing: the sinks are idempotent by
  message id); every other one up to the highest it ever released is already out.

A row handed to its next holder may have lost its pipe record with the process that wrote
it; recovery sends it again (``announce``) and the receivers ignore a record they already had
(``claim`` and ``take_for_publishing`` check state and ticket).

The process that died is known to be dead (its sentinel fired), and a row's SEQ column is
written before its STATE (``protocol.begin_fill``), so a numbered row carries its own
sequence number. A FREE row's SEQ is ignored: it may be a fill that had just begun.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from shmpipe.child.exits import ChildExit, ExitKind, classify_exit
from shmpipe.child.plumbing import Plumbing
from shmpipe.config import PipelineConfig
from shmpipe.engine import protocol
from shmpipe.engine.exit_codes import EXIT_CONFIG_ERROR, EXIT_FAILED
from shmpipe.engine.scheduler import Scheduler
from shmpipe.engine.summary import RunSummary
from shmpipe.observe.logs import frame_extra
from shmpipe.observe.snapshot import role_name
from shmpipe.shm.channel import ASSIGN, READY
from shmpipe.shm.layout import (
    ASSIGNED,
    ATTEMPT,
    CLAIMED,
    DONE,
    FILLED,
    FILLING,
    FREE,
    HELD_BY,
    MSG_ID,
    NUMBERED,
    OWNER,
    P_EXIT,
    P_KERNEL,
    P_RELEASED_SEQ,
    P_RESTARTS,
    P_STATE,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
    PS_DEAD,
    PS_EXITED,
    PUBLISHING,
    SEQ,
    STATE,
    TICKET,
    Holder,
)

log = logging.getLogger("shmpipe.supervisor")


class RunFailed(Exception):
    """An exit the run cannot recover from; ``exit_code`` is the run's (``exit_codes``)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Verdict(Enum):
    """What the supervisor does after an exit ``Recovery.after_exit`` did not fail the run on."""

    ENDED = "ended"  # stopped on purpose: the dispatcher drained the input, the publisher the run
    REPLACE = "replace"  # died: what it held has moved on; fork a replacement into its row


@dataclass(frozen=True)
class Decision:
    """``Recovery.after_exit``'s answer; ``resume_at``: where a new dispatcher continues."""

    verdict: Verdict
    resume_at: int = 0


class Recovery:
    """The supervisor's one handler of process exits on the data path.

    Parameters
    ----------
    p : Plumbing
        The run's tables and pipes.
    scheduler : Scheduler
        Picks the seats that take a dead worker's or dispatcher's rows.
    config : PipelineConfig
        ``run.max_restarts``, ``run.max_attempts`` and the kernel names.
    summary : RunSummary
        Where restarts and quarantined frames are counted.
    """

    def __init__(
        self, p: Plumbing, scheduler: Scheduler, config: PipelineConfig, summary: RunSummary
    ) -> None:
        self.p, self.scheduler, self.config, self.summary = p, scheduler, config, summary

    def after_exit(self, proc: int, pid: int, code: int) -> Decision:
        """Handle the exit of process row ``proc`` (pid ``pid``, ``Process.exitcode`` ``code``).

        Raises
        ------
        RunFailed
            The child stopped the run on purpose, or the restart budget is spent.
        """
        ring, ended = self.p.ring, classify_exit(code)
        row, worker = ring.procs[proc], proc >= PROC_FIRST_WORKER
        row[P_EXIT] = code
        died = ended.kind is ExitKind.DIED or (
            worker and ended.kind in (ExitKind.FINISHED, ExitKind.RAISED)
        )
        row[P_STATE] = PS_DEAD if died else PS_EXITED
        reason = ring.exit_reason(proc) or f"{role_name(proc)} failed ({ended.cause})"
        if ended.kind is ExitKind.REFUSED:
            raise RunFailed(reason, EXIT_CONFIG_ERROR)
        if not died and ended.kind is not ExitKind.FINISHED:
            raise RunFailed(reason)
        if not died:
            return Decision(Verdict.ENDED)
        resume_at = self._move_rows_on(proc, pid, ended)
        self._spend_restart(proc, ended)
        return Decision(Verdict.REPLACE, resume_at)

    def _move_rows_on(self, proc: int, pid: int, ended: ChildExit) -> int:
        p = self.p
        if proc == PROC_DISPATCHER:
            rows = recover_dispatcher(p.ring, self.scheduler, p.seats, p.done, p.workers)
            log.warning(
                "the dispatcher (pid %d) died (%s): replaced; resuming after item %d "
                "(%d half-filled slot(s) read again, %d filled slot(s) handed to workers)",
                pid,
                ended.cause,
                rows.resume_at,
                rows.abandoned,
                rows.assigned,
            )
            return rows.resume_at
        if proc == PROC_PUBLISHER:
            requeued = recover_publisher(p.ring)
            log.warning(
                "the publisher (pid %d) died (%s): replaced; %d result(s) it was publishing go "
                "out again",
                pid,
                ended.cause,
                requeued,
            )
            return 0
        seat = proc - PROC_FIRST_WORKER
        log.warning("worker %d (pid %d) died: %s", seat, pid, ended.cause)
        self.recover_seat(seat, f"worker {seat} (pid {pid}) died: {ended.cause}")
        return 0

    def _spend_restart(self, proc: int, ended: ChildExit) -> None:
        """Count one restart of ``proc`` against ``run.max_restarts``, the one budget."""
        s = self.summary
        if proc == PROC_DISPATCHER:
            s.dispatcher_restarts += 1
        elif proc == PROC_PUBLISHER:
            s.publisher_restarts += 1
        else:
            s.worker_restarts += 1
        self.p.ring.procs[proc, P_RESTARTS] += 1
        total = s.worker_restarts + s.dispatcher_restarts + s.publisher_restarts
        limit = self.config.run.max_restarts
        if total > limit:
            raise RunFailed(
                f"processes died {total} times (run.max_restarts = {limit}); "
                f"last: {role_name(proc)} ({ended.cause})"
            )

    # -- a worker seat ---------------------------------------------------------------------
    def recover_seat(self, seat: int, cause: str) -> None:
        """Give the rows of a dead worker seat back: re-assign, retry, or quarantine."""
        p, ring = self.p, self.p.ring
        table, held = ring.table, HELD_BY[Holder.WORKER]
        for slot in np.nonzero(table[:, OWNER] == seat)[0].tolist():
            row = table[slot]
            # STATE, then OWNER again: the row may have been published and filled anew since
            # the scan, and a live seat's row must not be taken. Every writer stores OWNER
            # before STATE, and no one gives the dead seat a row, so a row seen in a state
            # and then still owned by the seat was the seat's in that state.
            state = int(row[STATE])
            if row[OWNER] != seat:
                continue
            if state == CLAIMED and protocol.retry(row) >= self.config.run.max_attempts:
                self._quarantine(slot, self._kernel_running(seat), cause)
            elif held[state]:
                if state == CLAIMED:
                    log.warning(
                        "re-dispatching message %d (attempt %d) after %s",
                        int(row[MSG_ID]),
                        int(row[ATTEMPT]) + 1,
                        cause,
                        extra=frame_extra(ring, slot),
                    )
                target = self.scheduler.least_loaded_seat(p.workers, exclude=seat)
                self.scheduler.assign(slot, target, p.seats[target])
            elif state == DONE:
                # It may have died between marking DONE and telling the publisher.
                announce(ring, slot, state, p.seats, p.done)

    def _kernel_running(self, seat: int) -> str:
        index = int(self.p.ring.procs[PROC_FIRST_WORKER + seat, P_KERNEL])
        return self.config.kernels[index - 1].name if index > 0 else "?"

    def _quarantine(self, slot: int, kernel: str, cause: str) -> None:
        ring = self.p.ring
        row = ring.table[slot]
        attempts = int(row[ATTEMPT])
        protocol.record_error(
            ring,
            slot,
            kernel,
            f"quarantined: the frame killed {attempts} workers in kernel {kernel!r}; last: {cause}",
        )
        ticket = protocol.quarantine(row)
        self.summary.quarantined += 1
        log.error(
            "message %d quarantined after %d attempts (%s)",
            int(row[MSG_ID]),
            attempts,
            cause,
            extra=frame_extra(ring, slot),
        )
        self.p.done.send(READY, slot, ticket)


def announce(ring, slot: int, state: int, seats: list, done_pipe) -> bool:
    """Send again the record that tells a row's holder it has the row: ASSIGN to the seat of
    an ASSIGNED row, READY to the publisher for a DONE one. False for other states."""
    row = ring.table[slot]
    if state == ASSIGNED:
        seats[int(row[OWNER])].send(ASSIGN, slot, int(row[TICKET]), 0)
    elif state == DONE:
        done_pipe.send(READY, slot, int(row[TICKET]))
    else:
        return False
    return True


# -- the dispatcher and the publisher -----------------------------------------------------
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
    numbered = NUMBERED[state]
    highest = int(seq[numbered].max()) if numbered.any() else 0
    return max(highest, int(ring.procs[PROC_PUBLISHER, P_RELEASED_SEQ]))


@dataclass
class DispatcherRows:
    """What the supervisor did with a dead dispatcher's rows."""

    resume_at: int
    abandoned: int = 0
    assigned: int = 0
    resent: int = 0


def recover_dispatcher(ring, scheduler, seats: list, done_pipe, workers: int) -> DispatcherRows:
    """Move a dead dispatcher's rows on and say where its replacement resumes: a half-filled
    slot is freed, a filled one goes to a worker, and the rows it handed on (ASSIGNED, or
    DONE through ``skip_to_done``) are announced again."""
    rows = DispatcherRows(dispatched_so_far(ring))
    table = ring.table
    for slot in range(table.shape[0]):
        state = int(table[slot, STATE])
        if state == FILLING:
            protocol.abandon_fill(table[slot])
            rows.abandoned += 1
        elif state == FILLED:
            seat = scheduler.least_loaded_seat(workers)
            scheduler.assign(slot, seat, seats[seat])
            rows.assigned += 1
        elif announce(ring, slot, state, seats, done_pipe):
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
        Slots DONE now, to take at once (their READY records may have gone to the dead one).
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
    pending = seq[NUMBERED[state]]
    low = int(pending.min()) if len(pending) else released + 1
    watermark = min(low - 1, released)
    published = set(range(watermark + 1, released + 1)) - set(pending.tolist())
    return PublishPoint(
        next_seq=watermark + 1,
        watermark=watermark,
        published=published,
        done=np.nonzero(state == DONE)[0].tolist(),
        free=np.nonzero(state == FREE)[0].tolist(),
    )
