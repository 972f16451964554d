"""StateStore: the service's memory in SQLite — runs, versions, outputs, added beamtimes.

Every change is one committed transaction (``synchronous = FULL``), so a service killed at any
instant (SIGKILL, a node reboot) finds on its next start exactly what it had said last: the
same history, and the runs that were running, with the pid of each child to adopt.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "finished", "failed", "stopped")
ACTIVE = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipe TEXT NOT NULL,
    beamtime TEXT NOT NULL,
    data_source TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    streams TEXT NOT NULL DEFAULT '[]',
    overrides TEXT NOT NULL DEFAULT '{}',
    group_id TEXT NOT NULL,
    start_stream TEXT NOT NULL DEFAULT '',
    stream_index INTEGER NOT NULL DEFAULT 0,
    workers INTEGER NOT NULL,
    view_port INTEGER NOT NULL DEFAULT 0,
    pid INTEGER NOT NULL DEFAULT 0,
    pid_started REAL NOT NULL DEFAULT 0,
    log_offset INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    frames_in INTEGER NOT NULL DEFAULT 0,
    frames_out INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    done_in INTEGER NOT NULL DEFAULT 0,
    done_out INTEGER NOT NULL DEFAULT 0,
    done_errors INTEGER NOT NULL DEFAULT 0,
    rate REAL NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    frames_out_at_failure INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    exit_code INTEGER,
    outputs TEXT NOT NULL DEFAULT '[]',
    summary TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    stop_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS beamtimes (
    id TEXT PRIMARY KEY,
    token TEXT NOT NULL,
    added REAL NOT NULL
);
"""

_JSON = ("streams", "overrides", "outputs")


class StateStore:
    """The SQLite file of one service; safe to use from its threads.

    Parameters
    ----------
    path
        The database file (created with its folder; readable by its owner only).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(mode=0o600, exist_ok=True)  # it holds beamtime tokens
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(_SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a state file of an earlier version up to this one: columns added since are
        added to it (each has a default), so an upgrade keeps every run."""
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(runs)")}
        table = _SCHEMA.split("CREATE TABLE IF NOT EXISTS runs (", 1)[1].split(");", 1)[0]
        for line in table.strip().splitlines():
            definition = line.strip().rstrip(",")
            if definition.split()[0] not in have:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {definition}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _row(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        for k in _JSON:
            d[k] = json.loads(d[k])
        return d

    def add_run(self, **fields: Any) -> int:
        """Insert a run (``state`` defaults to queued); returns its id."""
        fields.setdefault("state", "queued")
        fields.setdefault("created", time.time())
        for k in _JSON:
            if k in fields:
                fields[k] = json.dumps(fields[k])
        keys = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self._lock:
            cur = self._db.execute(
                f"INSERT INTO runs ({keys}) VALUES ({marks})", tuple(fields.values())
            )
            return int(cur.lastrowid)

    def update(self, run_id: int, **fields: Any) -> None:
        """Change fields of one run, in one transaction."""
        for k in _JSON:
            if k in fields:
                fields[k] = json.dumps(fields[k])
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(
                f"UPDATE runs SET {assignments} WHERE id = ?", (*fields.values(), run_id)
            )

    def run(self, run_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._row(row) if row else None

    def runs(self, states: tuple[str, ...] = STATES) -> list[dict[str, Any]]:
        """Runs in any of ``states``, oldest first (the queue's order)."""
        marks = ", ".join("?" for _ in states)
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM runs WHERE state IN ({marks}) ORDER BY id", states
            ).fetchall()
        return [self._row(r) for r in rows]

    def find(self, recipe: str, beamtime: str, data_source: str, version: int) -> dict | None:
        """The run of one version of a recipe on one data source, if any."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM runs WHERE recipe = ? AND beamtime = ? AND data_source = ? "
                "AND version = ? ORDER BY id DESC LIMIT 1",
                (recipe, beamtime, data_source, version),
            ).fetchone()
        return self._row(row) if row else None

    def next_version(self, recipe: str, beamtime: str, data_source: str) -> int:
        """1 + the highest version of this recipe on this data source."""
        with self._lock:
            (top,) = self._db.execute(
                "SELECT MAX(version) FROM runs WHERE recipe = ? AND beamtime = ? "
                "AND data_source = ?",
                (recipe, beamtime, data_source),
            ).fetchone()
        return int(top or 0) + 1

    def add_beamtime(self, beamtime: str, token: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO beamtimes (id, token, added) VALUES (?, ?, ?)",
                (beamtime, token, time.time()),
            )

    def beamtimes(self) -> dict[str, str]:
        """Beamtimes added at run time: id -> token."""
        with self._lock:
            rows = self._db.execute("SELECT id, token FROM beamtimes ORDER BY added").fetchall()
        return {r["id"]: r["token"] for r in rows}


class StateInUse(RuntimeError):
    """Another service holds the state file."""


class StateLock:
    """One service per state file: an exclusive ``flock`` on ``<state>.lock``, held for the
    life of the service and released by the kernel however it ends (a second service on the
    same state would start every run twice)."""

    def __init__(self, path: str | Path) -> None:
        lock = Path(str(path) + ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise StateInUse(f"{path} is in use by another shmpipe serve (pid {holder})") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        os.close(self._fd)
