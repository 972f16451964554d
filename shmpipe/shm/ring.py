"""SlotRing: preallocated, prefaulted shared memory for payloads, results and the slot table.

The memory is nameless (``memfd_create``): processes forked by the supervisor inherit the
mappings, and nothing ever appears in ``/dev/shm``, so a run killed by SIGKILL, the OOM killer
or ``docker kill`` leaves nothing behind. The pages are reserved with
``posix_fallocate`` at start, so a machine short of shared memory refuses to start with a clear
message instead of dying of SIGBUS on the first frame that touches a missing page.

Slot table
----------
One row of int64 words per slot; every field is written by one aligned 8-byte store, and the
protocol (``shmpipe.engine.protocol``) makes each row's writer unique at any instant, so no locks.
"""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass

import numpy as np
import psutil

from shmpipe.shm.layout import (
    ALIGN,
    ERROR_BYTES,
    EXIT_REASON_BYTES,
    KERNEL_BUCKETS_S,
    LATENCY_BUCKETS_S,
    MAX_KERNELS,
    MAX_STREAMS,
    N_BUCKETS,
    N_COLUMNS,
    P_COLUMNS,
    STREAM_WORDS,
)


def _round_up(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


class ShmCapacityError(RuntimeError):
    """Not enough shared memory for the rings the configuration asks for."""


def available_shared_memory() -> int:
    """Bytes this process can still place in shared memory.

    memfd pages count against RAM (and a cgroup's memory limit), not against the size of
    ``/dev/shm``; the smaller of what the kernel says is available and what the cgroup allows
    is the honest bound.
    """
    avail = psutil.virtual_memory().available
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            usage_path = path.replace("memory.max", "memory.current").replace(
                "limit_in_bytes", "usage_in_bytes"
            )
            try:
                with open(usage_path) as f:
                    used = int(f.read().strip())
            except (OSError, ValueError):
                used = 0
            avail = min(avail, int(limit) - used)
        break
    return max(0, avail)


class SharedRegion:
    """One nameless shared-memory region, reserved and mapped at creation."""

    def __init__(self, nbytes: int, label: str) -> None:
        self.nbytes = _round_up(max(nbytes, 1))
        self.label = label
        self.fd = os.memfd_create(f"shmpipe-{label}", os.MFD_CLOEXEC)
        try:
            # Reserve every page now: ENOSPC/ENOMEM here is a clear error, a missing page later
            # would be SIGBUS in whichever process touched it first.
            os.posix_fallocate(self.fd, 0, self.nbytes)
        except OSError as exc:
            os.close(self.fd)
            raise ShmCapacityError(
                f"cannot reserve {self.nbytes / 2**20:.0f} MiB of shared memory for the {label}: "
                f"{exc.strerror}"
            ) from exc
        self.map = mmap.mmap(self.fd, self.nbytes, mmap.MAP_SHARED)

    def array(self, dtype: np.dtype | str, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        return np.ndarray(shape, dtype=dtype, buffer=self.map, offset=offset)

    def close(self) -> None:
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass  # views still alive in this process; the fd close below still frees on exit
        try:
            os.close(self.fd)
        except OSError:
            pass


@dataclass(frozen=True)
class RingGeometry:
    """Sizes of the rings, fixed for a run."""

    slots: int
    header_bytes: int
    payload_bytes: int
    result_bytes: int
    processes: int

    @property
    def input_stride(self) -> int:
        return _round_up(self.header_bytes + self.payload_bytes)

    @property
    def result_stride(self) -> int:
        return _round_up(self.result_bytes + ERROR_BYTES)

    @property
    def timing_words(self) -> int:
        # kernel histograms [proc, kernel, bucket] + kernel ns sums [proc, kernel]
        # + latency histogram [bucket] + latency ns sum
        return self.processes * MAX_KERNELS * (N_BUCKETS + 1) + N_BUCKETS + 1

    @property
    def stream_words(self) -> int:
        return MAX_STREAMS * STREAM_WORDS

    @property
    def stream_table_offset(self) -> int:
        """Byte offset of the stream table in the tables region (after everything else)."""
        return (
            _round_up((self.slots * N_COLUMNS + self.processes * P_COLUMNS) * 8)
            + _round_up(self.processes * EXIT_REASON_BYTES)
            + _round_up(self.timing_words * 8)
        )

    @property
    def table_bytes(self) -> int:
        return self.stream_table_offset + _round_up(self.stream_words * 8)

    @property
    def total_bytes(self) -> int:
        return self.table_bytes + self.slots * (self.input_stride + self.result_stride)


class Timings:
    """Histograms of kernel run times (per process and kernel) and of dispatch-to-publish
    latency, as int64 counters in shared memory. Each row has one writer (a worker, or the
    publisher for latency), so incrementing needs no lock."""

    def __init__(self, words: np.ndarray, processes: int) -> None:
        k = processes * MAX_KERNELS
        self.kernel_hist = words[: k * N_BUCKETS].reshape(processes, MAX_KERNELS, N_BUCKETS)
        self.kernel_ns = words[k * N_BUCKETS : k * (N_BUCKETS + 1)].reshape(processes, MAX_KERNELS)
        self.latency_hist = words[k * (N_BUCKETS + 1) : k * (N_BUCKETS + 1) + N_BUCKETS]
        self.latency_ns = words[k * (N_BUCKETS + 1) + N_BUCKETS :]
        self._kernel_edges = [int(b * 1e9) for b in KERNEL_BUCKETS_S]
        self._latency_edges = [int(b * 1e9) for b in LATENCY_BUCKETS_S]

    def add_kernel(self, proc: int, kernel: int, ns: int) -> None:
        self.kernel_hist[proc, kernel, bisect.bisect_left(self._kernel_edges, ns)] += 1
        self.kernel_ns[proc, kernel] += ns

    def add_latencies(self, ns: list[int]) -> None:
        """Count dispatch-to-publish latencies (the publisher's, once per commit)."""
        if ns:
            where = np.searchsorted(self._latency_edges, ns, side="left")
            self.latency_hist += np.bincount(where, minlength=N_BUCKETS)
            self.latency_ns[0] += sum(ns)


class SlotRing:
    """The input ring, the result ring and the tables, in shared memory.

    Parameters
    ----------
    geometry : RingGeometry
        Slot count and sizes.
    """

    def __init__(self, geometry: RingGeometry) -> None:
        self.geometry = g = geometry
        need = g.total_bytes
        avail = available_shared_memory()
        if need > avail:
            raise ShmCapacityError(
                f"the rings need {need / 2**20:.0f} MiB of shared memory but only "
                f"{avail / 2**20:.0f} MiB is available ({g.slots} slots of "
                f"{g.input_stride / 2**20:.1f} MiB input + {g.result_stride / 2**20:.1f} MiB "
                "result); lower ring.slots, ring.slot_bytes or the kernels' output sizes"
            )
        self.tables = SharedRegion(g.table_bytes, "tables")
        self.inputs = SharedRegion(g.slots * g.input_stride, "input-ring")
        self.results = SharedRegion(g.slots * g.result_stride, "result-ring")
        self.table = self.tables.array("<i8", (g.slots, N_COLUMNS))
        self.procs = self.tables.array("<i8", (g.processes, P_COLUMNS), g.slots * N_COLUMNS * 8)
        self._reasons_at = _round_up((g.slots * N_COLUMNS + g.processes * P_COLUMNS) * 8)
        timing_at = self._reasons_at + _round_up(g.processes * EXIT_REASON_BYTES)
        self.timings = Timings(self.tables.array("<i8", (g.timing_words,), timing_at), g.processes)
        from shmpipe.shm.streams import StreamTable

        self.streams = StreamTable(
            self.tables.array("<i8", (MAX_STREAMS, STREAM_WORDS), g.stream_table_offset)
        )
        self._prefault()

    def _prefault(self) -> None:
        # fallocate reserved the pages; touching them now maps them into this process's page
        # tables before fork, so children share them without first-touch faults.
        for region in (self.inputs, self.results):
            view = np.frombuffer(region.map, dtype=np.uint8)
            view[::4096] = 0
            del view

    # -- per-slot views -----------------------------------------------------------------
    def header(self, slot: int) -> memoryview:
        off = slot * self.geometry.input_stride
        return memoryview(self.inputs.map)[off : off + self.geometry.header_bytes]

    def headers(self) -> list[memoryview]:
        """Every slot's header area, for a process that reads or writes them per message."""
        return [self.header(slot) for slot in range(self.geometry.slots)]

    def payload(self, slot: int) -> np.ndarray:
        """The payload area of an input slot, as bytes."""
        g = self.geometry
        off = slot * g.input_stride + g.header_bytes
        return self.inputs.array(np.uint8, (g.payload_bytes,), off)

    def part_view(self, slot: int, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        g = self.geometry
        return self.inputs.array(dtype, shape, slot * g.input_stride + g.header_bytes + offset)

    def result(self, slot: int, offset: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        return self.results.array(dtype, shape, slot * self.geometry.result_stride + offset)

    def error_area(self, slot: int) -> memoryview:
        g = self.geometry
        off = slot * g.result_stride + g.result_bytes
        return memoryview(self.results.map)[off : off + ERROR_BYTES]

    # -- exit reasons: the last words of a process that stops the run on purpose ---------
    def set_exit_reason(self, proc: int, text: str) -> None:
        """Leave ``text`` in process row ``proc`` for the supervisor (cut to fit)."""
        raw = text.encode(errors="replace")[: EXIT_REASON_BYTES - 4]
        off = self._reasons_at + proc * EXIT_REASON_BYTES
        self.tables.map[off + 4 : off + 4 + len(raw)] = raw
        self.tables.map[off : off + 4] = len(raw).to_bytes(4, "little")

    def exit_reason(self, proc: int) -> str:
        """What process row ``proc`` left when it stopped the run; empty if nothing."""
        off = self._reasons_at + proc * EXIT_REASON_BYTES
        n = int.from_bytes(self.tables.map[off : off + 4], "little")
        return self.tables.map[off + 4 : off + 4 + n].decode(errors="replace")

    def close(self) -> None:
        self.table = self.procs = self.streams = None  # type: ignore[assignment]
        for region in (self.tables, self.inputs, self.results):
            region.close()
