"""The slot protocol: each transition, its guards, the error record, and its single owner."""

from __future__ import annotations

import ast
import json

import pytest

from shmpipe.engine import protocol
from shmpipe.shm.layout import (
    ATTEMPT,
    ERROR_BYTES,
    FLAGS,
    HELD_BY,
    IN_FLIGHT,
    NUMBERED,
    OWNER,
    OWNER_PID,
    PAYLOAD_LEN,
    PROC_FIRST_WORKER,
    SEQ,
    SLOT_STATES,
    STATE,
    T_CLAIM,
    T_DONE,
    TICKET,
    Holder,
    SlotFlag,
    SlotState,
)
from shmpipe.shm.ring import RingGeometry, SlotRing
from tests.conftest import REPO


@pytest.fixture
def ring():
    r = SlotRing(RingGeometry(slots=4, header_bytes=4096, payload_bytes=4096, result_bytes=0,
                              processes=PROC_FIRST_WORKER + 2))  # fmt: skip
    yield r
    r.close()


def test_a_frame_goes_round_the_cycle(ring):
    row = ring.table[1]
    protocol.begin_fill(row, seq=7, t_ns=100)
    assert (row[STATE], row[SEQ], row[OWNER], row[FLAGS]) == (SlotState.FILLING, 7, -1, 0)
    protocol.mark_filled(row, 512)
    assert (row[STATE], row[PAYLOAD_LEN]) == (SlotState.FILLED, 512)
    ticket = protocol.mark_assigned(row, seat=1)
    assert (row[STATE], row[OWNER], row[TICKET]) == (SlotState.ASSIGNED, 1, ticket)
    assert not protocol.claim(row, seat=0, ticket=ticket, pid=42, t_ns=200)  # not its seat
    assert not protocol.claim(row, seat=1, ticket=ticket - 1, pid=42, t_ns=200)  # stale ticket
    assert row[STATE] == SlotState.ASSIGNED
    assert protocol.claim(row, seat=1, ticket=ticket, pid=42, t_ns=200)
    assert (row[STATE], row[OWNER_PID], row[T_CLAIM]) == (SlotState.CLAIMED, 42, 200)
    protocol.finish(row, 300)
    assert (row[STATE], row[T_DONE]) == (SlotState.DONE, 300)
    assert protocol.take_for_publishing(row, ticket)
    assert row[STATE] == SlotState.PUBLISHING
    assert not protocol.take_for_publishing(row, ticket)  # a duplicate DONE record
    protocol.release(row)
    assert row[STATE] == SlotState.FREE


def test_recovery_moves_a_row_to_another_seat_with_a_new_ticket(ring):
    row = ring.table[0]
    protocol.begin_fill(row, 1, 0)
    protocol.mark_filled(row, 0)
    old = protocol.mark_assigned(row, seat=0)
    assert protocol.claim(row, 0, old, 1, 1)
    assert protocol.retry(row) == 1 and row[ATTEMPT] == 1
    new = protocol.mark_assigned(row, seat=1)
    assert new == old + 1
    assert not protocol.claim(row, 0, old, 1, 2)  # the dead seat's replacement sees old records
    assert protocol.claim(row, 1, new, 2, 2)


def test_quarantine_and_skip_write_an_error_record_read_back_once(ring):
    row = ring.table[2]
    protocol.begin_fill(row, 1, 0)
    protocol.record_error(ring, 2, "source", "bad payload")
    ticket = protocol.skip_to_done(row)
    assert row[STATE] == SlotState.DONE and row[TICKET] == ticket
    assert row[FLAGS] & SlotFlag.ERROR and not row[FLAGS] & SlotFlag.QUARANTINED
    assert protocol.read_error(ring, 2) == {"kernel": "source", "error": "bad payload",
                                            "traceback": ""}  # fmt: skip
    protocol.begin_fill(row, 2, 0)
    protocol.mark_filled(row, 0)
    t = protocol.mark_assigned(row, 0)
    protocol.claim(row, 0, t, 1, 1)
    protocol.record_error(ring, 2, "integrate", "killed", traceback="x" * (2 * ERROR_BYTES))
    assert protocol.quarantine(row) == t + 1
    assert row[FLAGS] & SlotFlag.ERROR and row[FLAGS] & SlotFlag.QUARANTINED
    doc = protocol.read_error(ring, 2)
    assert doc["kernel"] == "integrate" and len(json.dumps(doc)) <= ERROR_BYTES


def test_only_the_protocol_module_writes_the_state_column():
    """Every other module moves a slot through a protocol function, never by a store."""
    writers = []
    for path in (REPO / "shmpipe").rglob("*.py"):
        if path.name == "protocol.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for t in targets:
                if isinstance(t, ast.Subscript) and "STATE" in ast.unparse(t.slice).split(", "):
                    writers.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert writers == []


def test_every_slot_state_has_a_declared_holder():
    """``SLOT_STATES`` is the one declaration every slot-table scan derives from (recovery,
    scheduler, watchdog, status): a state added to ``SlotState`` without its rule would be
    invisible to the recovery of a dead process."""
    missing = [s.name for s in SlotState if s not in SLOT_STATES]
    assert missing == [], f"slot state(s) with no declared holder: {missing}"
    held = sum(HELD_BY[h].astype(int) for h in Holder)
    assert held.tolist() == [1] * len(SlotState)  # each state held by exactly one process
    assert not (NUMBERED & ~IN_FLIGHT).any()  # a numbered row holds a message


def test_scans_follow_the_declared_holders(ring):
    """The scheduler counts the rows its declaration gives the worker seats, whatever the
    state's number: the scans hold no list of states of their own."""
    from shmpipe.engine.scheduler import Scheduler

    states = [SlotState.FILLED, SlotState.ASSIGNED, SlotState.CLAIMED, SlotState.DONE]
    for slot, state in enumerate(states):
        ring.table[slot, STATE], ring.table[slot, OWNER] = state, 1
    load, _ = Scheduler(ring).seat_loads(2)
    by_rule = sum(SLOT_STATES[s].holder is Holder.WORKER for s in states)
    assert load == [0, by_rule] == [0, 2]
