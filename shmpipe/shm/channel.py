"""RecordPipe: a pipe of fixed-size records that a killed process cannot wedge.

Every control message in the engine is four int64 words ``(kind, slot, ticket, arg)``. They
travel through plain OS pipes written in whole records of at most ``PIPE_BUF`` bytes, which
POSIX makes atomic: several writers may share one pipe and none holds a lock in user space, so
a writer or reader SIGKILLed at any instant cannot leave the channel locked or half-written
(unlike ``multiprocessing.Queue``, whose reader lock dies with its holder).
"""

from __future__ import annotations

import os
import select
import struct

import numpy as np

RECORD = struct.Struct("<4q")
RECORD_SIZE = RECORD.size
PIPE_BUF = select.PIPE_BUF
MAX_BATCH = PIPE_BUF // RECORD_SIZE
_RECORD_DTYPE = np.dtype("<i8")

# Record kinds. One table for every channel so a misrouted record is recognisable in a log;
# named apart from the slot states (``shm.layout.SlotState``) they announce.
ASSIGN = 1  # dispatcher/supervisor -> worker seat: (ASSIGN, slot, ticket, 0)
STOP = 2  # -> any process: finish what you have, then exit
READY = 3  # worker/supervisor/dispatcher -> publisher: (READY, slot, ticket, 0), a row DONE
END = 4  # dispatcher -> publisher: (END, 0, 0, total messages dispatched)
FREED = 5  # publisher -> dispatcher: (FREED, slot, 0, 0), a row released to FREE


class RecordPipe:
    """One OS pipe carrying records of four int64 words.

    Both ends stay open in the process that created it so that processes forked later (a
    replacement worker) inherit them; each process uses only the end its role needs.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_inheritable(self.read_fd, True)
        os.set_inheritable(self.write_fd, True)
        self._poll: select.poll | None = None
        self._residue = b""

    def send(self, kind: int, slot: int = 0, ticket: int = 0, arg: int = 0) -> None:
        """Write one record (atomic, never interleaved with another writer's)."""
        os.write(self.write_fd, RECORD.pack(kind, slot, ticket, arg))

    def send_many(self, records: list[tuple[int, int, int, int]]) -> None:
        """Write records in atomic batches of at most PIPE_BUF bytes."""
        for i in range(0, len(records), MAX_BATCH):
            chunk = records[i : i + MAX_BATCH]
            os.write(self.write_fd, b"".join(RECORD.pack(*r) for r in chunk))

    def recv(self, timeout: float | None) -> np.ndarray:
        """Return the records available within ``timeout`` seconds, shape (n, 4); n may be 0.

        ``timeout=None`` blocks until at least one record arrives.
        """
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.read_fd, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        if not self._poll.poll(ms):
            return np.empty((0, 4), dtype=_RECORD_DTYPE)
        data = self._residue + os.read(self.read_fd, PIPE_BUF * 4)
        whole = len(data) - len(data) % RECORD_SIZE
        # Writes are whole records of <= PIPE_BUF, so a residue only appears if a reader asked
        # for less than was written; keep it rather than trust that.
        self._residue = data[whole:]
        return np.frombuffer(data[:whole], dtype=_RECORD_DTYPE).reshape(-1, 4)

    def fileno(self) -> int:
        return self.read_fd

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
