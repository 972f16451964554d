"""Child: one ``shmpipe run`` of the service — started, adopted after a service restart,
watched, stopped — and what it says about itself (live counts, the end-of-run summary).

A child runs in its own session, so that a Ctrl-C meant for the service does not reach it
twice; the service forwards SIGTERM itself (the child drains). A child outlives a killed
service: the restarted service adopts it by pid (checked against its start time, so a reused
pid is never mistaken for it) and learns its exit code from the exit file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil

KILLED = -9
"""Exit code recorded for an adopted child that ended without writing its exit file (as
``subprocess`` says of a child killed by SIGKILL: minus the signal)."""

_SUMMARY = re.compile(r"^run (\S+): (\d+) frames in, (\d+) out, (\d+) errors", re.M)
_WRITTEN = re.compile(r"^(?:written: |         )(\S.*)$", re.M)


def _started(pid: int) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return 0.0


class Child:
    """A running ``shmpipe run`` of run ``run_id``.

    Parameters
    ----------
    run_id
        The run's id in the state store.
    pid, pid_started
        The process and its start time (``psutil.Process.create_time``).
    files
        The run's folder: ``log`` (its output) and ``exit`` (its exit code, once ended).
    popen
        Our own child; None for one adopted after a restart of the service.
    """

    def __init__(
        self,
        run_id: int,
        pid: int,
        pid_started: float,
        files: Path,
        popen: subprocess.Popen | None = None,
    ) -> None:
        self.run_id, self.pid, self.pid_started = run_id, pid, pid_started
        self.files, self.popen = files, popen
        self.terminated = False
        self.log_offset = 0
        """Where this child's output starts in the run's log (0: unknown, adopted)."""

    @property
    def log_path(self) -> Path:
        return self.files / "log"

    @property
    def exit_path(self) -> Path:
        return self.files / "exit"

    @classmethod
    def start(cls, run_id: int, args: list[str], cwd: str, files: Path) -> Child:
        """Start ``shmpipe ARGS`` (``run ...``) for run ``run_id``, output appended to its log."""
        files.mkdir(parents=True, exist_ok=True)
        exit_path = files / "exit"
        exit_path.unlink(missing_ok=True)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        with open(files / "log", "ab") as log:
            offset = log.tell()
            popen = subprocess.Popen(
                [sys.executable, "-m", "shmpipe.serve.child", str(exit_path), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        child = cls(run_id, popen.pid, _started(popen.pid), files, popen)
        child.log_offset = offset
        return child

    @classmethod
    def adopt(cls, run_id: int, pid: int, pid_started: float, files: Path) -> Child | None:
        """The child a previous service started, if it still runs (None: it is gone)."""
        if pid <= 0 or abs(_started(pid) - pid_started) > 0.5:
            return None
        return cls(run_id, pid, pid_started, files)

    def poll(self) -> int | None:
        """The exit code once the child has ended; None while it runs."""
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                return None
            return self._recorded(code)
        try:
            proc = psutil.Process(self.pid) if self.pid > 0 else None
            same = proc is not None and abs(proc.create_time() - self.pid_started) < 0.5
            if same and proc.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            pass
        return self._recorded(KILLED)

    def _recorded(self, default: int) -> int:
        try:
            return int(json.loads(self.exit_path.read_text())["exit_code"])
        except (OSError, ValueError, KeyError, TypeError):
            return default  # -N: killed by signal N before it could write the file

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child (and nothing else: its pid is checked first)."""
        if self.poll() is not None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        """Drain and stop, as SIGTERM does to ``shmpipe run``."""
        self.terminated = True
        self.signal(signal.SIGTERM)


@dataclass
class ChildSummary:
    """What the end of a child's log says."""

    frames_in: int = 0
    frames_out: int = 0
    errors: int = 0
    outputs: list[str] = field(default_factory=list)
    last_line: str = ""
    summary: str = ""
    """The summary line itself (``run NAME: 6 frames in, 6 out, 0 errors, ...``)."""


def read_summary(log_path: Path, offset: int = 0) -> ChildSummary:
    """The summary the last child printed in ``log_path`` after byte ``offset``."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ChildSummary()
    out = ChildSummary()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out.last_line = lines[-1][:500] if lines else ""
    found = list(_SUMMARY.finditer(text))
    if not found:
        return out
    m = found[-1]
    out.summary = text[m.start() :].split("\n", 1)[0][:500]
    out.frames_in, out.frames_out, out.errors = (int(m.group(i)) for i in (2, 3, 4))
    tail = text[m.end() :].split("\n", 1)[1] if "\n" in text[m.end() :] else ""
    for line in tail.splitlines():
        w = _WRITTEN.match(line)
        if not w:
            break
        out.outputs.append(w.group(1).strip())
    return out


def live_counts(name: str) -> tuple[int, int, int] | None:
    """(frames in, frames out, errors) of the running pipeline ``name``, read from its
    shared tables; None while it has none (starting, or ended)."""
    from shmpipe.observe.runs import live_runs
    from shmpipe.observe.snapshot import RunTotals
    from shmpipe.observe.status import attach_tables

    info = next((r for r in live_runs() if r.get("name") == name), None)
    if info is None or "tables_fd" not in info:
        return None
    try:
        table, ptable, m = attach_tables(info)
    except (OSError, KeyError, ValueError):
        return None
    try:
        snap = RunTotals.read(ptable, table)
        return snap.frames_in, snap.frames_out, snap.errors
    finally:
        del table, ptable
        m.close()
