"""SqliteJournal: the on-disk mirror of the MessageStore and PayloadStore.

Every state change is written to a SQLite database (WAL mode, one row per record, pointer,
ack, in-process id, metadata document and payload file), so a service stopped and started
again on the same data folder loses no message, acknowledgement or group pointer. The changes
a request makes are grouped in one open transaction that the broker or receiver commits
(:meth:`SqliteJournal.commit`) just before it answers: whatever a client was told is done is
on disk, so even a killed service (SIGKILL) loses nothing it confirmed, while a burst of
concurrent requests shares commits (a commit per statement cost about 65 µs on this VM).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from shmpipe.asapo.payloads import PayloadRef, PayloadStore
from shmpipe.asapo.store import MessageStore
from shmpipe.asapo.stream import InProcess, SourceKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (bt TEXT, src TEXT, stream TEXT, created_ns INTEGER,
    PRIMARY KEY (bt, src, stream));
CREATE TABLE IF NOT EXISTS records (bt TEXT, src TEXT, stream TEXT, id INTEGER,
    time_id INTEGER, doc TEXT, PRIMARY KEY (bt, src, stream, id));
CREATE TABLE IF NOT EXISTS pointers (bt TEXT, src TEXT, stream TEXT, grp TEXT, id_key TEXT,
    value INTEGER, PRIMARY KEY (bt, src, stream, grp, id_key));
CREATE TABLE IF NOT EXISTS acks (bt TEXT, src TEXT, stream TEXT, grp TEXT, id INTEGER,
    PRIMARY KEY (bt, src, stream, grp, id));
CREATE TABLE IF NOT EXISTS inprocess (bt TEXT, src TEXT, stream TEXT, grp TEXT, id INTEGER,
    due_ns INTEGER, attempts INTEGER, max_attempts INTEGER,
    PRIMARY KEY (bt, src, stream, grp, id));
CREATE TABLE IF NOT EXISTS meta (bt TEXT, src TEXT, stream TEXT, doc TEXT,
    PRIMARY KEY (bt, src, stream));
CREATE TABLE IF NOT EXISTS payloads (buf_id INTEGER PRIMARY KEY, path TEXT, size INTEGER,
    in_fs INTEGER, bt TEXT DEFAULT '', src TEXT DEFAULT '');
"""
# columns added since the first release, added to an older database at start-up
_ADDED_COLUMNS = {"payloads": ("bt TEXT DEFAULT ''", "src TEXT DEFAULT ''")}

# the finish flag has no arrival index; it is restored after every record of its stream
_FINISH_ORDER = 1 << 62


class SqliteJournal:
    """Persistence of the store and payload locations in ``<state_dir>/state.sqlite``.

    The ``put_*`` methods implement the store's ``Journal`` and the payload store's
    ``PayloadJournal`` protocols.

    Parameters
    ----------
    state_dir
        Folder for the database (created if needed).
    """

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "state.sqlite"
        # WAL + synchronous=NORMAL: a commit is a write to the OS page cache, durable across
        # a crash of the service (not across a power cut)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        # the store and the payload store call in under different locks
        self._lock = threading.Lock()
        self._db.execute("BEGIN")
        self._dirty = False

    def commit(self) -> None:
        """Commit the changes so far (call before answering the request that made them)."""
        with self._lock:
            if self._dirty:
                self._db.execute("COMMIT")
                self._db.execute("BEGIN")
                self._dirty = False

    def close(self) -> None:
        """Commit and close the database."""
        with self._lock:
            self._db.execute("COMMIT")
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)
            self._dirty = True

    # ------------------------------------------------------------ MessageStore journal
    def put_stream(self, key: SourceKey, stream: str, created_ns: int) -> None:
        self._exec("INSERT OR REPLACE INTO streams VALUES (?,?,?,?)", (*key, stream, created_ns))

    def put_record(self, key: SourceKey, stream: str, record: dict[str, Any]) -> None:
        order = record.get("time_id", _FINISH_ORDER)
        self._exec(
            "INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?)",
            (*key, stream, record["_id"], order, json.dumps(record)),
        )

    def put_pointer(self, key: SourceKey, stream: str, group: str, id_key: str, value: int) -> None:
        self._exec(
            "INSERT OR REPLACE INTO pointers VALUES (?,?,?,?,?,?)",
            (*key, stream, group, id_key, value),
        )

    def put_ack(self, key: SourceKey, stream: str, group: str, id_: int) -> None:
        self._exec("INSERT OR REPLACE INTO acks VALUES (?,?,?,?,?)", (*key, stream, group, id_))

    def put_inprocess(
        self, key: SourceKey, stream: str, group: str, id_: int, entry: InProcess | None
    ) -> None:
        if entry is None:
            self._exec(
                "DELETE FROM inprocess WHERE bt=? AND src=? AND stream=? AND grp=? AND id=?",
                (*key, stream, group, id_),
            )
        else:
            self._exec(
                "INSERT OR REPLACE INTO inprocess VALUES (?,?,?,?,?,?,?,?)",
                (*key, stream, group, id_, entry.due_ns, entry.attempts, entry.max_attempts),
            )

    def put_meta(self, key: SourceKey, stream: str, meta: Any) -> None:
        self._exec("INSERT OR REPLACE INTO meta VALUES (?,?,?,?)", (*key, stream, json.dumps(meta)))

    def delete_stream(self, key: SourceKey, stream: str, delete_meta: bool) -> None:
        tables = ["streams", "records", "pointers", "acks", "inprocess"]
        if delete_meta:
            tables.append("meta")
        for table in tables:
            self._exec(f"DELETE FROM {table} WHERE bt=? AND src=? AND stream=?", (*key, stream))

    # ------------------------------------------------------------ PayloadStore journal
    def put_payload(self, buf_id: int, ref: PayloadRef | None) -> None:
        if ref is None:
            self._exec("DELETE FROM payloads WHERE buf_id=?", (buf_id,))
        else:
            self._exec(
                "INSERT OR REPLACE INTO payloads VALUES (?,?,?,?,?,?)",
                (buf_id, ref.path, ref.size, int(ref.in_filesystem), *ref.owner),
            )

    # ------------------------------------------------------------ start-up
    def load_into(self, store: MessageStore, payloads: PayloadStore) -> None:
        """Rebuild the in-memory state from the database."""
        with self._lock:
            db = self._db
            for bt, src, stream, created in db.execute("SELECT * FROM streams ORDER BY created_ns"):
                store.restore_stream((bt, src), stream, created)
            owners: dict[int, tuple[str, str]] = {}  # for payload rows older than their owner
            for bt, src, stream, doc in db.execute(
                "SELECT bt, src, stream, doc FROM records ORDER BY bt, src, stream, time_id"
            ):
                record = json.loads(doc)
                store.restore_record((bt, src), stream, record)
                for message in record.get("messages", [record]):
                    if message.get("buf_id"):
                        owners[message["buf_id"]] = (bt, src)
            for bt, src, stream, doc in db.execute("SELECT * FROM meta"):
                store.restore_meta((bt, src), stream, json.loads(doc))
            for bt, src, stream, grp, id_key, value in db.execute("SELECT * FROM pointers"):
                store.restore_pointer((bt, src), stream, grp, id_key, value)
            for bt, src, stream, grp, id_ in db.execute("SELECT * FROM acks"):
                store.restore_ack((bt, src), stream, grp, id_)
            for bt, src, stream, grp, id_, due, attempts, max_attempts in db.execute(
                "SELECT * FROM inprocess"
            ):
                store.restore_inprocess(
                    (bt, src), stream, grp, id_, InProcess(due, attempts, max_attempts)
                )
            for buf_id, path, size, in_fs, bt, src in db.execute(
                "SELECT buf_id, path, size, in_fs, bt, src FROM payloads"
            ):
                owner = (bt, src) if bt else owners.get(buf_id, ("", ""))
                payloads.restore(buf_id, PayloadRef(path, size, bool(in_fs), owner))
