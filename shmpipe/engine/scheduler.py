"""Which worker seat gets a filled slot: the least loaded live seat, ties round-robin.

Used by the dispatcher for every batch of filled slots and by the supervisor to re-assign
the slots of a dead worker; the row transition itself is ``protocol.mark_assigned``.
"""

from __future__ import annotations

import numpy as np

from shmpipe.engine.protocol import mark_assigned
from shmpipe.shm.channel import ASSIGN
from shmpipe.shm.layout import HELD_BY, OWNER, P_STATE, PROC_FIRST_WORKER, PS_DEAD, STATE, Holder
from shmpipe.shm.ring import SlotRing

_HELD_BY_SEATS = HELD_BY[Holder.WORKER]


class Scheduler:
    """Assigns slots of ``ring`` to worker seats (one per process: the round-robin is local)."""

    def __init__(self, ring: SlotRing) -> None:
        self.ring = ring
        self._rr = -1

    def seat_loads(self, seats: int) -> tuple[list[int], list[bool]]:
        """Slots held per worker seat (``shm.layout.SLOT_STATES``), and which seats are alive.

        Called by the dispatcher once per batch of assignments: a mask and a bincount over
        the slot column, about 15 us at 256 slots (a Python loop took 32 us there).
        """
        state, owner = self.ring.table[:, STATE], self.ring.table[:, OWNER]
        held = _HELD_BY_SEATS[state] & (owner >= 0) & (owner < seats)
        load = np.bincount(owner[held], minlength=seats).tolist()
        pstate = self.ring.procs[PROC_FIRST_WORKER : PROC_FIRST_WORKER + seats, P_STATE].tolist()
        return load, [s != PS_DEAD for s in pstate]

    def least_loaded_seat(self, seats: int, exclude: int = -1) -> int:
        """The live worker seat holding the fewest slots (ties round-robin)."""
        load, alive = self.seat_loads(seats)
        return self._pick(load, alive, exclude)

    def _pick(self, load: list[int], alive: list[bool], exclude: int = -1) -> int:
        seats = len(load)
        self._rr = (self._rr + 1) % seats
        best, best_load = -1, 0
        for k in range(seats):
            seat = (self._rr + k) % seats
            if seat == exclude or not alive[seat]:
                continue
            if best < 0 or load[seat] < best_load:
                best, best_load = seat, load[seat]
        return best if best >= 0 else max(exclude, 0)

    def assign(self, slot: int, seat: int, inbox) -> None:
        """Hand ``slot`` to worker ``seat``: new ticket, owner, state, then the inbox record.

        The order of the stores matters: the worker reads the row only after the pipe record
        (the write syscall orders the stores before it), and the supervisor's recovery scan
        acts only on rows it sees ASSIGNED, which on x86-64 (stores kept in order) implies
        the owner and ticket are already there.
        """
        inbox.send(ASSIGN, slot, mark_assigned(self.ring.table[slot], seat), 0)

    def assign_many(self, slots: list[int], inboxes: list) -> None:
        """Hand FILLED ``slots`` to the least loaded live seats, one pipe write per seat.

        Each slot goes to the seat with the fewest slots at that moment, so a batch spreads
        over the seats as single assignments would; what changes is one write (one wake-up)
        per seat instead of one per slot.
        """
        load, alive = self.seat_loads(len(inboxes))
        by_seat: dict[int, list[tuple[int, int, int, int]]] = {}
        for slot in slots:
            seat = self._pick(load, alive)
            load[seat] += 1
            by_seat.setdefault(seat, []).append(
                (ASSIGN, slot, mark_assigned(self.ring.table[slot], seat), 0)
            )
        for seat, records in by_seat.items():
            inboxes[seat].send_many(records)
