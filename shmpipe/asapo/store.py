"""MessageStore: the service's state — sources, streams, records, consumer groups and acks.

All state lives in memory behind one lock, so every broker operation (above all the
group pointer advance) is atomic; the objects it keeps are those of
:mod:`~shmpipe.asapo.stream`; a :class:`~shmpipe.asapo.journal.Journal` mirrors each
change to disk when the service has a data directory, and rebuilds the store at start-up.

Semantics follow the ASAPO broker:

* one pointer per (group, stream, id key); ``_id`` walks ids in order (a missing id is a gap
  the client waits on, then skips), ``time_id`` walks records in arrival order;
* every id goes to exactly one consumer of a group, every group sees every id;
* ids, pointers, delays and counts are checked against what the journal can store
  (:mod:`~shmpipe.asapo.limits`) before anything changes, so memory and disk always agree;
  a range query walks the ids that exist, outside the lock, never the numeric range;
* with resend on, each delivered id is *in process* until acknowledged and is redelivered
  after ``delay_ms``, at most ``resend_attempts`` times (0: unlimited); a negative ack asks for
  one redelivery after its delay. Due redeliveries are checked on every ``next``.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from shmpipe.asapo.errors import NoDataError, PartialDataError, WrongInputError
from shmpipe.asapo.limits import MAX_DELAY_MS, MAX_ID, check_int
from shmpipe.asapo.stream import (
    ID_KEYS,
    GroupState,
    InProcess,
    Source,
    SourceKey,
    Stream,
    is_partial,
)


class Journal(Protocol):
    """What the store tells its persistence layer; every call happens under the store lock."""

    def put_stream(self, key: SourceKey, stream: str, created_ns: int) -> None: ...
    def put_record(self, key: SourceKey, stream: str, record: dict[str, Any]) -> None: ...
    def put_pointer(
        self, key: SourceKey, stream: str, group: str, id_key: str, value: int
    ) -> None: ...
    def put_ack(self, key: SourceKey, stream: str, group: str, id_: int) -> None: ...
    def put_inprocess(
        self, key: SourceKey, stream: str, group: str, id_: int, entry: InProcess | None
    ) -> None: ...
    def put_meta(self, key: SourceKey, stream: str, meta: Any) -> None: ...
    def delete_stream(self, key: SourceKey, stream: str, delete_meta: bool) -> None: ...


class NullJournal:
    """The journal of a memory-only service: forgets everything."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class MessageStore:
    """Streams, records, consumer groups and acknowledgements of every beamtime and source.

    Parameters
    ----------
    journal
        Receives every change for persistence; ``None`` keeps the state in memory only.
    """

    def __init__(self, journal: Journal | None = None) -> None:
        self._lock = threading.Lock()
        self._journal: Journal = journal if journal is not None else NullJournal()
        self._sources: dict[SourceKey, Source] = {}

    # ----------------------------------------------------------------- helpers
    def _source(self, key: SourceKey) -> Source:
        src = self._sources.get(key)
        if src is None:
            src = self._sources[key] = Source()
        return src

    def _stream(self, key: SourceKey, name: str, create: bool = False) -> Stream | None:
        src = self._sources.get(key) if not create else self._source(key)
        if src is None:
            return None
        st = src.streams.get(name)
        if st is None and create:
            st = src.streams[name] = Stream(name, time.time_ns())
            self._journal.put_stream(key, name, st.created_ns)
        return st

    def _group(self, key: SourceKey, stream: str, group: str) -> GroupState:
        groups = self._source(key).groups
        state = groups.get((stream, group))
        if state is None:
            state = groups[(stream, group)] = GroupState()
        return state

    # ----------------------------------------------------------------- restore
    def restore_stream(self, key: SourceKey, name: str, created_ns: int) -> None:
        """Recreate an empty stream while loading from the journal."""
        src = self._source(key)
        if name not in src.streams:
            src.streams[name] = Stream(name, created_ns)

    def restore_record(self, key: SourceKey, stream: str, record: dict[str, Any]) -> None:
        """Re-add a record while loading; records must come in ``time_id`` order."""
        st = self._source(key).streams.get(stream)
        if st is None:
            st = self._source(key).streams[stream] = Stream(stream, record.get("timestamp", 0))
        st.add(record)

    def restore_pointer(
        self, key: SourceKey, stream: str, group: str, id_key: str, value: int
    ) -> None:
        """Restore a group pointer while loading."""
        self._group(key, stream, group).pointers[id_key] = value

    def restore_ack(self, key: SourceKey, stream: str, group: str, id_: int) -> None:
        """Restore an acknowledgement while loading."""
        self._group(key, stream, group).acks.add(id_)

    def restore_inprocess(
        self, key: SourceKey, stream: str, group: str, id_: int, entry: InProcess
    ) -> None:
        """Restore an in-process (unacknowledged, redeliverable) id while loading."""
        self._group(key, stream, group).track(id_, entry)

    def restore_meta(self, key: SourceKey, stream: str, meta: Any) -> None:
        """Restore beamtime (``stream == ""``) or stream metadata while loading."""
        if stream:
            st = self._source(key).streams.get(stream)
            if st is None:
                st = self._source(key).streams[stream] = Stream(stream, time.time_ns())
            st.meta = meta
        else:
            self._source(key).meta = meta

    # ----------------------------------------------------------------- producer side
    def add_message(
        self, key: SourceKey, stream: str, record: dict[str, Any], auto_id: bool = False
    ) -> int:
        """Insert one message record (or the finish flag) and return its id.

        Raises
        ------
        WrongInputError
            When the id exists with a different record. Resending the same record (what a
            producer does after losing an answer) is accepted silently by returning the id.
        """
        if not auto_id:
            check_int("message id", record["_id"], 1, MAX_ID)
        with self._lock:
            st = self._stream(key, stream, create=True)
            if auto_id:
                record["_id"] = check_int("message id", max(st.max_id, st.finish_id) + 1)
            id_ = record["_id"]
            old = st.records.get(id_) or (st.finish if id_ == st.finish_id else None)
            if old is not None:
                if old.get("name") == record.get("name") and old.get("size") == record.get("size"):
                    raise DuplicateRecord(id_)
                raise WrongInputError(f"record {id_} already exists in stream {stream}")
            st.add(record)
            self._journal.put_record(key, stream, record)
            return id_

    def add_dataset_part(
        self, key: SourceKey, stream: str, id_: int, dataset_size: int, part: dict[str, Any]
    ) -> None:
        """Add one part (substream) of dataset ``id_``, creating the dataset record."""
        check_int("dataset id", id_, 1, MAX_ID)
        check_int("dataset size", dataset_size, 1, MAX_ID)
        check_int("dataset substream", part["dataset_substream"], 1, dataset_size)
        with self._lock:
            st = self._stream(key, stream, create=True)
            rec = st.records.get(id_)
            if rec is None:
                rec = {
                    "_id": id_,
                    "timestamp": part["timestamp"],
                    "dataset_size": dataset_size,
                    "messages": [],
                }
                st.add(rec)
            elif "messages" not in rec:
                raise WrongInputError(f"record {id_} is not a dataset")
            substream = part["dataset_substream"]
            for old in rec["messages"]:
                if old["dataset_substream"] == substream:
                    if old.get("name") == part.get("name") and old["size"] == part["size"]:
                        raise DuplicateRecord(id_)
                    raise WrongInputError(f"dataset {id_} part {substream} already exists")
            # a new list rather than an in-place append: a reader may be encoding the old one
            rec["messages"] = sorted([*rec["messages"], part], key=lambda m: m["dataset_substream"])
            st.last_ns = max(st.last_ns, part["timestamp"])
            st.note_if_complete(rec)
            self._journal.put_record(key, stream, rec)

    def set_meta(
        self, key: SourceKey, stream: str | None, meta: Any, mode: str, upsert: bool = True
    ) -> None:
        """Store beamtime (``stream=None``) or stream metadata.

        ``mode`` is ``replace``, ``update`` (merge top-level keys) or ``insert`` (fail if
        present).
        """
        with self._lock:
            holder: Any = (
                self._source(key) if stream is None else self._stream(key, stream, create=True)
            )
            old = holder.meta
            if mode == "insert" and old is not None:
                raise WrongInputError("metadata already exists")
            if mode == "update":
                if old is None and not upsert:
                    raise WrongInputError("no metadata to update")
                if isinstance(old, dict) and isinstance(meta, dict):
                    meta = {**old, **meta}
            holder.meta = meta
            self._journal.put_meta(key, stream or "", meta)

    def get_meta(self, key: SourceKey, stream: str | None) -> Any:
        """Beamtime (``stream=None``) or stream metadata; None when never set."""
        with self._lock:
            if stream is None:
                src = self._sources.get(key)
                return src.meta if src else None
            st = self._stream(key, stream)
            return st.meta if st else None

    def delete_stream(
        self, key: SourceKey, stream: str, error_on_not_exist: bool = True, delete_meta: bool = True
    ) -> list[dict[str, Any]]:
        """Delete a stream with its groups' pointers and acks; returns its message records.

        Raises
        ------
        WrongInputError
            When the stream does not exist and ``error_on_not_exist``.
        """
        with self._lock:
            src = self._sources.get(key)
            st = src.streams.get(stream) if src else None
            if st is None:
                if error_on_not_exist:
                    raise WrongInputError(f"stream {stream} does not exist")
                return []
            del src.streams[stream]
            for gkey in [k for k in src.groups if k[0] == stream]:
                del src.groups[gkey]
            self._journal.delete_stream(key, stream, delete_meta)
            if not delete_meta and st.meta is not None:
                kept = src.streams[stream] = Stream(stream, st.created_ns)
                kept.meta = st.meta
            messages = []
            for rec in st.records.values():
                messages.extend(rec.get("messages", [rec]))
            return messages

    # ----------------------------------------------------------------- consumer side
    @staticmethod
    def create_group() -> str:
        """A new, unique consumer group id."""
        return secrets.token_hex(10)

    def next(
        self,
        key: SourceKey,
        stream: str,
        group: str,
        id_key: str = "_id",
        dataset: bool = False,
        minsize: int = 0,
        resend: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Advance the group's pointer and return the record there.

        Parameters
        ----------
        id_key
            ``_id`` (ordered by id) or ``time_id`` (arrival order).
        resend
            ``(delay_ms, resend_attempts)`` when the consumer has resend on.

        Raises
        ------
        NoDataError
            End of stream, stream finished, or a gap at the id the pointer moved to.
        PartialDataError
            The dataset there is incomplete.
        """
        if id_key not in ID_KEYS:
            raise WrongInputError(f"unknown id_key {id_key}")
        check_int("minsize", minsize)
        if resend is not None:
            resend = (
                check_int("delay_ms", resend[0], 0, MAX_DELAY_MS),
                check_int("resend_attempts", resend[1]),
            )
        with self._lock:
            now = time.time_ns()
            st = self._stream(key, stream)
            gstate = self._group(key, stream, group)
            due = gstate.pop_due(now)
            if due is not None and st is not None:
                id_, entry = due
                entry.attempts += 1
                entry.due_ns = now + (resend[0] if resend else 0) * 1_000_000
                if resend:
                    entry.max_attempts = resend[1] if resend[1] > 0 else -1
                gstate.track(id_, entry)
                self._journal.put_inprocess(key, stream, group, id_, entry)
                return self._record_or_error(st, id_, dataset, minsize)
            if st is None:
                raise NoDataError(0, 0)
            max_index = st.max_index(id_key, dataset, minsize)
            pointer = gstate.pointers[id_key]
            if pointer >= max_index:
                if st.finish is not None and (id_key == "time_id" or pointer >= st.finish_id):
                    raise NoDataError(st.max_id, st.max_id, st.next_stream)
                raise NoDataError(max_index, max_index)
            pointer += 1
            gstate.pointers[id_key] = pointer
            self._journal.put_pointer(key, stream, group, id_key, pointer)
            if id_key == "_id" and pointer == st.finish_id:
                raise NoDataError(st.max_id, st.max_id, st.next_stream)
            record = st.record_at(id_key, pointer)
            if record is None:
                raise NoDataError(pointer, max_index)
            if dataset and is_partial(record, minsize):
                raise PartialDataError(record)
            if resend is not None and record["_id"] not in gstate.inprocess:
                entry = InProcess(
                    now + resend[0] * 1_000_000, 0, resend[1] if resend[1] > 0 else -1
                )
                gstate.track(record["_id"], entry)
                self._journal.put_inprocess(key, stream, group, record["_id"], entry)
            return record

    @staticmethod
    def _record_or_error(st: Stream, id_: int, dataset: bool, minsize: int) -> dict[str, Any]:
        if id_ == st.finish_id:
            raise NoDataError(st.max_id, st.max_id, st.next_stream)
        record = st.records.get(id_)
        if record is None:
            raise NoDataError(id_, max(st.max_id, st.finish_id))
        if dataset and is_partial(record, minsize):
            raise PartialDataError(record)
        return record

    def by_id(
        self, key: SourceKey, stream: str, id_: int, dataset: bool = False, minsize: int = 0
    ) -> dict[str, Any]:
        """The record with id ``id_``; the pointers do not move."""
        check_int("id", id_)
        check_int("minsize", minsize)
        with self._lock:
            st = self._stream(key, stream)
            if st is None:
                raise NoDataError(id_, 0)
            return self._record_or_error(st, id_, dataset, minsize)

    def last(
        self,
        key: SourceKey,
        stream: str,
        dataset: bool = False,
        minsize: int = 0,
        group: str | None = None,
    ) -> dict[str, Any]:
        """The newest record (for datasets, the newest complete one).

        With ``group`` (the client's ``get_last(group_id=...)``) each newest record is given
        to the group once; asking again before a newer one arrives is end of stream.
        """
        check_int("minsize", minsize)
        with self._lock:
            st = self._stream(key, stream)
            top = st.max_index("_id", dataset, minsize) if st else 0
            if st is None or top == 0:
                raise NoDataError(0, 0)
            if group is not None:
                gstate = self._group(key, stream, group)
                if gstate.last_given >= top and top != st.finish_id:
                    raise NoDataError(top, top)
                gstate.last_given = top
            return self._record_or_error(st, top, dataset, minsize)

    def set_pointer(self, key: SourceKey, stream: str, group: str, value: int) -> None:
        """Move the group's pointer so the next ``next`` returns id ``value + 1``.

        Pending redeliveries of ids from ``value`` on are dropped (they will come again
        through the pointer), as the ASAPO broker does.
        """
        check_int("pointer value", value)
        with self._lock:
            gstate = self._group(key, stream, group)
            for id_key in ID_KEYS:
                gstate.pointers[id_key] = value
                self._journal.put_pointer(key, stream, group, id_key, value)
            for id_ in [i for i in gstate.inprocess if i >= value]:
                del gstate.inprocess[id_]
                self._journal.put_inprocess(key, stream, group, id_, None)

    def ack(self, key: SourceKey, stream: str, group: str, id_: int) -> None:
        """Acknowledge ``id_`` for the group.

        Raises
        ------
        WrongInputError
            When the id is already acknowledged.
        """
        check_int("id", id_, 1, MAX_ID)
        with self._lock:
            gstate = self._group(key, stream, group)
            if id_ in gstate.acks:
                raise WrongInputError(f"message {id_} already acknowledged")
            gstate.acks.add(id_)
            self._journal.put_ack(key, stream, group, id_)
            if gstate.inprocess.pop(id_, None) is not None:
                self._journal.put_inprocess(key, stream, group, id_, None)

    def neg_ack(self, key: SourceKey, stream: str, group: str, id_: int, delay_ms: int) -> None:
        """Ask for one redelivery of ``id_`` to the group after ``delay_ms``."""
        check_int("id", id_, 1, MAX_ID)
        check_int("DelayMs", delay_ms, 0, MAX_DELAY_MS)
        with self._lock:
            gstate = self._group(key, stream, group)
            if id_ in gstate.acks:
                return  # already done: a late nack must not resurrect it
            entry = InProcess(time.time_ns() + delay_ms * 1_000_000, 0, 1)
            gstate.track(id_, entry)
            self._journal.put_inprocess(key, stream, group, id_, entry)

    def unacknowledged(
        self, key: SourceKey, stream: str, group: str, from_id: int = 0, to_id: int = 0
    ) -> list[int]:
        """Ids in ``[from_id, to_id]`` (``to_id=0``: up to the last) not acknowledged.

        Walks the stored ids (a snapshot taken under the lock), not the numeric range, and
        filters them outside the lock: cost follows the stream's size, whatever the range.
        """
        from_id, to_id = check_int("from", from_id), check_int("to", to_id)
        with self._lock:
            st = self._stream(key, stream)
            if st is None:
                return []
            ids = st.by_time.copy()  # every stored id, in arrival order
            acks = self._group(key, stream, group).acks.copy()
            top = to_id if to_id > 0 else st.max_id
        low = max(from_id, 1)
        return sorted(i for i in ids if low <= i <= top and i not in acks)

    def last_ack(self, key: SourceKey, stream: str, group: str) -> int:
        """The highest acknowledged id of the group, 0 when none."""
        with self._lock:
            acks = self._group(key, stream, group).acks
            return max(acks) if acks else 0

    def size(
        self, key: SourceKey, stream: str, dataset: bool = False, incomplete: bool = False
    ) -> int:
        """Number of records (for datasets, complete ones unless ``incomplete``)."""
        with self._lock:
            st = self._stream(key, stream)
            if st is None:
                return 0
            if dataset and not incomplete:
                return st.complete_count
            return len(st.records)

    def streams(self, key: SourceKey) -> list[dict[str, Any]]:
        """Info of every stream of the source, oldest first."""
        with self._lock:
            src = self._sources.get(key)
            if src is None:
                return []
            ordered = sorted(src.streams.values(), key=lambda s: (s.created_ns, s.name))
            return [s.info() for s in ordered]

    def sources(self, beamtime: str) -> list[str]:
        """Data sources of a beamtime that have at least one stream or metadata."""
        with self._lock:
            return sorted(
                src
                for (bt, src), s in self._sources.items()
                if bt == beamtime and (s.streams or s.meta is not None)
            )

    def records(self, key: SourceKey, stream: str) -> Iterable[dict[str, Any]]:
        """A snapshot of the stream's records (for tools and tests)."""
        with self._lock:
            st = self._stream(key, stream)
            return list(st.records.values()) if st else []


class DuplicateRecord(Exception):
    """The same record was sent twice (a producer retry); answered as a warning."""

    def __init__(self, id_: int) -> None:
        super().__init__(f"duplicated request: record {id_} exists")
        self.id = id_
