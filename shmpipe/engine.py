"""The engine: a supervisor that owns the shared memory and runs the processes around it.

Data flow (every arrow of the control path is a ``RecordPipe`` of 32-byte records; frames never
travel through a pipe, only slot numbers do)::

                    ┌──────────────────────── shared memory (memfd, nameless) ───────────────┐
                    │ slot table   state owner ticket attempt seq msg-id ... (1 row a slot)  │
                    │ process table pid state frames busy-ns current-msg ... (1 row a proc)  │
                    │ input ring   [header|payload] x slots    (written once by dispatcher)  │
                    │ result ring  [outputs|error]  x slots    (written by the workers)      │
                    │ timings, streams  kernel/latency histograms, per-stream counters       │
                    └────────────────────────────────────────────────────────────────────────┘
     source                 ▲ copy once          ▲ views, in place       ▲ read, in place
       │  Message           │                    │                       │
       ▼                    │                    │                       │
  ┌────────────┐  ASSIGN(slot,ticket) ┌──────────────┐  DONE(slot,ticket) ┌────────────┐
  │ dispatcher │─────────────────────►│ worker seat i│──────────────────►│ publisher  │─► sinks
  └────────────┘  one inbox per seat  └──────────────┘  one shared pipe   └────────────┘  commit
        ▲   END(total) ─────────────────────────────────────────────────────►  │     then ack
        └──────────────────────────── FREE(slot) ──────────────────────────────┘  to the source

  supervisor (this module): first forks a short-lived preflight child (source and sink
  checks, kernel setup filling the Numba cache), then allocates the memory and forks every
  process (plus a metrics process when [metrics] port is set, which only reads the tables),
  and waits on their sentinels; when a worker dies it finds the seat's slots in the slot
  table and re-assigns them (attempt+1 for a claimed one; quarantined as an error record
  after run.max_attempts), then forks a replacement into the same seat. Ctrl-C/SIGTERM: STOP
  to the dispatcher, the rest drains; a second one kills.

Slot lifecycle: FREE → FILLING → FILLED → ASSIGNED → CLAIMED → DONE → PUBLISHING → FREE. Each
transition has exactly one writer at a time (dispatcher, owning worker, publisher; the
supervisor only for slots of a seat whose process it has seen die), so the table needs no lock
and a process killed at any instant cannot leave one held.

Records travel in batches where that saves wake-ups without delaying anyone: the dispatcher
hands small messages over a few dozen at a time (each held at most 0.5 ms, the source's wait
included), workers report a batch's DONE records in one write (when the batch ends, or once
0.5 ms old), the publisher frees a commit's slots in one write. A large frame travels alone.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from shmpipe import provenance
from shmpipe.chain import ChainLayout, KernelChain, KernelSetupError
from shmpipe.channel import DONE, STOP, RecordPipe
from shmpipe.config import ConfigError, PipelineConfig
from shmpipe.dispatcher import dispatcher_main
from shmpipe.logs import frame_extra
from shmpipe.metrics import MetricsPortError, metrics_main, open_metrics_socket
from shmpipe.plumbing import EXIT_CONFIG, EXIT_FATAL, Plumbing, now_ns, write_error
from shmpipe.progress import ProgressReporter
from shmpipe.publisher import publisher_main
from shmpipe.ring import (
    ASSIGNED,
    ATTEMPT,
    CLAIMED,
    ERROR_LEN,
    FLAGS,
    MSG_ID,
    OWNER,
    OWNER_PID,
    P_EXIT,
    P_KERNEL,
    P_PID,
    P_READY_NS,
    P_RESTARTS,
    P_STARTED_NS,
    P_STATE,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
    PS_DEAD,
    PS_EXITED,
    QUARANTINED,
    STATE,
    T_CLAIM,
    TICKET,
    RingGeometry,
    ShmCapacityError,
    SlotRing,
)
from shmpipe.ring import DONE as S_DONE
from shmpipe.ring import ERROR as F_ERROR
from shmpipe.runs import RunNameInUse, RunRecord, sweep_stale
from shmpipe.sink import RunInfo
from shmpipe.source import SourceConfigError, SourceLayout
from shmpipe.worker import worker_main

AUTO_RING_SLOTS = 256  # ring.slots = 0: at most this many slots ...
AUTO_RING_BYTES = 64 * 2**20  # ... and beyond 2 x workers + 2 only while they fit in this

log = logging.getLogger("shmpipe.supervisor")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class StartupError(RuntimeError):
    """The run cannot start; reported with exit code 2 before any worker runs."""


@dataclass
class RunSummary:
    """What a run did, as printed at its end and returned to callers."""

    name: str
    exit_code: int = EXIT_OK
    frames_in: int = 0
    frames_out: int = 0
    errors: int = 0
    bytes_in: int = 0
    wall_s: float = 0.0
    worker_restarts: int = 0
    quarantined: int = 0
    error: str = ""
    slots: int = 0
    """Slots in the ring."""
    results: list[str] = field(default_factory=list)
    """Where the results went: files, output streams."""
    worker_startup_s: list[float] = field(default_factory=list)
    timings: dict[str, np.ndarray] = field(default_factory=dict)
    """Copies of the ring's ``Timings`` arrays (``kernel_hist``, ``kernel_ns``, ``latency_hist``,
    ``latency_ns``) and of the process table (``procs``), taken before the ring closes."""

    @property
    def frames_per_s(self) -> float:
        return self.frames_out / self.wall_s if self.wall_s > 0 else 0.0

    def describe(self) -> str:
        mbps = self.bytes_in / self.wall_s / 1e6 if self.wall_s > 0 else 0.0
        return (
            f"run {self.name}: {self.frames_in} frames in, {self.frames_out} out, "
            f"{self.errors} errors, {self.wall_s:.2f} s, {self.frames_per_s:.1f} frames/s, "
            f"{mbps:.1f} MB/s, {self.worker_restarts} worker restarts"
        ) + "".join(f"\n  results: {r}" for r in self.results)


def _preflight_main(conn, config: PipelineConfig, cache_dir: Path, run_info: RunInfo) -> None:
    """Check the source and sinks, probe the parts' layout, set up every kernel once.

    Runs in a short-lived child so that whatever these load (the ASAPO client's threads, a
    parallel Numba runtime) never lives in the supervisor, which must stay safe to fork.
    Sends back the source parameters (a generated consumer group, say), the source layout
    and the result-slot layout; setting the kernels up fills the Numba cache for the workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        source = config.source_instance()
        try:
            source.check()
            src_layout = source.layout()
        except (SourceConfigError, ValueError, OSError) as exc:
            conn.send(("error", f"source: {exc}"))
            return
        for sink in config.sink_instances():
            try:
                sink.check()
                sink.check_rerun(run_info)
            except (ValueError, OSError) as exc:
                conn.send(("error", str(exc)))
                return
        chain = KernelChain(config.kernel_instances())
        try:
            layout = chain.setup(src_layout.parts, cache_dir, config.run.kernel_threads, -1)
        except KernelSetupError as exc:
            conn.send(("error", f"kernel setup failed: {exc}"))
            return
        uses_numba = "numba" in sys.modules
        conn.send(("ok", pickle.dumps((source.params, src_layout, layout, uses_numba))))
    except Exception as exc:  # noqa: BLE001 - sent back and reported as a start-up error
        conn.send(("error", f"{exc}"))
    finally:
        conn.close()


def _prepare_numba_for_forks(threads: int) -> None:
    """Initialise Numba's CPU target once here, so forked workers inherit it.

    Every process otherwise pays ~0.5 s initialising it before its first cached kernel loads.
    Initialising the target starts no thread and no OpenMP runtime, so the supervisor stays
    safe to fork (measured: worker start-up 0.65-1.0 s -> 0.21-0.31 s, docs/performance.md).
    """
    # Read when Numba is first imported: the workers' thread budget, not one per core.
    os.environ.setdefault("NUMBA_NUM_THREADS", str(max(1, threads)))
    try:
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()
    except Exception as exc:  # noqa: BLE001 - an optimisation: workers initialise it themselves
        log.debug("Numba's CPU target not initialised before forking: %s", exc)


class Pipeline:
    """One run: start-up checks, the processes, supervision, and the summary.

    Parameters
    ----------
    config : PipelineConfig
        A validated configuration (``shmpipe.config.load_config``).
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        if not config.run.name:
            config.run.name = f"run-{os.getpid()}"
        self.name = config.run.name
        self.ctx = mp.get_context("fork")
        self._signals = 0
        self._draining_since = 0.0
        self.summary = RunSummary(self.name)

    # -- start-up --------------------------------------------------------------------------
    def _cache_dir(self) -> Path:
        d = Path(self.config.run.cache_dir or Path.home() / ".cache" / "shmpipe").expanduser()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _preflight(self, cache_dir: Path) -> tuple[Any, SourceLayout, ChainLayout]:
        t0 = time.perf_counter()
        ours, theirs = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_preflight_main,
            args=(theirs, self.config, cache_dir, self.run_info),
            name="preflight",
        )
        proc.start()
        theirs.close()
        limit = self.config.run.setup_timeout_s
        try:
            if limit > 0 and not ours.poll(limit):
                proc.kill()
                status, payload = (
                    "error",
                    f"the start-up checks and kernel set-up did not finish within "
                    f"run.setup_timeout_s = {limit} s (a kernel's setup hung? a process that "
                    "has used OpenMP, bitshuffle say, cannot fork safely: run shmpipe as a "
                    "command rather than inside such a process)",
                )
            else:
                status, payload = ours.recv()
        except EOFError:
            status, payload = "error", f"the start-up checks died (exit code {proc.exitcode})"
        proc.join()
        ours.close()
        if status != "ok":
            raise StartupError(payload)
        source_params, src_layout, layout, uses_numba = pickle.loads(payload)
        if uses_numba:
            _prepare_numba_for_forks(self.config.run.kernel_threads)
        log.info(
            "kernels set up and compiled in %.2f s (%s)",
            time.perf_counter() - t0,
            ", ".join(
                f"{k.name} {t:.2f} s"
                for k, t in zip(self.config.kernels, layout.setup_seconds, strict=True)
            ),
        )
        return source_params, src_layout, layout

    def _geometry(self, layout: SourceLayout, chain: ChainLayout) -> RingGeometry:
        r = self.config.ring
        payload = r.slot_bytes or layout.max_payload_bytes
        if payload <= 0:
            raise ConfigError(
                "the source declares no payload size; set ring.slot_bytes",
                "ring.slot_bytes",
                self.config.path,
            )
        geometry = RingGeometry(
            slots=r.slots or 2 * self.config.run.workers + 2,
            header_bytes=r.header_bytes,
            payload_bytes=payload,
            result_bytes=chain.result_bytes,
            processes=PROC_FIRST_WORKER + self.config.run.workers,
        )
        if not r.slots:
            # Small slots: more of them, so that small messages travel in batches (one pipe
            # write per batch, not per message) with slots to spare; large frames keep the
            # 2 x workers + 2 that prefetching one frame per worker needs.
            per_slot = geometry.input_stride + geometry.result_stride
            more = min(AUTO_RING_SLOTS, AUTO_RING_BYTES // per_slot)
            if more > geometry.slots:
                geometry = dataclasses.replace(geometry, slots=more)
        return geometry

    def _prepare(self) -> Plumbing:
        cfg = self.config
        cache_dir = self._cache_dir()
        self.run_info = run_info_for(cfg)
        source_params, src_layout, layout = self._preflight(cache_dir)
        cfg.source.params = source_params
        source = cfg.source_instance()
        geometry = self._geometry(src_layout, layout)
        try:
            ring = SlotRing(geometry)
        except ShmCapacityError as exc:
            raise StartupError(str(exc)) from exc
        log.info(
            "ring: %d slots x %.1f MiB input + %.1f MiB result (%.0f MiB shared memory)",
            geometry.slots,
            geometry.input_stride / 2**20,
            geometry.result_stride / 2**20,
            geometry.total_bytes / 2**20,
        )
        run_info = dataclasses.replace(self.run_info, outputs=layout.specs())
        return Plumbing(
            config=cfg,
            ring=ring,
            layout=layout,
            parts=src_layout.parts,
            seats=[RecordPipe() for _ in range(cfg.run.workers)],
            done=RecordPipe(),
            dispatcher_inbox=RecordPipe(),
            source=source,
            cache_dir=cache_dir,
            run_info=run_info,
        )

    # -- processes -------------------------------------------------------------------------
    def _start(self, target, args, name: str) -> mp.Process:
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=False)
        proc.start()
        return proc

    def _start_worker(self, seat: int) -> None:
        row = self.p.ring.procs[PROC_FIRST_WORKER + seat]
        row[P_STATE] = 0
        row[P_EXIT] = 0
        row[P_READY_NS] = 0  # else a replacement looks ready before it is (negative start-up)
        self.workers[seat] = self._start(worker_main, (self.p, seat), f"shmpipe-worker{seat}")

    # -- recovery --------------------------------------------------------------------------
    def _recover_seat(self, seat: int, cause: str) -> None:
        """Give the slots of a dead worker back: re-assign, or quarantine a poison frame."""
        p, ring = self.p, self.p.ring
        table = ring.table
        kernel_index = int(ring.procs[PROC_FIRST_WORKER + seat, P_KERNEL])
        kernel = self.config.kernels[kernel_index - 1].name if kernel_index > 0 else "?"
        for slot in range(ring.geometry.slots):
            row = table[slot]
            if row[OWNER] != seat:
                continue
            state = row[STATE]
            if state == ASSIGNED:
                target = ring.least_loaded_seat(p.workers, exclude=seat)
                ring.assign(slot, target, p.seats[target])
            elif state == CLAIMED:
                row[ATTEMPT] += 1
                if row[ATTEMPT] >= self.config.run.max_attempts:
                    self._quarantine(slot, kernel, cause)
                else:
                    log.warning(
                        "re-dispatching message %d (attempt %d) after %s",
                        int(row[MSG_ID]),
                        int(row[ATTEMPT]) + 1,
                        cause,
                        extra=frame_extra(ring, slot),
                    )
                    target = ring.least_loaded_seat(p.workers, exclude=seat)
                    ring.assign(slot, target, p.seats[target])
            elif state == S_DONE:
                # It may have died between marking DONE and telling the publisher; a second
                # DONE with the same ticket is ignored by the publisher if the first arrived.
                p.done.send(DONE, slot, int(row[TICKET]))

    def _quarantine(self, slot: int, kernel: str, cause: str) -> None:
        ring = self.p.ring
        row = ring.table[slot]
        attempts = int(row[ATTEMPT])
        row[ERROR_LEN] = write_error(
            ring,
            slot,
            {
                "kernel": kernel,
                "error": f"quarantined: the frame killed {attempts} workers in kernel {kernel!r}; "
                f"last: {cause}",
                "traceback": "",
            },
        )
        row[FLAGS] = int(row[FLAGS]) | F_ERROR | QUARANTINED
        row[TICKET] += 1
        row[STATE] = S_DONE
        self.summary.quarantined += 1
        log.error(
            "message %d quarantined after %d attempts (%s)",
            int(row[MSG_ID]),
            attempts,
            cause,
            extra=frame_extra(ring, slot),
        )
        self.p.done.send(DONE, slot, int(row[TICKET]))

    def _on_worker_exit(self, seat: int, proc: mp.Process) -> None:
        ring = self.p.ring
        code = proc.exitcode
        procs = ring.procs[PROC_FIRST_WORKER + seat]
        procs[P_EXIT] = code if code is not None else -999
        if code == EXIT_FATAL:
            raise _RunFailed(ring.note(PROC_FIRST_WORKER + seat) or f"worker {seat} failed")
        cause = (
            f"signal {-code} ({signal.Signals(-code).name})"
            if code and code < 0
            else f"exit code {code}"
        )
        procs[P_STATE] = PS_DEAD
        log.warning("worker %d (pid %d) died: %s", seat, proc.pid, cause)
        self._recover_seat(seat, f"worker {seat} (pid {proc.pid}) died: {cause}")
        self.summary.worker_restarts += 1
        procs[P_RESTARTS] += 1
        if self.summary.worker_restarts > self.config.run.max_restarts:
            raise _RunFailed(
                f"workers died {self.summary.worker_restarts} times "
                f"(run.max_restarts = {self.config.run.max_restarts}); last: {cause}"
            )
        self._start_worker(seat)

    def _watchdog(self) -> None:
        limit = self.config.run.watchdog_s
        if limit <= 0:
            return
        self._watch_stopped(limit)
        table = self.p.ring.table
        deadline = now_ns() - int(limit * 1e9)
        stuck = (table[:, STATE] == CLAIMED) & (table[:, T_CLAIM] < deadline)
        for slot in stuck.nonzero()[0]:
            pid = int(table[slot, OWNER_PID])
            seat = int(table[slot, OWNER])
            if pid > 0 and self.workers[seat] is not None and self.workers[seat].pid == pid:
                log.warning(
                    "worker %d (pid %d) spent more than %.1f s on message %d: killing it",
                    seat,
                    pid,
                    limit,
                    int(table[slot, MSG_ID]),
                    extra=frame_extra(self.p.ring, int(slot)),
                )
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _watch_stopped(self, limit: float) -> None:
        """Kill a worker that has been stopped (SIGSTOP, a debugger, a cgroup freezer) for
        longer than ``limit``: frames already in its inbox would wait for it for ever."""
        now = time.monotonic()
        for seat, w in enumerate(self.workers):
            if w is None or w.pid is None:
                continue
            try:
                with open(f"/proc/{w.pid}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"T", b"t"):
                self._stopped_since.pop(w.pid, None)
                continue
            since = self._stopped_since.setdefault(w.pid, now)
            if now - since > limit:
                log.warning(
                    "worker %d (pid %d) has been stopped for more than %.1f s: killing it",
                    seat,
                    w.pid,
                    limit,
                )
                self._stopped_since.pop(w.pid, None)
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _report_ready_workers(self) -> None:
        """Log each worker's start-up time (fork to first frame possible) once."""
        procs = self.p.ring.procs
        for seat, w in enumerate(self.workers):
            row = procs[PROC_FIRST_WORKER + seat]
            key = (seat, w.pid)
            if row[P_READY_NS] and key not in self._ready_logged and row[P_PID] == w.pid:
                self._ready_logged.add(key)
                took = (int(row[P_READY_NS]) - int(row[P_STARTED_NS])) / 1e9
                self.summary.worker_startup_s.append(took)
                log.info("worker %d (pid %d) ready in %.3f s", seat, w.pid, took)

    # -- signals ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._signals += 1

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Start everything, supervise until the source is drained or a stop, return a summary.

        Raises
        ------
        StartupError, ConfigError
            Before any worker starts, for problems of configuration or resources.
        """
        for line in sweep_stale():
            log.warning("%s", line)
        try:
            record = RunRecord(self.name)
        except RunNameInUse as exc:
            raise ConfigError(str(exc), "run.name", self.config.path) from None
        t_start = time.perf_counter()
        self.p = None
        self._metrics_sock = None
        try:
            self.p = self._prepare()
            try:
                self._metrics_sock = open_metrics_socket(self.config.metrics)
            except MetricsPortError as exc:
                raise StartupError(str(exc)) from None
            self._record = record
            record.describe(self._describe())
            return self._supervise(t_start)
        finally:
            if self._metrics_sock is not None:
                self._metrics_sock.close()
            if self.p is not None:
                for pipe in [*self.p.seats, self.p.done, self.p.dispatcher_inbox]:
                    pipe.close()
                self.p.ring.close()
            record.release()

    def _describe(self) -> dict:
        ring = self.p.ring
        return {
            "name": self.name,
            "pid": os.getpid(),
            "started": time.time(),
            "tables_fd": ring.tables.fd,
            "slots": ring.geometry.slots,
            "processes": ring.geometry.processes,
            "workers": self.config.run.workers,
            "chain": [k.name for k in self.config.kernels],
            "config": self.config.path,
            "metrics": (
                f"http://{self.config.metrics.host}:{self.config.metrics.port}/metrics"
                if self.config.metrics.port > 0
                else ""
            ),
        }

    def _supervise(self, t_start: float) -> RunSummary:
        p, ring, cfg = self.p, self.p.ring, self.config
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.workers: list[mp.Process | None] = [None] * cfg.run.workers
        self._ready_logged: set[tuple[int, int]] = set()
        self._stopped_since: dict[int, float] = {}
        progress = ProgressReporter(ring, cfg, self.name)
        exit_code, error = EXIT_OK, ""
        self.metrics: mp.Process | None = None
        try:
            self._start_metrics()
            self.publisher = self._start(publisher_main, (p,), "shmpipe-publisher")
            for seat in range(cfg.run.workers):
                self._start_worker(seat)
            self.dispatcher = self._start(dispatcher_main, (p,), "shmpipe-dispatcher")
            handled_signals = 0
            dispatcher_done = False
            while True:
                procs = {self.publisher.sentinel: ("publisher", self.publisher)}
                if not dispatcher_done:
                    procs[self.dispatcher.sentinel] = ("dispatcher", self.dispatcher)
                for seat, w in enumerate(self.workers):
                    procs[w.sentinel] = (seat, w)
                if self.metrics is not None:
                    procs[self.metrics.sentinel] = ("metrics", self.metrics)
                ready = wait(list(procs), timeout=0.25)
                if self._signals > handled_signals:
                    handled_signals = self._signals
                    if handled_signals == 1:
                        log.warning(
                            "stopping: no new messages; finishing the frames in flight "
                            "(Ctrl-C again to stop at once)"
                        )
                        p.dispatcher_inbox.send(STOP)
                        self._draining_since = time.monotonic()
                    else:
                        raise _Interrupted
                if (
                    self._draining_since
                    and time.monotonic() - self._draining_since > cfg.run.drain_timeout_s
                ):
                    raise _RunFailed(
                        f"frames in flight did not finish within "
                        f"run.drain_timeout_s = {cfg.run.drain_timeout_s} s"
                    )
                for sentinel in ready:
                    role, proc = procs[sentinel]
                    proc.join()
                    if role == "metrics":
                        # Metrics are an aid, not part of the data path: the run goes on.
                        log.warning(
                            "the metrics process died (%s); no metrics for the rest of the run",
                            _cause(proc.exitcode),
                        )
                        self.metrics = None
                    elif role == "dispatcher":
                        dispatcher_done = True
                        ring.procs[PROC_DISPATCHER, P_STATE] = PS_EXITED
                        if proc.exitcode == EXIT_CONFIG:
                            raise _RunFailed(ring.note(PROC_DISPATCHER), EXIT_CONFIG_ERROR)
                        if proc.exitcode != 0:
                            note = ring.note(PROC_DISPATCHER)
                            raise _RunFailed(
                                note or f"the dispatcher died ({_cause(proc.exitcode)})"
                            )
                    elif role == "publisher":
                        ring.procs[PROC_PUBLISHER, P_STATE] = PS_EXITED
                        if proc.exitcode != 0:
                            note = ring.note(PROC_PUBLISHER)
                            raise _RunFailed(
                                note or f"the publisher died ({_cause(proc.exitcode)})"
                            )
                        raise _Finished
                    else:
                        self._on_worker_exit(role, proc)
                self._watchdog()
                self._report_ready_workers()
                progress.tick()
        except _Finished:
            pass
        except _Interrupted:
            exit_code, error = EXIT_INTERRUPTED, "stopped at once by a second interrupt"
            log.error("%s", error)
        except _RunFailed as exc:
            exit_code, error = exc.exit_code, str(exc)
            log.error("the run failed: %s", error)
        finally:
            self._stop_all(graceful=exit_code == EXIT_OK)
            for s, h in old.items():
                signal.signal(s, h)
            progress.close()
        summary = self.summary
        summary.exit_code, summary.error = exit_code, error
        summary.wall_s = time.perf_counter() - t_start
        summary.frames_in = int(ring.procs[PROC_DISPATCHER, 2])
        summary.bytes_in = int(ring.procs[PROC_DISPATCHER, 3])
        summary.frames_out = int(ring.procs[PROC_PUBLISHER, 2])
        summary.errors = int(ring.procs[PROC_PUBLISHER, 8])
        summary.slots = ring.geometry.slots
        summary.results = [r for s in cfg.sink_instances() for r in s.destination(self.name)]
        t = ring.timings
        summary.timings = {
            "kernel_hist": t.kernel_hist.copy(),
            "kernel_ns": t.kernel_ns.copy(),
            "latency_hist": t.latency_hist.copy(),
            "latency_ns": t.latency_ns.copy(),
            "procs": ring.procs.copy(),
        }
        return summary

    def _stop_all(self, graceful: bool) -> None:
        p = self.p
        children = [
            getattr(self, "dispatcher", None),
            getattr(self, "publisher", None),
            *getattr(self, "workers", []),
        ]
        children = [c for c in children if c is not None and c.pid is not None]
        if graceful:
            for seat, pipe in enumerate(p.seats):
                if self.workers[seat] is not None:
                    pipe.send(STOP)
            deadline = time.monotonic() + 5.0
            for c in children:
                c.join(timeout=max(0.0, deadline - time.monotonic()))
        for c in children:
            if c.exitcode is None:
                try:
                    os.kill(c.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for c in children:
            c.join()
        for seat in range(len(p.seats)):
            p.ring.procs[PROC_FIRST_WORKER + seat, P_STATE] = PS_EXITED
        self._stop_metrics()

    # -- metrics ---------------------------------------------------------------------------
    def _start_metrics(self) -> None:
        """Fork the metrics process (before any worker) and give it the bound socket."""
        sock = self._metrics_sock
        if sock is None:
            return
        self.metrics = self._start(metrics_main, (self.p, sock, os.getpid()), "shmpipe-metrics")
        # Processes forked from now on must not hold the listening socket.
        sock.close()
        self._metrics_sock = None
        m = self.config.metrics
        log.info("metrics: http://%s:%d/metrics (pid %d)", m.host, m.port, self.metrics.pid)
        self._record.describe({**self._describe(), "metrics_pid": self.metrics.pid})

    def _stop_metrics(self) -> None:
        proc = getattr(self, "metrics", None)
        if proc is None or proc.pid is None:
            return
        if proc.exitcode is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            proc.join(timeout=2.0)
            if proc.exitcode is None:
                os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        self.metrics = None


def run_info_for(config: PipelineConfig) -> RunInfo:
    """What the sinks record about this run, before the kernels' outputs are known."""
    effective = config.effective()
    shaping = provenance.result_shaping(effective)
    return RunInfo(
        run_name=config.run.name,
        config=effective,
        config_hash=config.digest(),
        chain=[k.name for k in config.kernels],
        result_config=shaping,
        result_hash=provenance.result_hash(shaping),
        run_uid=provenance.run_uid(),
        started=time.time(),
        host=provenance.host(),
        version=provenance.version(),
        commit=provenance.git_commit(),
    )


def _cause(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exit code {code}"


class _Finished(Exception):
    pass


class _Interrupted(Exception):
    pass


class _RunFailed(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_pipeline(config: PipelineConfig) -> RunSummary:
    """Run a configured pipeline to its end; see ``Pipeline``."""
    return Pipeline(config).run()


__all__ = ["KernelSetupError", "Pipeline", "RunSummary", "StartupError", "run_pipeline"]
