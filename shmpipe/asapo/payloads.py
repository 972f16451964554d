"""PayloadStore: where message payloads live, and which of them the "memory cache" holds.

Every payload goes to a file as it arrives, streamed from the socket in bounded chunks, so
the service's memory stays bounded whatever the payload size:

* ``STORE_IN_FILESYSTEM`` payloads go to ``data_dir/<beamtime>/<name>``, the beamtime's
  folder, where a consumer with ``has_filesystem=True`` and ``source_path`` set to that folder
  reads them directly; a name can never leave its beamtime's folder (``..``, absolute paths
  and symbolic links are refused);
* other payloads (cache-only ingest) go to ``data_dir/.asapo/blobs/<buf_id>``.

ASAPO's receiver keeps recent payloads in a RAM cache addressed by ``buf_id``; a consumer whose
cache read (op 6) misses falls back to the file system or the file-transfer service. We keep
that contract without holding payloads in our own RAM: the "cache" is a window of the most
recent ``cache_bytes`` worth of buf ids, served from the files (the OS page cache keeps hot
ones in memory). Cache-only payloads are always served, since nothing else could serve them.

A cache read carries no token in the 25.3 protocol, so buf ids are random 62-bit numbers: one
is learnt only from its record, which takes a token for the beamtime to read, and the read must
also name the payload's beamtime, data source and exact size.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20
_PART = re.compile(r"\.\d+\.part$")  # what receive() writes before the final rename


class PayloadJournal(Protocol):
    """Persistence of payload locations (buf id -> file)."""

    def put_payload(self, buf_id: int, ref: PayloadRef | None) -> None: ...


@dataclass(frozen=True)
class PayloadRef:
    """Where one payload lives and whose it is."""

    path: str
    size: int
    in_filesystem: bool  # at data_dir/<beamtime>/<name> (True) or an internal blob (False)
    owner: tuple[str, str] = ("", "")  # (beamtime, data source) that sent it


class PayloadError(Exception):
    """A payload could not be stored (bad name, I/O error)."""


STATE_DIR = ".asapo"  # inside the data folder: the database and cache-only payloads


def check_folder_name(kind: str, name: str) -> str:
    """A beamtime or data-source name that is safe as one folder name.

    Raises
    ------
    PayloadError
        For an empty name, one starting with ``.``, or one with ``/``, ``\\`` or NUL.
    """
    if (
        not name
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
        or len(name.encode("utf-8", "surrogatepass")) > 255
    ):
        raise PayloadError(f"{kind} {name!r} cannot name a folder")
    return name


def resolve_name(root: Path, name: str) -> Path:
    """``root/name``, refusing names that would escape ``root`` or touch the service's state.

    Raises
    ------
    PayloadError
        For an empty or absolute name, one with ``.``/``..`` components or NUL, one inside
        ``root/.asapo``, or one whose folders below ``root`` include a symbolic link.
    """
    rel = Path(name)
    parts = rel.parts
    if (
        not name
        or "\0" in name
        or rel.is_absolute()
        or not parts
        or any(p in (".", "..") for p in name.split("/"))
        or parts[0] == STATE_DIR
    ):
        raise PayloadError(
            f"file name must be a relative path inside the beamtime folder "
            f"(not under {STATE_DIR}/): {name!r}"
        )
    path = root / rel
    # a symbolic link among the existing folders could point anywhere: refuse it
    probe = root
    for part in parts[:-1]:
        probe = probe / part
        if probe.is_symlink():
            raise PayloadError(f"file name {name!r} goes through a symbolic link")
        if not probe.exists():
            break
    return path


def remove_partial_files(data_dir: Path) -> list[Path]:
    """Remove the ``*.<buf_id>.part`` files a killed service left half written."""
    removed = []
    for folder, dirs, files in os.walk(data_dir):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in files:
            if _PART.search(name):
                path = Path(folder, name)
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


class PayloadStore:
    """Payload files under a data folder plus the buf-id cache window.

    Parameters
    ----------
    data_dir
        The data folder; each beamtime's files are in ``data_dir/<beamtime>`` (the
        ``source_path`` of ``has_filesystem`` consumers).
    cache_bytes
        Size of the cache window; older filesystem payloads answer "not in cache".
    journal
        Persists buf id -> file; ``None`` for memory-only state.
    file_mode
        Permission bits of the files written (whatever the process umask).
    """

    def __init__(
        self,
        data_dir: Path,
        cache_bytes: int = 1 << 30,
        journal: PayloadJournal | None = None,
        file_mode: int = 0o640,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.blob_dir = self.data_dir / STATE_DIR / "blobs"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        self.file_mode = file_mode
        self._journal = journal
        self._lock = threading.Lock()
        self._refs: dict[int, PayloadRef] = {}
        self._window: OrderedDict[int, int] = OrderedDict()
        self._window_bytes = 0
        self._made_dirs: set[Path] = set()  # parents known to exist: saves a syscall per file

    def restore(self, buf_id: int, ref: PayloadRef) -> None:
        """Re-register a payload while loading persisted state (not in the cache window)."""
        self._refs[buf_id] = ref

    def _new_buf_id(self) -> int:
        # random, not sequential: a buf id is the only thing a cache read (op 6) must know
        while True:
            buf_id = secrets.randbits(62) or 1
            if buf_id not in self._refs:
                self._refs[buf_id] = PayloadRef("", -1, False)  # reserved until stored
                return buf_id

    def receive(
        self,
        read_into,
        size: int,
        name: str,
        in_filesystem: bool,
        buffer: memoryview,
        owner: tuple[str, str] = ("", ""),
    ) -> int:
        """Stream ``size`` bytes into a new payload file and return its buf id.

        Parameters
        ----------
        read_into
            ``read_into(view)`` fills ``view`` completely (from the socket) or raises.
        buffer
            Scratch space of at least one chunk, reused across calls by the caller.
        owner
            ``(beamtime, data source)`` of the producer; a file-system payload goes to the
            beamtime's folder.
        """
        with self._lock:
            buf_id = self._new_buf_id()
        failure: Exception | None = None
        out: int | None = None
        tmp: Path | None = None
        try:
            if in_filesystem:
                root = self.data_dir / check_folder_name("beamtime", owner[0])
                path = resolve_name(root, name)
            else:
                path = self.blob_dir / str(buf_id)
            tmp = path.with_name(path.name + f".{buf_id}.part")
            out = self._create(tmp)
        except (PayloadError, OSError) as exc:
            failure, tmp = exc, None
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
                        _write_all(out, view)
                    except OSError as exc:
                        failure = exc
        except BaseException:
            failure = failure or ConnectionError("connection lost")
            raise
        finally:
            if out is not None:
                os.close(out)
            if tmp is not None:
                if failure is None:
                    os.replace(tmp, path)
                else:
                    tmp.unlink(missing_ok=True)
            if failure is not None:
                with self._lock:
                    self._refs.pop(buf_id, None)
        if failure is not None:
            if isinstance(failure, PayloadError):
                raise failure
            raise PayloadError(f"cannot store payload {name!r}: {failure}") from failure
        ref = PayloadRef(str(path), size, in_filesystem, owner)
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

    def _create(self, path: Path) -> int:
        if path.parent not in self._made_dirs:
            self._make_dirs(path.parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, self.file_mode)
        except FileNotFoundError:  # the folder was removed behind our back
            self._made_dirs.discard(path.parent)
            self._make_dirs(path.parent)
            fd = os.open(path, flags, self.file_mode)
        os.fchmod(fd, self.file_mode)  # the umask must not decide who can read the data
        return fd

    def _make_dirs(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        # a link swapped in under us would lead outside the data folder
        if os.path.realpath(folder) != os.path.realpath(self.data_dir) + os.sep + str(
            folder.relative_to(self.data_dir)
        ):
            raise PayloadError(f"folder {folder} goes through a symbolic link")
        self._made_dirs.add(folder)

    def cached(self, buf_id: int, owner: tuple[str, str] | None = None) -> PayloadRef | None:
        """The payload a cache read (op 6) may serve, or None for "not in cache".

        With ``owner``, only a payload sent by that (beamtime, data source).
        """
        with self._lock:
            ref = self._refs.get(buf_id)
            if ref is None or ref.size < 0 or (ref.in_filesystem and buf_id not in self._window):
                return None
            if owner is not None and ref.owner != owner:
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


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]
