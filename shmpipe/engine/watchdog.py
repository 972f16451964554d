"""The watchdog: a worker stuck on a frame is killed and replaced; a stalled run is named.

On by default (``run.watchdog``). The limit on one frame is adaptive: ``watchdog_factor``
times the chain's measured 99th percentile time per frame (the sum of each kernel's p99,
from the kernel histograms the workers keep in shared memory), never below
``watchdog_floor_s``, which covers start-up and the first frames before there is anything
to measure. ``run.watchdog_s`` > 0 sets a fixed limit instead.

A worker is stuck when it has held a CLAIMED frame for longer than the limit, or has been
stopped (SIGSTOP, a debugger, a cgroup freezer) for longer than the limit with or without a
frame: frames already in its inbox would wait for it for ever. It is logged, naming worker,
pid, stream and message, then SIGKILLed; the supervisor's usual recovery retries its frames
(quarantined after ``run.max_attempts``).

A stall is a run with frames in flight and nothing published for ``run.stall_s``: it is
logged once with who holds which message, and its start is kept in the publisher's row of
the process table (``STALLED_NS``, written only here) for ``shmpipe status`` and the
metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import numpy as np

from shmpipe.child.plumbing import now_ns
from shmpipe.observe.logs import frame_extra
from shmpipe.shm.layout import (
    CLAIMED,
    HELD_BY,
    IN_FLIGHT,
    KERNEL_BUCKETS_S,
    MSG_ID,
    OWNER,
    OWNER_PID,
    P_ERRORS,
    P_FRAMES,
    P_STALLED_NS,
    PROC_PUBLISHER,
    SLOT_STATES,
    STATE,
    STATE_NAMES,
    T_CLAIM,
    Holder,
)

log = logging.getLogger("shmpipe.supervisor")

# Who holds a message in each state, for the stall's log line; a worker seat's rows are named
# per seat (``Watchdog._held_by_seat``).
_HOLDER = {
    int(state): f"the {rule.holder.value} ({STATE_NAMES[state]})"
    for state, rule in SLOT_STATES.items()
    if rule.in_flight and rule.holder is not Holder.WORKER
}
_HELD_BY_SEATS = HELD_BY[Holder.WORKER]


def chain_p99_s(kernel_hist: np.ndarray) -> float:
    """The chain's time per frame at the 99th percentile, from below: the sum over kernels
    of the upper bound of the bucket holding each kernel's p99 (0 before any frame)."""
    per_kernel = kernel_hist.sum(axis=0)  # (kernels, buckets), summed over processes
    bounds = (*KERNEL_BUCKETS_S, 2 * KERNEL_BUCKETS_S[-1])
    total = 0.0
    for counts in per_kernel:
        n = int(counts.sum())
        if n == 0:
            continue
        at = int(np.searchsorted(np.cumsum(counts), 0.99 * n))
        total += bounds[min(at, len(bounds) - 1)]
    return total


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"T", b"t")
    except (OSError, IndexError):
        return False


class Watchdog:
    """Called by the supervisor at each turn of its loop (about every 0.25 s).

    Parameters
    ----------
    run : RunSection
        ``config.run``: ``watchdog``, ``watchdog_s``, ``watchdog_floor_s``,
        ``watchdog_factor``, ``stall_s``.
    ring : SlotRing
        The run's tables.
    """

    def __init__(self, run: Any, ring: Any) -> None:
        self.run, self.ring = run, ring
        self._stopped_since: dict[int, float] = {}
        self._published = -1
        self._published_at = time.monotonic()
        self._stall_logged = False

    def limit_s(self) -> float:
        """The time one frame may take now."""
        if self.run.watchdog_s > 0:
            return float(self.run.watchdog_s)
        p99 = chain_p99_s(self.ring.timings.kernel_hist)
        return max(self.run.watchdog_floor_s, self.run.watchdog_factor * p99)

    def tick(self, workers: list) -> None:
        """Kill stuck workers, note a stall. ``workers``: the live process of each seat."""
        if self.run.watchdog:
            limit = self.limit_s()
            self._stuck_frames(workers, limit)
            self._stopped_workers(workers, limit)
        if self.run.stall_s > 0:
            self._stall(workers)

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _stuck_frames(self, workers: list, limit: float) -> None:
        table = self.ring.table
        deadline = now_ns() - int(limit * 1e9)
        stuck = (table[:, STATE] == CLAIMED) & (table[:, T_CLAIM] < deadline)
        for slot in stuck.nonzero()[0].tolist():
            pid, seat = int(table[slot, OWNER_PID]), int(table[slot, OWNER])
            if pid > 0 and 0 <= seat < len(workers) and workers[seat].pid == pid:
                extra = frame_extra(self.ring, slot)
                log.warning(
                    "watchdog: worker %d (pid %d) "
                    "spent more than %.1f s on stream %r message %d: killing it "
                    "(its frames are retried)",
                    seat,
                    pid,
                    limit,
                    extra["stream"],
                    extra["message_id"],
                    extra=extra,
                )
                self._kill(pid)

    def _stopped_workers(self, workers: list, limit: float) -> None:
        now = time.monotonic()
        for seat, w in enumerate(workers):
            if w is None or w.pid is None:
                continue
            if not _stopped(w.pid):
                self._stopped_since.pop(w.pid, None)
                continue
            since = self._stopped_since.setdefault(w.pid, now)
            if now - since > limit:
                log.warning(
                    "watchdog: worker %d (pid %d) has been stopped for more than %.1f s holding "
                    "%s: killing it (its frames go to other workers)",
                    seat,
                    w.pid,
                    limit,
                    self._held_by_seat(seat) or "no frame",
                )
                self._stopped_since.pop(w.pid, None)
                self._kill(w.pid)

    def _held_by_seat(self, seat: int) -> str:
        table = self.ring.table
        held = _HELD_BY_SEATS[table[:, STATE]] & (table[:, OWNER] == seat)
        return ", ".join(self._describe(slot) for slot in held.nonzero()[0].tolist())

    def _describe(self, slot: int) -> str:
        extra = frame_extra(self.ring, slot)
        state = int(self.ring.table[slot, STATE])
        return f"stream {extra['stream']!r} message {extra['message_id']} ({STATE_NAMES[state]})"

    def holders(self, workers: list) -> list[str]:
        """Who holds which message now, one line per process holding any."""
        table, lines = self.ring.table, []
        state = table[:, STATE]
        for seat, w in enumerate(workers):
            held = self._held_by_seat(seat)
            if held:
                pid = w.pid if w is not None else 0
                lines.append(f"worker {seat} (pid {pid}): {held}")
        for code, who in _HOLDER.items():
            slots = (state == code).nonzero()[0].tolist()
            if slots:
                ids = ", ".join(str(int(table[s, MSG_ID])) for s in slots[:8])
                more = f" and {len(slots) - 8} more" if len(slots) > 8 else ""
                lines.append(f"{who}: message(s) {ids}{more}")
        return lines

    def _stall(self, workers: list) -> None:
        procs = self.ring.procs
        published = int(procs[PROC_PUBLISHER, P_FRAMES] + procs[PROC_PUBLISHER, P_ERRORS])
        now = time.monotonic()
        in_flight = bool(IN_FLIGHT[self.ring.table[:, STATE]].any())
        if published != self._published or not in_flight:
            self._published, self._published_at = published, now
            if self._stall_logged:
                log.warning("the stall is over: publishing again")
            self._stall_logged = False
            procs[PROC_PUBLISHER, P_STALLED_NS] = 0
            return
        idle = now - self._published_at
        if idle < max(self.run.stall_s, 5 * chain_p99_s(self.ring.timings.kernel_hist)):
            return
        if not procs[PROC_PUBLISHER, P_STALLED_NS]:
            procs[PROC_PUBLISHER, P_STALLED_NS] = now_ns() - int(idle * 1e9)
        if not self._stall_logged:
            self._stall_logged = True
            log.warning(
                "stall: nothing published for %.0f s with frames in flight; %s",
                idle,
                "; ".join(self.holders(workers)) or "no slot held",
            )


__all__ = ["Watchdog", "chain_p99_s"]
