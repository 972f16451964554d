"""Side processes: observers that only read the shared memory (metrics, live view, Tango).

A side process is declared once, as a ``shmpipe.api.sideprocess.SideProcess``: its name,
whether the configuration enables it, what the supervisor prepares for it before forking (a
bound listening socket, so a port in use is a start-up error), and the function it runs. The
supervisor starts every enabled one after the ring exists and before any worker, restarts one
that dies (after 1, 2, 4 ... 30 s; each restart is logged and counted in
``RunSummary.side_restarts``), and stops them after the pipeline. A side process can never
stop the pipeline: its death or a failed restart is logged and the run goes on.

Declaring one: add ``"package.module:NAME"`` to ``DECLARED`` below, or an entry point of the
group ``shmpipe.side_processes`` naming a ``SideProcess``; the supervisor is not touched.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from shmpipe.api.registry import load_dotted
from shmpipe.api.sideprocess import SideProcess
from shmpipe.child.plumbing import Plumbing
from shmpipe.config import PipelineConfig

log = logging.getLogger("shmpipe.supervisor")

ENTRY_POINT_GROUP = "shmpipe.side_processes"
DECLARED = (
    "shmpipe.observe.metrics:SIDE_PROCESS",
    "shmpipe.view.process:SIDE_PROCESS",
    "shmpipe.tango.server:SIDE_PROCESS",
)
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def declared() -> list[SideProcess]:
    """Every declared side process: ``DECLARED``, then the entry points."""
    found = [load_dotted(path) for path in DECLARED]
    found += [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return [s for s in found if isinstance(s, SideProcess)]


def _close(resource: Any) -> None:
    close = getattr(resource, "close", None)
    if close is not None:
        close()


@dataclass
class _Running:
    spec: SideProcess
    proc: Any = None  # mp.Process while running
    restarts: int = 0
    restart_at: float = 0.0  # monotonic time of the next try, while not running
    failures: int = field(default=0)  # consecutive deaths or failed starts, for the backoff


class SideProcesses:
    """The side processes of one run, as the supervisor sees them."""

    def __init__(self, config: PipelineConfig, ctx: mp.context.BaseContext) -> None:
        self.config = config
        self.ctx = ctx
        self.running = [_Running(s) for s in declared() if s.enabled(config)]
        self.resources: dict[str, Any] = {}

    def prepare(self) -> None:
        """Prepare every side process before anything is forked; errors propagate (start-up)."""
        for r in self.running:
            if r.spec.prepare is not None:
                self.resources[r.spec.name] = r.spec.prepare(self.config)

    def start_all(self, p: Plumbing) -> None:
        for r in self.running:
            self._fork(r, p, self.resources.pop(r.spec.name, None))

    def _fork(self, r: _Running, p: Plumbing, resource: Any) -> None:
        try:
            r.proc = self.ctx.Process(
                target=r.spec.target,
                args=(p, resource, os.getpid()),
                name=f"shmpipe-{r.spec.name}",
                daemon=False,
            )
            r.proc.start()
            try:
                # A group of its own: a signal to the run's group (Ctrl-C on a terminal,
                # `timeout`) must not kill an observer while the pipeline drains.
                os.setpgid(r.proc.pid, r.proc.pid)
            except OSError:  # it already did so itself, or died
                pass
        finally:
            _close(resource)  # the child holds it now; processes forked later must not

    def sentinels(self) -> dict[int, _Running]:
        return {r.proc.sentinel: r for r in self.running if r.proc is not None}

    def pid(self, name: str) -> int:
        for r in self.running:
            if r.spec.name == name and r.proc is not None:
                return int(r.proc.pid)
        return 0

    def on_exit(self, r: _Running) -> None:
        """A side process ended: log it and schedule its restart, after a growing pause."""
        code = r.proc.exitcode
        r.proc.join()
        r.proc = None
        delay = BACKOFF_S[min(r.failures, len(BACKOFF_S) - 1)]
        r.failures += 1
        r.restart_at = time.monotonic() + delay
        log.warning(
            "the %s process ended (exit code %s); restarting it in %.0f s", r.spec.name, code, delay
        )

    def tick(self, p: Plumbing) -> None:
        """Restart the side processes whose pause is over."""
        now = time.monotonic()
        for r in self.running:
            if r.proc is not None or r.restart_at == 0.0 or now < r.restart_at:
                continue
            try:
                resource = r.spec.prepare(self.config) if r.spec.prepare is not None else None
                self._fork(r, p, resource)
            except Exception as exc:  # noqa: BLE001 - an observer never stops the pipeline
                delay = BACKOFF_S[min(r.failures, len(BACKOFF_S) - 1)]
                r.failures += 1
                r.restart_at = now + delay
                log.warning("restarting the %s process failed: %s", r.spec.name, exc)
                continue
            r.restarts += 1
            r.restart_at = 0.0
            log.info("the %s process restarted (pid %d)", r.spec.name, r.proc.pid)

    def restarts(self) -> dict[str, int]:
        return {r.spec.name: r.restarts for r in self.running}

    def stop_all(self) -> None:
        """SIGTERM, two seconds, then SIGKILL; also closes what was prepared but not used."""
        for resource in self.resources.values():
            _close(resource)
        self.resources.clear()
        for r in self.running:
            proc, r.proc = r.proc, None
            if proc is None or proc.pid is None:
                continue
            if proc.exitcode is None:
                try:
                    os.kill(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                proc.join(timeout=2.0)
                if proc.exitcode is None:
                    try:
                        os.kill(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            proc.join()
