"""The broker's data model: a source's streams, a stream's records and a consumer group's
delivery state (pointers, acknowledgements, ids in process).

:class:`~shmpipe.asapo.store.MessageStore` owns these objects and guards them with its lock;
nothing here locks or journals by itself.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

FINISH_STREAM_NAME = "asapo_finish_stream"
NO_NEXT_STREAM = "asapo_no_next"
ID_KEYS = ("_id", "time_id")

SourceKey = tuple[str, str]  # (beamtime, data source)


@dataclass
class InProcess:
    """A delivered, not yet acknowledged id waiting for its redelivery time."""

    due_ns: int
    attempts: int  # redeliveries done so far
    max_attempts: int  # redeliveries allowed; -1 for unlimited


@dataclass
class GroupState:
    """One consumer group's view of one stream."""

    pointers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ID_KEYS, 0))
    acks: set[int] = field(default_factory=set)
    inprocess: dict[int, InProcess] = field(default_factory=dict)
    # (due, id) candidates; an entry is stale when it no longer matches ``inprocess``.
    due_heap: list[tuple[int, int]] = field(default_factory=list)
    last_given: int = 0  # newest id handed out by a grouped get_last

    def track(self, id_: int, entry: InProcess) -> None:
        self.inprocess[id_] = entry
        heapq.heappush(self.due_heap, (entry.due_ns, id_))

    def pop_due(self, now_ns: int) -> tuple[int, InProcess] | None:
        """The earliest in-process id whose redelivery is due and allowed, or None."""
        heap = self.due_heap
        while heap and heap[0][0] <= now_ns:
            due, id_ = heapq.heappop(heap)
            entry = self.inprocess.get(id_)
            if entry is None or entry.due_ns != due:
                continue  # acknowledged or rescheduled since this heap entry was pushed
            if entry.max_attempts != -1 and entry.attempts >= entry.max_attempts:
                continue  # attempts spent: stays unacknowledged (visible in nacks) for good
            return id_, entry
        return None


class Stream:
    """The records of one stream, by id and by arrival order."""

    def __init__(self, name: str, created_ns: int) -> None:
        self.name = name
        self.created_ns = created_ns
        self.last_ns = created_ns
        self.records: dict[int, dict[str, Any]] = {}
        self.by_time: list[int] = []  # time_id - 1 -> _id
        self.max_id = 0
        self.finish: dict[str, Any] | None = None
        self.meta: Any = None
        self.complete_count = 0  # datasets with all parts
        # highest complete dataset by each id key: bounds the scan for the stream's max index
        self.max_complete = dict.fromkeys(ID_KEYS, 0)

    @property
    def finish_id(self) -> int:
        return self.finish["_id"] if self.finish else 0

    @property
    def next_stream(self) -> str:
        if not self.finish:
            return ""
        return (self.finish.get("meta") or {}).get("next_stream", NO_NEXT_STREAM)

    def info(self) -> dict[str, Any]:
        next_stream = self.next_stream
        return {
            "lastId": self.max_id,
            "name": self.name,
            "timestampCreated": self.created_ns,
            "timestampLast": self.last_ns,
            "finished": self.finish is not None,
            "nextStream": "" if next_stream == NO_NEXT_STREAM else next_stream,
        }

    def add(self, record: dict[str, Any]) -> None:
        """Insert a new record (message, first dataset part, or the finish flag)."""
        id_ = record["_id"]
        self.last_ns = max(self.last_ns, record.get("timestamp", 0))
        if record.get("name") == FINISH_STREAM_NAME:
            self.finish = record
            return
        if "time_id" not in record:
            record["time_id"] = len(self.by_time) + 1
        self.records[id_] = record
        self.by_time.append(id_)
        self.max_id = max(self.max_id, id_)
        self.note_if_complete(record)

    def note_if_complete(self, record: dict[str, Any]) -> None:
        if "dataset_size" in record and len(record["messages"]) == record["dataset_size"]:
            self.complete_count += 1
            for key in ID_KEYS:
                self.max_complete[key] = max(self.max_complete[key], record[key])

    def record_at(self, id_key: str, index: int) -> dict[str, Any] | None:
        if id_key == "_id":
            return self.records.get(index)
        return self.records.get(self.by_time[index - 1]) if 0 < index <= len(self.by_time) else None

    def max_index(self, id_key: str, dataset: bool, minsize: int) -> int:
        """The highest index a ``next`` may move to.

        For datasets, the newest dataset that is complete (or has ``minsize`` parts): older
        incomplete ones are answered as partial, newer ones are waited for. A finished stream
        exposes everything, as ASAPO does.
        """
        top = self.max_id if id_key == "_id" else len(self.by_time)
        if self.finish is not None:
            return max(top, self.finish_id) if id_key == "_id" else top
        if not dataset:
            return top
        floor = self.max_complete[id_key]
        if minsize > 0:
            # the indexes that hold a record, newest first: never the numeric range, which a
            # producer can make astronomically long with one huge id
            if id_key == "_id":
                candidates = sorted((i for i in self.records if i > floor), reverse=True)
            else:
                candidates = list(range(top, floor, -1))
            for index in candidates:
                rec = self.record_at(id_key, index)
                if rec is not None and len(rec.get("messages", ())) >= minsize:
                    return index
        return floor


def is_partial(record: dict[str, Any], minsize: int) -> bool:
    """Whether a dataset record must be answered as partial data (206)."""
    if "dataset_size" not in record:
        return False
    parts = len(record["messages"])
    return parts < minsize if minsize > 0 else parts != record["dataset_size"]


class Source:
    """One (beamtime, data source): its streams in creation order and its beamtime meta."""

    def __init__(self) -> None:
        self.streams: dict[str, Stream] = {}
        self.meta: Any = None
        self.groups: dict[tuple[str, str], GroupState] = {}  # (stream, group) -> state
