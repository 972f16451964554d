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
  ┌────────────┐  ASSIGN(slot,ticket) ┌──────────────┐ READY(slot,ticket) ┌────────────┐
  │ dispatcher │─────────────────────►│ worker seat i│──────────────────►│ publisher  │─► sinks
  └────────────┘  one inbox per seat  └──────────────┘  one shared pipe   └────────────┘  commit
        ▲   END(total) ─────────────────────────────────────────────────────►  │     then ack
        └─────────────────────────── FREED(slot) ──────────────────────────────┘  to the source

  supervisor (this module): first forks a short-lived preflight child (source and sink
  checks, kernel setup filling the Numba cache), then allocates the memory and forks every
  process (plus the side processes, such as metrics when [metrics] port is set, which only
  read the tables: ``engine/sideprocs.py``), and waits on their sentinels. Every exit of
  the data path goes to ``engine/recovery.py``, which says what it means, moves on the
  rows the dead process held (a worker's slots are re-assigned, attempt+1 for a claimed
  one, quarantined as an error record after run.max_attempts), counts the restart, and
  says where a replacement starts; the supervisor forks it into the same process row.
  The watchdog (``engine/watchdog.py``, on by default) kills a worker stuck on a frame and
  names a stall. Ctrl-C/SIGTERM: STOP
  to the dispatcher, the rest drains; a second one kills.

Slot lifecycle: FREE → FILLING → FILLED → ASSIGNED → CLAIMED → DONE → PUBLISHING → FREE, each
transition a function of ``shmpipe.engine.protocol``. Each transition has exactly one writer
(dispatcher, owning worker, publisher; the supervisor only for slots of a seat whose process
it has seen die), so the table needs no lock and a process killed at any instant cannot leave
one held.

Records travel in batches where that saves wake-ups without delaying anyone: the dispatcher
hands small messages over a few dozen at a time (each held at most 0.5 ms, the source's wait
included), workers report a batch's READY records in one write (when the batch ends, or once
0.5 ms old), the publisher frees a commit's slots in one write. A large frame travels alone.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import wait

from shmpipe.child.plumbing import Plumbing
from shmpipe.child.roles import getproctitle, set_process_title, setproctitle
from shmpipe.config import ConfigError, PipelineConfig
from shmpipe.engine.chain import KernelSetupError
from shmpipe.engine.dispatcher import dispatcher_main
from shmpipe.engine.exit_codes import (
    EXIT_CONFIG_ERROR,
    EXIT_FAILED,
    EXIT_FRAME_ERRORS,
    EXIT_INTERRUPTED,
    EXIT_OK,
)
from shmpipe.engine.publisher import publisher_main
from shmpipe.engine.recovery import Decision, Recovery, RunFailed, Verdict
from shmpipe.engine.run_state import RunState
from shmpipe.engine.scheduler import Scheduler
from shmpipe.engine.sideprocs import SideProcesses
from shmpipe.engine.startup import StartupError, prepare
from shmpipe.engine.summary import RunSummary
from shmpipe.engine.watchdog import Watchdog
from shmpipe.engine.worker import worker_main
from shmpipe.observe.progress import ProgressReporter
from shmpipe.observe.run_report import SteadyRate, written_outputs
from shmpipe.observe.runs import RunNameInUse, RunRecord, sweep_stale
from shmpipe.observe.snapshot import RunTotals
from shmpipe.shm.channel import STOP
from shmpipe.shm.layout import (
    P_EXIT,
    P_FRAMES,
    P_PID,
    P_READY_NS,
    P_STARTED_NS,
    P_STATE,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
    PS_EXITED,
)

log = logging.getLogger("shmpipe.supervisor")

# A second SIGINT this long after the first is a person pressing Ctrl-C again; signals closer
# together are one interrupt delivered twice (`timeout` signals the child, then its group).
HUMAN_REPEAT_S = 0.5


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
        self._signals: list[tuple[int, float]] = []
        self._handlers: dict[int, object] = {}
        """The signal handlers ours replaced, put back once the run has cleaned up."""
        self._draining_since = 0.0
        self.summary = RunSummary(self.name)
        self.p: Plumbing | None = None
        self.scheduler: Scheduler | None = None
        self.recovery: Recovery | None = None
        self.state = RunState.STARTING
        self.side: SideProcesses | None = None
        self.watchdog: Watchdog | None = None
        self.dispatcher: mp.Process | None = None
        self.publisher: mp.Process | None = None
        self.workers: list[mp.Process | None] = [None] * config.run.workers
        self._dispatcher_done = False
        """The dispatcher stopped on purpose (source drained or STOP): not watched any more."""
        self._ready_logged: set[tuple[int, int]] = set()
        self._record: RunRecord | None = None
        self._side_pids: dict[str, int] = {}

    def _set_state(self, state: RunState, why: str) -> None:
        """Change the run state (the one place it changes), log it and name it in the registry.
        A refusal at start-up is logged at debug level: the caller reports it in one line."""
        if state == self.state:
            return
        quiet = self.state == RunState.STARTING and state == RunState.FAILED
        text = f"run {self.name}: {self.state.label} -> {state.label} ({why})"
        log.log(logging.DEBUG if quiet else logging.INFO, "%s", text)
        self.state = state
        if self._record is not None and self.p is not None:
            self._record.describe({**self._describe(), **self._side_pids})

    # -- processes -------------------------------------------------------------------------
    def _start(self, target, args, name: str) -> mp.Process:
        proc = self.ctx.Process(target=target, args=args, name=name, daemon=False)
        proc.start()
        return proc

    def _start_child(self, proc: int, replacing: Decision | None = None) -> None:
        """Fork the process of row ``proc``: its first start, or a replacement after
        ``replacing`` (the recovery's decision: where a new dispatcher resumes)."""
        p = self.p
        # Else a replacement looks ready before it is (a negative start-up time).
        p.ring.procs[proc, [P_STATE, P_EXIT, P_READY_NS]] = 0
        if proc == PROC_DISPATCHER:
            args = (p,) if replacing is None else (p, replacing.resume_at)
            self.dispatcher = self._start(dispatcher_main, args, "shmpipe-dispatcher")
        elif proc == PROC_PUBLISHER:
            args = (p,) if replacing is None else (p, True)
            self.publisher = self._start(publisher_main, args, "shmpipe-publisher")
        else:
            seat = proc - PROC_FIRST_WORKER
            self.workers[seat] = self._start(worker_main, (p, seat), f"shmpipe-worker{seat}")

    def _on_exit(self, proc: int | str, child) -> None:
        """Every process exit the supervisor sees: ``"side"`` or a process row. What a death
        means and what the dead process held is the recovery's (``engine/recovery.py``);
        raises ``_Finished`` when the publisher ends the run, ``RunFailed`` when an exit
        cannot be recovered from."""
        if proc == "side":
            # An observer, not part of the data path: restarted, the run goes on.
            self.side.on_exit(child)
            return
        child.join()
        decision = self.recovery.after_exit(proc, child.pid, child.exitcode)
        if decision.verdict is Verdict.REPLACE:
            self._start_child(proc, decision)
        elif proc == PROC_PUBLISHER:
            raise _Finished
        elif proc == PROC_DISPATCHER:
            self._dispatcher_done = True
            self._set_state(RunState.DRAINING, "no more messages")

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
        self._signals.append((signum, time.monotonic()))

    def _stop_at_once(self) -> bool:
        """Whether a person asked twice: a SIGINT well after the first interrupt.

        SIGTERM always drains (a scheduler or ``timeout`` may send it more than once, and
        drain_timeout_s bounds the drain); only Ctrl-C given again stops at once.
        """
        first = self._signals[0][1]
        return any(
            sig == signal.SIGINT and t - first >= HUMAN_REPEAT_S for sig, t in self._signals[1:]
        )

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
        self.side = SideProcesses(self.config, self.ctx)
        title = getproctitle()
        set_process_title("supervisor", self.name)
        try:
            try:
                self.side.prepare()
            except OSError as exc:  # a port in use (metrics, view): refused before any fork,
                raise StartupError(str(exc)) from None  # and before the kernels' set-up
            self.p = prepare(self.ctx, self.config)
            self.scheduler = Scheduler(self.p.ring)
            self.recovery = Recovery(self.p, self.scheduler, self.config, self.summary)
            self._record = record
            record.describe(self._describe())
            return self._supervise(t_start)
        finally:
            if self.state not in (RunState.FINISHED, RunState.FAILED):
                self._set_state(RunState.FAILED, "start-up or supervision raised")
            self.side.stop_all()
            if self.p is not None:
                for pipe in [*self.p.seats, self.p.done, self.p.dispatcher_inbox]:
                    pipe.close()
                self.p.ring.close()
                if self.p.live is not None:
                    self.p.live.close()
                if self.p.tap is not None:
                    self.p.tap.close()
            record.release()
            setproctitle(title)
            # Only now: a Ctrl-C during the clean-up above is recorded, not raised in the
            # middle of it (it left shared memory behind, and an interrupted join hung at exit)
            for s, h in self._handlers.items():
                signal.signal(s, h)
            self._handlers = {}

    def _describe(self) -> dict:
        ring = self.p.ring
        return {
            "name": self.name,
            "pid": os.getpid(),
            "started": time.time(),
            "tables_fd": ring.tables.fd,
            "preview_fd": self.p.tap.fd if self.p.tap is not None else None,
            "slots": ring.geometry.slots,
            "processes": ring.geometry.processes,
            "workers": self.config.run.workers,
            "chain": [k.name for k in self.config.kernels],
            "config": self.config.path,
            "state": self.state.label,
            "metrics": (
                f"http://{self.config.metrics.host}:{self.config.metrics.port}/metrics"
                if self.config.metrics.port > 0
                else ""
            ),
        }

    def _supervise(self, t_start: float) -> RunSummary:
        p, ring, cfg = self.p, self.p.ring, self.config
        self._handlers = {
            s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)
        }
        self.watchdog = Watchdog(cfg.run, ring)
        progress = ProgressReporter(ring, cfg, self.name)
        steady = SteadyRate()
        exit_code, error = EXIT_OK, ""
        try:
            self._start_side_processes()
            self._start_child(PROC_PUBLISHER)
            for seat in range(cfg.run.workers):
                self._start_child(PROC_FIRST_WORKER + seat)
            self._start_child(PROC_DISPATCHER)
            handled_signals = 0
            self._set_state(RunState.RUNNING, "every process started")
            while True:
                procs = {self.publisher.sentinel: (PROC_PUBLISHER, self.publisher)}
                if not self._dispatcher_done:
                    procs[self.dispatcher.sentinel] = (PROC_DISPATCHER, self.dispatcher)
                for seat, w in enumerate(self.workers):
                    procs[w.sentinel] = (PROC_FIRST_WORKER + seat, w)
                side = self.side.sentinels()
                procs.update({s: ("side", r) for s, r in side.items()})
                ready = wait(list(procs), timeout=0.25)
                if len(self._signals) > handled_signals:
                    if not handled_signals:
                        log.warning(
                            "stopping (%s): no new messages; finishing the frames in flight "
                            "(Ctrl-C again to stop at once)",
                            signal.Signals(self._signals[0][0]).name,
                        )
                        p.dispatcher_inbox.send(STOP)
                        self._draining_since = time.monotonic()
                        self._set_state(RunState.DRAINING, signal.Signals(self._signals[0][0]).name)
                    handled_signals = len(self._signals)
                    if self._stop_at_once():
                        raise _Interrupted
                if (
                    self._draining_since
                    and time.monotonic() - self._draining_since > cfg.run.drain_timeout_s
                ):
                    raise RunFailed(
                        f"frames in flight did not finish within "
                        f"run.drain_timeout_s = {cfg.run.drain_timeout_s} s"
                    )
                for sentinel in ready:
                    self._on_exit(*procs[sentinel])
                self.watchdog.tick(self.workers)
                self.side.tick(p)
                self._describe_side_pids()
                self._report_ready_workers()
                progress.tick()
                steady.sample(int(ring.procs[PROC_PUBLISHER, P_FRAMES]))
        except _Finished:
            pass
        except _Interrupted:
            exit_code = 128 + self._signals[0][0]
            error = "stopped at once by a second Ctrl-C: frames in flight were dropped"
            log.error("%s", error)
        except RunFailed as exc:
            exit_code, error = exc.exit_code, str(exc)
            log.error("the run failed: %s", error)
        finally:
            stopped_by = self._signals[:1]  # a signal once the run is stopping stops nothing
            self._set_state(RunState.STOPPING, "supervision ended")
            self._stop_all(graceful=exit_code == EXIT_OK)
            progress.close()
        summary = self.summary
        if exit_code == EXIT_OK and stopped_by:
            exit_code = 128 + stopped_by[0][0]  # 130 SIGINT, 143 SIGTERM: stopped early
        summary.wall_s = time.perf_counter() - t_start
        snap = RunTotals.read(ring.procs, ring.table)
        summary.frames_in, summary.bytes_in = snap.frames_in, snap.bytes_in
        summary.frames_out, summary.errors = snap.frames_out, snap.errors
        summary.slots = ring.geometry.slots
        if exit_code == EXIT_OK and summary.errors:
            exit_code = EXIT_FRAME_ERRORS
        summary.exit_code, summary.error = exit_code, error
        self._set_state(RunState.FAILED if error else RunState.FINISHED, f"exit code {exit_code}")
        steady.sample(summary.frames_out)
        summary.steady_frames_per_s = steady.rate()
        try:
            published = {c.stream: c.frames_out for c in ring.streams.read()}
            summary.outputs = written_outputs(cfg, self.p.run_info, published)
        except Exception as exc:  # noqa: BLE001 - the summary must not fail the run
            log.debug("cannot list the outputs written: %s", exc)
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
        children = [self.dispatcher, self.publisher, *self.workers]
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
        self.side.stop_all()
        self.summary.side_restarts = self.side.restarts()

    # -- side processes --------------------------------------------------------------------
    def _start_side_processes(self) -> None:
        """Fork the observers (before any worker, so none holds their sockets)."""
        self.side.start_all(self.p)
        pid = self.side.pid("metrics")
        if pid:
            m = self.config.metrics
            log.info("metrics: http://%s:%d/metrics (pid %d)", m.host, m.port, pid)
        pid = self.side.pid("view")
        if pid:
            v = self.config.view
            log.info("view: http://%s:%d/ (pid %d)", v.host, v.port, pid)
        self._describe_side_pids()

    def _describe_side_pids(self) -> None:
        """Name each side process's pid in the run registry (again after a restart)."""
        pids = {f"{r.spec.name}_pid": self.side.pid(r.spec.name) for r in self.side.running}
        if pids != self._side_pids:
            self._side_pids = pids
            self._record.describe({**self._describe(), **pids})


class _Finished(Exception):
    pass


class _Interrupted(Exception):
    pass


def run_pipeline(config: PipelineConfig) -> RunSummary:
    """Run a configured pipeline to its end; see ``Pipeline``."""
    return Pipeline(config).run()


__all__ = [
    "EXIT_CONFIG_ERROR",
    "EXIT_FAILED",
    "EXIT_FRAME_ERRORS",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "KernelSetupError",
    "Pipeline",
    "RunSummary",
    "StartupError",
    "run_pipeline",
]
