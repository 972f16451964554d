"""PayloadStore: where message payloads live, and which of them the "memory cache" holds.

Every payload goes to a file as it arrives, streamed from the socket in bounded chunks, so
the service's memory stays bounded whatever the payload size:

* ``STORE_IN_FILESYSTEM`` payloads go to ``data_dir/<name>``, where a consumer with
  ``has_filesystem=True`` and ``source_path=data_dir`` reads them directly;
* other payloads (cache-only ingest) go to ``data_dir/.asapo/blobs/<buf_id>``.

ASAPO's receiver keeps recent payloads in a RAM cache addressed by ``buf_id``; a consumer whose
cache read (op 6) misses falls back to the file system or the file-transfer service. We keep
that contract without holding payloads in our own RAM: the "cache" is a window of the most
recent ``cache_bytes`` worth of buf ids, served from the files (the OS page cache keeps hot
ones in memory). Cache-only payloads are always served, since nothing else could serve them.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK = 4 << 20


class PayloadJournal(Protocol):
    """Persistence of payload locations (buf id -> file)."""

    def put_payload(self, buf_id: int, ref: PayloadRef | None) -> None: ...


@dataclass(frozen=True)
class PayloadRef:
    """Where one payload lives."""

    path: str
    size: int
    in_filesystem: bool  # at data_dir/<name> (True) or an internal blob (False)


class PayloadError(Exception):
    """A payload could not be stored (bad name, I/O error)."""


STATE_DIR = ".asapo"  # inside the data folder: the database and cache-only payloads


def resolve_name(root: Path, name: str) -> Path:
    """``root/name``, refusing names that would escape ``root`` or touch the service's state.

    Raises
    ------
    PayloadError
        For an empty or absolute name, one with ``..`` components, or one inside
        ``root/.asapo``.
    """
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts or rel.parts[0] == STATE_DIR:
        raise PayloadError(
            f"file name must be a relative path inside the data folder "
            f"(not under {STATE_DIR}/): {name!r}"
        )
    return root / rel


class PayloadStore:
    """Payload files under a data folder plus the buf-id cache window.

    Parameters
    ----------
    data_dir
        The data folder (``source_path`` of ``has_filesystem`` consumers).
    cache_bytes
        Size of the cache window; older filesystem payloads answer "not in cache".
    journal
        Persists buf id -> file; ``None`` for memory-only state.
    """

    def __init__(
        self, data_dir: Path, cache_bytes: int = 1 << 30, journal: PayloadJournal | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.blob_dir = self.data_dir / STATE_DIR / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        self._journal = journal
        self._lock = threading.Lock()
        self._refs: dict[int, PayloadRef] = {}
        self._window: OrderedDict[int, int] = OrderedDict()
        self._window_bytes = 0
        self._next_buf_id = 1
        self._made_dirs: set[Path] = set()  # parents known to exist: saves a syscall per file

    def restore(self, buf_id: int, ref: PayloadRef) -> None:
        """Re-register a payload while loading persisted state (not in the cache window)."""
        self._refs[buf_id] = ref
        self._next_buf_id = max(self._next_buf_id, buf_id + 1)

    def receive(
        self, read_into, size: int, name: str, in_filesystem: bool, buffer: memoryview
    ) -> int:
        """Stream ``size`` bytes into a new payload file and return its buf id.

        Parameters
        ----------
        read_into
            ``read_into(view)`` fills ``view`` completely (from the socket) or raises.
        buffer
            Scratch space of at least one chunk, reused across calls by the caller.
        """
        with self._lock:
            buf_id = self._next_buf_id
            self._next_buf_id += 1
        failure: Exception | None = None
        try:
            path = (
                resolve_name(self.data_dir, name) if in_filesystem else self.blob_dir / str(buf_id)
            )
            tmp = path.with_name(path.name + f".{buf_id}.part")
            out = self._create(tmp)
        except (PayloadError, OSError) as exc:
            failure, out = exc, None
        # read all ``size`` bytes even when the file cannot be written, so the connection
        # stays in step and the error can be answered
        left = size
        try:
            while left:
                view = buffer[: min(left, len(buffer))]
                read_into(view)
                left -= len(view)
                if out is not None and failure is None:
                    try:
                        out.write(view)
                    except OSError as exc:
                        failure = exc
            if out is not None:
                out.close()
                if failure is None:
                    os.replace(tmp, path)
        except BaseException:
            if out is not None:
                out.close()
                tmp.unlink(missing_ok=True)
            raise
        if failure is not None:
            if out is not None:
                tmp.unlink(missing_ok=True)
            if isinstance(failure, PayloadError):
                raise failure
            raise PayloadError(f"cannot store payload {name!r}: {failure}") from failure
        ref = PayloadRef(str(path), size, in_filesystem)
        with self._lock:
            self._refs[buf_id] = ref
            if self._journal is not None:
                self._journal.put_payload(buf_id, ref)
            if in_filesystem:
                self._window[buf_id] = size
                self._window_bytes += size
                while self._window_bytes > self.cache_bytes and self._window:
                    _, old = self._window.popitem(last=False)
                    self._window_bytes -= old
        return buf_id

    def _create(self, path: Path):
        if path.parent not in self._made_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(path.parent)
        try:
            return open(path, "wb")
        except FileNotFoundError:  # the folder was removed behind our back
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "wb")

    def cached(self, buf_id: int) -> PayloadRef | None:
        """The payload a cache read (op 6) may serve, or None for "not in cache"."""
        with self._lock:
            ref = self._refs.get(buf_id)
            if ref is None or (ref.in_filesystem and buf_id not in self._window):
                return None
            return ref

    def forget(self, buf_ids: list[int]) -> None:
        """Drop payloads of a deleted stream; internal blobs are removed, data files kept."""
        with self._lock:
            refs = [(b, self._refs.pop(b, None)) for b in buf_ids]
            for buf_id, ref in refs:
                if ref is None:
                    continue
                if buf_id in self._window:
                    self._window_bytes -= self._window.pop(buf_id)
                if self._journal is not None:
                    self._journal.put_payload(buf_id, None)
        for _, ref in refs:
            if ref is not None and not ref.in_filesystem:
                Path(ref.path).unlink(missing_ok=True)
