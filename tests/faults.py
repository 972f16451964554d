"""Fault scenarios of the reliability tests (``tests/test_reliability.py``).

Each scenario runs a real pipeline (in this process, with the supervisor in the main thread),
injects its faults, reads the sink back and returns :class:`Figures`: faults injected, frames
lost, duplicates, hangs and the longest recovery. Tests assert on the figures (and on the
details a scenario returns). When ``$SHMPIPE_FAULT_FIGURES`` names a file, every scenario also
appends its figures there as one JSON line: ``scripts/reliability_report.py`` runs the tests
with it set and prints the lines as a table.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec

import psutil

from shmpipe.config import load_config
from shmpipe.engine.supervisor import Pipeline, RunSummary
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.shm.layout import (
    P_FRAMES,
    P_PID,
    P_READY_NS,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
)
from tests.conftest import wait_for

SMALL = {"kind": "sim", "module_shape": [48, 64], "modules": 12, "pool": 3}


@dataclass
class Figures:
    """What one scenario did, as reported in the table."""

    scenario: str
    faults: int = 0
    lost: int = 0
    duplicates: int = 0
    hangs: int = 0
    recovery_s: list[float] = field(default_factory=list)
    exit_code: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def longest_recovery_s(self) -> float:
        return max(self.recovery_s, default=0.0)

    def to_json(self) -> dict[str, Any]:
        """The figures the report prints (JSON-serialisable: the scalar details only)."""
        scalars = {k: v for k, v in self.details.items() if isinstance(v, (int, float, str))}
        return {
            "scenario": self.scenario,
            "faults": self.faults,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "hangs": self.hangs,
            "longest_recovery_s": self.longest_recovery_s if self.recovery_s else None,
            "exit_code": self.exit_code,
            "details": scalars,
        }


FIGURES_ENV = "SHMPIPE_FAULT_FIGURES"
P = ParamSpec("P")


def reported(scenario: Callable[P, Figures]) -> Callable[P, Figures]:
    """Append the scenario's figures to the file named by ``$SHMPIPE_FAULT_FIGURES``, if set."""

    @functools.wraps(scenario)
    def run(*args: P.args, **kwargs: P.kwargs) -> Figures:
        figures = scenario(*args, **kwargs)
        if path := os.environ.get(FIGURES_ENV):
            with open(path, "a") as out:
                out.write(json.dumps(figures.to_json()) + "\n")
        return figures

    return run


def config(tmp: Path, kernels: dict, *, frames: int, workers: int = 2, **run) -> dict:
    """A small simulated run into one HDF5 file per stream."""
    return {
        "run": {"workers": workers, "progress": "off", "on_error": "skip", **run},
        "source": {**SMALL, "frames": frames},
        "kernels": kernels,
        "sinks": [{"kind": "hdf5", "output": str(tmp / "out_{stream}.h5")}],
    }


class HangGuard:
    """Stops a run that outlives ``deadline_s``: two SIGINTs to this process, which the
    supervisor answers with an immediate stop (exit 130), counted as a hang."""

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.fired = False
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self._stop.wait(self.deadline_s):
            return
        self.fired = True
        sent = 0
        while sent < 2 and not self._stop.is_set():
            # Only while the supervisor's handler is installed: elsewhere SIGINT would stop
            # the caller (pytest) instead of the run.
            handler = signal.getsignal(signal.SIGINT)
            if getattr(handler, "__name__", "") == "_on_signal":
                os.kill(os.getpid(), signal.SIGINT)
                sent += 1
            self._stop.wait(0.5)

    def __enter__(self) -> HangGuard:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def run_guarded(pipeline: Pipeline, deadline_s: float) -> tuple[RunSummary, bool]:
    """Run to the end; whether the hang guard had to stop it."""
    with HangGuard(deadline_s) as guard:
        summary = pipeline.run()
    return summary, guard.fired


def run_with_fault(
    pipeline: Pipeline, fault: Callable[[ProcTable, threading.Event], object], deadline_s: float
) -> tuple[RunSummary, bool]:
    """The one fault-injection scaffold: run ``pipeline`` to its end under the hang guard
    while ``fault(table, stop)`` works in a thread of its own, watching the run through
    ``table``; ``stop`` is set when the run ends, and the fault must return soon after.
    Returns the summary and whether the guard had to stop the run."""
    stop = threading.Event()
    table = ProcTable(pipeline)
    t = threading.Thread(target=fault, args=(table, stop), daemon=True)
    t.start()
    try:
        return run_guarded(pipeline, deadline_s)
    finally:
        stop.set()
        t.join()
        table.close()


def count(ids: list[int], expected: set[int]) -> tuple[int, int]:
    """Frames lost (expected, never seen) and duplicates (seen more than once)."""
    c = Counter(ids)
    return len(expected - set(c)), sum(n - 1 for n in c.values() if n > 1)


class ProcTable:
    """A run's process table through a mapping of its own, as ``shmpipe status`` reads it.

    The pipeline unmaps its rings when the run ends; numpy views on them do not keep the
    memory mapped, so a watching thread that read them then would crash. This mapping stays
    valid until :meth:`close`, whatever the run does.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.procs = None
        self._m = None

    def get(self):
        """The process table, or ``None`` before the run has its rings."""
        if self.procs is None:
            from shmpipe.observe.status import attach_tables

            ring = getattr(getattr(self.pipeline, "p", None), "ring", None)
            if ring is None or ring.procs is None:
                return None
            try:
                _, self.procs, self._m = attach_tables(self.pipeline._describe())
            except (OSError, AttributeError, TypeError):
                return None
        return self.procs

    def frames(self, row: int = PROC_PUBLISHER) -> int:
        """Frames the publisher (or ``row``'s process) has handled; -1 before the start."""
        procs = self.get()
        return -1 if procs is None else int(procs[row, P_FRAMES])

    def worker_pid(self, seat: int) -> tuple[int, bool]:
        """The pid in a worker seat and whether it is ready for frames."""
        procs = self.get()
        if procs is None:
            return 0, False
        row = procs[PROC_FIRST_WORKER + seat]
        return int(row[P_PID]), bool(row[P_READY_NS])

    def close(self) -> None:
        self.procs = None
        if self._m is not None:
            self._m.close()
            self._m = None


def is_child(pipeline: Pipeline, pid: int) -> bool:
    """Whether ``pid`` is one of the run's live worker processes (never signal another)."""
    return pid > 0 and any(w is not None and w.pid == pid for w in getattr(pipeline, "workers", []))


def read_or_empty(path: Path, stream: str) -> dict[str, Any]:
    """The stream's committed rows, or none when a stopped run left no readable file."""
    import numpy as np

    try:
        return read_stream(str(path), stream)
    except (OSError, KeyError):
        empty = np.zeros(0, np.int64)
        return {
            "message_id": empty,
            "published": np.zeros(0),
            "attempt": empty,
            "errors": {"message_id": empty, "quarantined": np.zeros(0, bool)},
        }


def _published_at(data: dict, mid: int) -> float:
    rows = (data["message_id"] == mid).nonzero()[0]
    return float(data["published"][rows[0]]) if len(rows) else float("nan")


# -- worker faults --------------------------------------------------------------------------
@reported
def random_sigkill(
    tmp: Path,
    frames: int = 300,
    every: int = 25,
    seed: int = 1,
    deadline_s: float = 300,
    rate: float = 400.0,
) -> Figures:
    """SIGKILL a random worker every ``every`` published frames (±50 %) over ``frames``.

    At 400 frames/s the dispatcher hands frames over one by one; at a few thousand per
    second it hands them over in batches and the workers report them in batches, so kills
    land on slots assigned but not yet read, and on results held back in a batch.
    """
    # Deaths are the test here, not a sign of a sick node: allow every one of them.
    raw = config(tmp, {"checksum": {}}, frames=frames, max_restarts=frames)
    raw["source"]["rate"] = rate  # paced, so kills land while frames are in flight
    cfg = load_config(raw=raw)
    pipeline = Pipeline(cfg)
    rng = random.Random(seed)
    kills: list[int] = []
    recoveries: list[float] = []

    def killer(table: ProcTable, stop: threading.Event) -> None:
        next_at = rng.randint(every // 2 + 1, every * 3 // 2 + 1)
        while not stop.is_set():
            if table.frames() < next_at:
                stop.wait(0.002)
                continue
            seat = rng.randrange(cfg.run.workers)
            pid, ready = table.worker_pid(seat)
            if not ready or not is_child(pipeline, pid):
                stop.wait(0.002)
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            t0 = time.monotonic()
            kills.append(pid)
            next_at += rng.randint(every // 2 + 1, every * 3 // 2 + 1)
            # Recovery: until the seat's replacement has started and is ready for frames.
            while not stop.is_set():
                new_pid, ready = table.worker_pid(seat)
                if new_pid not in (pid, 0) and ready:
                    recoveries.append(time.monotonic() - t0)
                    break
                stop.wait(0.001)

    summary, hung = run_with_fault(pipeline, killer, deadline_s)
    data = read_stream(str(tmp / "out_scan_0001.h5"), "scan_0001")
    lost, dups = count(data["message_id"].tolist(), set(range(1, frames + 1)))
    return Figures(
        f"worker SIGKILL every ~{every} frames ({frames} frames)",
        faults=len(kills),
        lost=lost,
        duplicates=dups,
        hangs=int(hung),
        recovery_s=recoveries,
        exit_code=summary.exit_code,
        details={"summary": summary, "data": data, "kills": kills},
    )


@reported
def crash_kernel(
    tmp: Path,
    mode: str,
    ids: list[int],
    *,
    once: bool,
    frames: int = 30,
    max_attempts: int = 2,
    watchdog_s: float = 0.0,
    watchdog: bool = True,
    deadline_s: float = 300,
) -> Figures:
    """A kernel that kills (or hangs, or stops) its worker on ``ids``; once, or every time."""
    marks = tmp / "marks"
    marks.mkdir(exist_ok=True)
    if mode == "raise":
        crash = {"kind": "tests.plugins:FailOn", "ids": ids}
    else:
        crash = {
            "kind": "tests.plugins:Crash",
            "ids": ids,
            "mode": mode,
            "once_dir": str(marks) if once else "",
        }
    raw = config(
        tmp,
        {"checksum": {}, "crash": crash},
        frames=frames,
        max_attempts=max_attempts,
        watchdog_s=watchdog_s,
        watchdog=watchdog,
    )
    pipeline = Pipeline(load_config(raw=raw))
    summary, hung = run_guarded(pipeline, deadline_s)
    data = read_or_empty(tmp / "out_scan_0001.h5", "scan_0001")
    errors = data["errors"]
    seen = data["message_id"].tolist() + errors["message_id"].tolist()
    lost, dups = count(seen, set(range(1, frames + 1)))
    recoveries = []
    if once and mode != "raise":
        for mid in ids:
            mark = marks / f"scan_0001-{mid}"
            if mark.exists():
                recoveries.append(_published_at(data, mid) - mark.stat().st_mtime)
    faults = summary.worker_restarts if mode != "raise" else len(errors["message_id"])
    what = {
        "raise": "kernel raises",
        "abort": "kernel calls os.abort()",
        "segfault": "kernel segfaults",
        "sigkill": "kernel SIGKILLs its worker",
        "hang": "kernel loops",
        "sigstop": "worker SIGSTOPped",
    }[mode]
    how = "once, then retried" if once else f"every attempt, quarantined after {max_attempts}"
    if mode in ("hang", "sigstop") and watchdog_s:
        what += " (watchdog)"
    elif mode in ("hang", "sigstop"):
        what, how = f"{what}, no watchdog", "the suite's guard stops the run"
    return Figures(
        f"{what}: {how}",
        faults=faults,
        lost=lost,
        duplicates=dups,
        hangs=int(hung),
        recovery_s=recoveries,
        exit_code=summary.exit_code,
        details={"summary": summary, "data": data},
    )


# -- dispatcher and publisher ---------------------------------------------------------------
def process_death(
    tmp: Path,
    role: str,
    source: str = "sim",
    service=None,
    kills: int = 3,
    frames: int = 120,
    ordered: bool = True,
) -> Figures:
    """SIGKILL the dispatcher or the publisher ``kills`` times mid-run, with the sim, files
    or ASAPO (``service``) source: each is replaced, the run completes with every message
    once (``role_replaced``)."""
    if source == "asapo":
        p = produce(service.server_name, frames)
        p.communicate(timeout=120)
        raw = asapo_config(service.server_name, tmp, f"replace-{role}", f"replace-{role}")
        raw["sinks"][0]["output"] = str(tmp / "out_{stream}.h5")
        raw["kernels"]["slow"] = {"kind": "tests.plugins:Sleepy", "ms": 10.0}
        raw["ring"] = {"slots": 8}
        f = role_replaced(tmp, role, raw, {"scan_0001": frames}, kills=kills, every=frames // 5)
        f.details["output_ids"] = output_ids(service.server_name, f"replace-{role}")
        return f
    if source == "files":
        import numpy as np

        streams = {}
        for k, name in enumerate(("run_a", "run_b")):
            # Each frame its own content, so a result written for the wrong frame shows.
            ramp = np.arange(frames // 2, dtype=np.float32)[:, None, None] + 1000 * k
            np.save(tmp / f"{name}.npy", np.broadcast_to(ramp, (frames // 2, 8, 8)))
            streams[name] = frames // 2
        raw = config(tmp, {"checksum": {}, "slow": {"kind": "tests.plugins:Sleepy", "ms": 4.0}},
                     frames=0)  # fmt: skip
        raw["source"] = {"kind": "files", "paths": [str(tmp / "run_*.npy")], "layout": "frames"}
    else:
        raw = config(tmp, {"checksum": {}}, frames=frames // 2)
        raw["source"].update(rate=frames * 2.0, streams=2)
        streams = {"scan_0001": frames // 2, "scan_0002": frames // 2}
    # A small ring: the dispatcher stays busy until the end instead of reading everything
    # into slots at once.
    raw["ring"] = {"slots": 8}
    raw["run"]["ordered"] = ordered
    return role_replaced(tmp, role, raw, streams, kills=kills, every=frames // (kills + 2))


# -- long run -------------------------------------------------------------------------------
def _tree(pipeline: Pipeline) -> list[psutil.Process]:
    procs = [psutil.Process()]
    for c in [
        getattr(pipeline, "dispatcher", None),
        getattr(pipeline, "publisher", None),
        *getattr(pipeline, "workers", []),
    ]:
        if c is not None and c.pid:
            try:
                procs.append(psutil.Process(c.pid))
            except psutil.NoSuchProcess:
                pass
    return procs


def _sample(pipeline: Pipeline) -> dict[str, tuple[int, int]]:
    out = {}
    for proc in _tree(pipeline):
        try:
            # The fewest descriptors over a few reads: a leak stays open, a descriptor a
            # process holds for a moment (a pipe being read, a file being written) does not.
            fds = min(proc.num_fds() for _ in range(5))
            out[f"{proc.name()}:{proc.pid}"] = (proc.memory_info().rss, fds)
        except psutil.NoSuchProcess:
            pass
    return out


@reported
def long_run(
    tmp: Path, frames: int = 8000, error_every: int = 1000, deadline_s: float = 600
) -> Figures:
    """Many small frames: resident memory and open files of every process, before and after.

    Samples are taken at 25 % (after warm-up) and at 95 % of the frames, while everything
    runs; ``details["growth"]`` is the largest relative RSS growth of any process.
    """
    bad = list(range(error_every, frames + 1, error_every))
    raw = config(
        tmp,
        {"checksum": {}, "bad": {"kind": "tests.plugins:FailOn", "ids": bad}},
        frames=frames,
    )
    raw["source"] = {"kind": "sim", "payload_bytes": 256, "frames": frames, "pool": 4}
    pipeline = Pipeline(load_config(raw=raw))
    samples: list[dict[str, tuple[int, int]]] = []

    def sampler(table: ProcTable, stop: threading.Event) -> None:
        for fraction in (0.25, 0.95):
            while not stop.is_set():
                if table.frames() >= fraction * frames:
                    samples.append(_sample(pipeline))
                    break
                stop.wait(0.005)

    summary, hung = run_with_fault(pipeline, sampler, deadline_s)
    data = read_stream(str(tmp / "out_scan_0001.h5"), "scan_0001")
    seen = data["message_id"].tolist() + data["errors"]["message_id"].tolist()
    lost, dups = count(seen, set(range(1, frames + 1)))
    growth, fd_growth = 0.0, 0
    if len(samples) == 2:
        a, b = samples
        for key in a.keys() & b.keys():
            growth = max(growth, (b[key][0] - a[key][0]) / a[key][0])
            fd_growth = max(fd_growth, b[key][1] - a[key][1])
    return Figures(
        f"long run: {frames} small frames, an error every {error_every}",
        faults=len(bad),
        lost=lost,
        duplicates=dups,
        hangs=int(hung),
        exit_code=summary.exit_code,
        details={
            "summary": summary,
            "data": data,
            "samples": samples,
            "growth": growth,
            "fd_growth": fd_growth,
            "errors": len(data["errors"]["message_id"]),
            "expected_errors": len(bad),
        },
    )


# -- ASAPO ----------------------------------------------------------------------------------
ASAPO_SHAPE = [32, 48]
BEAMTIME = "bt_faults"


def asapo_config(endpoint: str, tmp: Path, group: str, name: str, **source) -> dict:
    """The ASAPO source into an HDF5 file per run and an ASAPO output stream of checksums."""
    return {
        "run": {"workers": 2, "progress": "off", "on_error": "skip", "name": name},
        "source": {
            "kind": "asapo",
            "endpoint": endpoint,
            "beamtime": BEAMTIME,
            "stream": "scan_0001",
            "group_id": group,
            "part_shape": ASAPO_SHAPE,
            "timeout_ms": 300,
            "until": "finished",
            "resend_delay_ms": 800,
            "retry_max_s": 2.0,
            **source,
        },
        "kernels": {"checksum": {}},
        "sinks": [
            {"kind": "hdf5", "output": str(tmp / "out_{stream}_{run}.h5")},
            {
                "kind": "asapo",
                "endpoint": endpoint,
                "beamtime": BEAMTIME,
                "data_source": f"checksums_{group}",
                "outputs": ["checksum.digest"],
            },
        ],
    }


def produce(endpoint: str, frames: int, rate: float = 0.0):
    """The demo producer (the real ``asapo_producer``) in its own process."""
    from tests.producer import produce as run_producer

    return run_producer(endpoint, BEAMTIME, frames, ["scan_0001"], ASAPO_SHAPE, rate=rate)


def output_ids(endpoint: str, group: str) -> list[int]:
    """Ids of every record in the output stream, read back with the real consumer."""
    import asapo_consumer

    c = asapo_consumer.create_consumer(
        endpoint, "", False, BEAMTIME, f"checksums_{group}", "", 2000
    )
    last = int(c.get_stream_info("scan_0001")["lastId"])
    ids = []
    for i in range(1, last + 1):
        try:
            _, meta = c.get_by_id(i, meta_only=True, stream="scan_0001")
        except (asapo_consumer.AsapoEndOfStreamError, asapo_consumer.AsapoStreamFinishedError):
            break
        ids.append(int(meta["_id"]))
    return ids


def _asapo_outage(
    service,
    tmp: Path,
    frames: int,
    group: str,
    title: str,
    down: Callable[[threading.Event], object],
    up: Callable[[], object],
    cleanup: Callable[[], object] = lambda: None,
) -> Figures:
    """Take the ASAPO service away once a quarter of the frames are published (``down``),
    bring it back (``up``) and time the recovery: from its return to the next message the
    dispatcher pulls. ``cleanup`` runs after the run whatever happened. ``group`` names the
    consumer group and the run."""
    producer = produce(service.server_name, frames, rate=40.0)
    pipeline = Pipeline(load_config(raw=asapo_config(service.server_name, tmp, group, group)))
    marks: dict[str, float] = {}

    def outage(table: ProcTable, stop: threading.Event) -> None:
        while not stop.is_set() and table.frames() < frames // 4:
            stop.wait(0.01)
        if stop.is_set():
            return
        down(stop)
        before = table.frames(PROC_DISPATCHER)
        up()
        marks["back"] = time.monotonic()
        while not stop.is_set():
            if table.frames(PROC_DISPATCHER) > before:
                marks["next"] = time.monotonic()
                return
            stop.wait(0.005)

    try:
        summary, hung = run_with_fault(pipeline, outage, 240)
    finally:
        cleanup()
    _, err = producer.communicate(timeout=120)
    data = read_stream(str(tmp / f"out_scan_0001_{group}.h5"), "scan_0001")
    lost, dups = count(data["message_id"].tolist(), set(range(1, frames + 1)))
    out_lost, out_dups = count(output_ids(service.server_name, group), set(range(1, frames + 1)))
    return Figures(
        title,
        faults=int("back" in marks),
        lost=max(lost, out_lost),
        duplicates=max(dups, out_dups),
        hangs=int(hung),
        recovery_s=[marks["next"] - marks["back"]] if "next" in marks else [],
        exit_code=summary.exit_code,
        details={"summary": summary, "data": data, "producer": (producer.returncode, err)},
    )


@reported
def asapo_stall(service, tmp: Path, frames: int = 60, stall_s: float = 3.0) -> Figures:
    """SIGSTOP the ASAPO service mid-run for ``stall_s`` (a stalled connection), then go on."""

    def down(stop: threading.Event) -> None:
        os.kill(service.pid, signal.SIGSTOP)
        stop.wait(stall_s)

    def cleanup() -> None:
        if service.running:
            os.kill(service.pid, signal.SIGCONT)

    return _asapo_outage(
        service,
        tmp,
        frames,
        "stall",
        f"ASAPO service stalled {stall_s:.0f} s (SIGSTOP) mid-run",
        down,
        lambda: os.kill(service.pid, signal.SIGCONT),
        cleanup,
    )


@reported
def asapo_restart(service, tmp: Path, frames: int = 60) -> Figures:
    """Restart the ASAPO service mid-run (stop, start on the same port and data)."""
    return _asapo_outage(
        service,
        tmp,
        frames,
        "restart",
        "ASAPO service restarted mid-run",
        lambda stop: service.stop(),
        service.start,
    )


# -- whole runs as a user starts them -------------------------------------------------------
def published(name: str) -> int:
    """Frames the live run ``name`` has published (0 until it is up)."""
    from shmpipe.observe.runs import live_runs
    from shmpipe.observe.status import attach_tables

    for info in live_runs():
        if info["name"] == name:
            try:
                _, procs, m = attach_tables(info)
            except OSError:
                return 0
            n = int(procs[PROC_PUBLISHER, P_FRAMES])
            del procs
            m.close()
            return n
    return 0


def cli(*args: str, new_session: bool = False):
    """``python -m shmpipe ARGS`` as a child process."""
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "shmpipe", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


@reported
def sigterm_under_load(tmp: Path, sleep_ms: float = 30.0) -> Figures:
    """SIGTERM a busy run (a full ring of slow frames): it must drain and exit 143."""
    import re

    name = f"sigterm-{os.getpid()}"
    out = tmp / "load.h5"
    proc = cli(
        "run", "--set", f"run.name={name}", "--set", "source.module_shape=[48, 64]",
        "--progress", "off", "--frames", "100000", "--workers", "2", "--sink", "hdf5",
        "--output", str(out), "--set", 'kernels.slow.kind="tests.plugins:Sleepy"',
        "--set", f"kernels.slow.ms={sleep_ms}", "--set", "run.drain_timeout_s=30",
    )  # fmt: skip
    hung = False
    try:
        wait_for(lambda: published(name) >= 10, what="10 published frames")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: a hang
            hung = True
            proc.kill()
            _, err = proc.communicate()
        drained = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    m = re.search(r"(\d+) frames in, (\d+) out", err)
    n_in = int(m.group(1)) if m else -1
    ids = read_stream(str(out), "scan_0001")["message_id"].tolist() if out.exists() else []
    lost, dups = count(ids, set(range(1, n_in + 1)))
    return Figures(
        f"SIGTERM under load ({sleep_ms:.0f} ms frames, full ring)",
        faults=1,
        lost=lost,
        duplicates=dups,
        hangs=int(hung),
        recovery_s=[drained],
        exit_code=proc.returncode,
        details={"stderr": err, "frames_in": n_in, "ids": ids, "drain_s": drained},
    )


@reported
def asapo_group_kill(service, tmp: Path, frames: int = 40) -> Figures:
    """SIGKILL the whole process group of an ASAPO run, start it again: 0 lost, and the
    restarted run starts clean (nothing in /dev/shm, the dead run's record swept)."""
    from shmpipe.config import to_toml

    group = "groupkill"
    p = produce(service.server_name, frames)
    p.communicate(timeout=120)
    raw = asapo_config(service.server_name, tmp, group, "unused")
    raw["kernels"]["slow"] = {"kind": "tests.plugins:Sleepy", "ms": 40.0}
    del raw["run"]["name"]
    path = tmp / "groupkill.toml"
    path.write_text(to_toml(load_config(raw=raw).effective()))
    shm_before = set(os.listdir("/dev/shm"))
    first = cli("run", "--config", str(path), "--set", "run.name=gk-1", new_session=True)
    try:
        wait_for(lambda: published("gk-1") >= 8, what="8 published frames")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
    killed_at = time.time()
    second = cli("run", "--config", str(path), "--set", "run.name=gk-2")
    hung = False
    try:
        _, err = second.communicate(timeout=180)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: a hang
        hung = True
        second.kill()
        _, err = second.communicate()
    ids = output_ids(service.server_name, group)
    lost, dups = count(ids, set(range(1, frames + 1)))
    data = read_stream(str(tmp / "out_scan_0001_gk-2.h5"), "scan_0001")
    return Figures(
        "ASAPO: whole process group SIGKILLed, run restarted",
        faults=1,
        lost=lost,
        duplicates=dups,
        hangs=int(hung),
        recovery_s=[float(data["published"].min()) - killed_at],
        exit_code=second.returncode,
        details={
            "stderr": err,
            "output_ids": ids,
            "shm_left": sorted(set(os.listdir("/dev/shm")) - shm_before),
        },
    )


@reported
def stopped_worker(
    tmp: Path,
    frames: int = 60,
    rate: float = 60.0,
    watchdog_s: float | None = 1.0,
    deadline_s=120,
) -> Figures:
    """SIGSTOP a worker between frames (idle, or with frames waiting in its inbox), never
    continued; ``watchdog_s`` None: the default configuration (the adaptive watchdog)."""
    run = {} if watchdog_s is None else {"watchdog_s": watchdog_s}
    raw = config(tmp, {"checksum": {}}, frames=frames, **run)
    raw["source"]["rate"] = rate
    pipeline = Pipeline(load_config(raw=raw))
    recoveries: list[float] = []
    stopped: list[int] = []

    def freezer(table: ProcTable, stop: threading.Event) -> None:
        while not stop.is_set():
            pid, ready = table.worker_pid(0)
            if table.frames() < 5 or not ready or not is_child(pipeline, pid):
                stop.wait(0.005)
                continue
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
            t0 = time.monotonic()
            while not stop.is_set():
                new_pid, ready = table.worker_pid(0)
                if new_pid not in (pid, 0) and ready:
                    recoveries.append(time.monotonic() - t0)
                    return
                stop.wait(0.005)
            return

    try:
        summary, hung = run_with_fault(pipeline, freezer, deadline_s)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)  # if the run did not kill it, let it be reaped
            except ProcessLookupError:
                pass
    data = read_or_empty(tmp / "out_scan_0001.h5", "scan_0001")
    lost, dups = count(data["message_id"].tolist(), set(range(1, frames + 1)))
    return Figures(
        "worker SIGSTOPped between frames, never continued ("
        + ("default: adaptive watchdog" if watchdog_s is None else f"watchdog_s = {watchdog_s}")
        + ")",
        faults=len(stopped),
        lost=lost,
        duplicates=dups,
        hangs=int(hung),
        recovery_s=recoveries,
        exit_code=summary.exit_code,
        details={"summary": summary, "data": data, "stopped": stopped},
    )


# -- dispatcher and publisher replaced ------------------------------------------------------
def kill_role_repeatedly(
    pipeline: Pipeline,
    role: str,
    kills: int,
    every: int,
    table: ProcTable,
    stop: threading.Event,
) -> list[float]:
    """SIGKILL the dispatcher or publisher ``kills`` times, each after ``every`` more frames
    were published and once the replacement of the one before is ready; return the seconds
    from each kill until its replacement was ready."""
    times: list[float] = []
    last_pid, next_at = 0, every
    while not stop.is_set() and len(times) < kills:
        proc = getattr(pipeline, role, None)
        if (
            proc is None
            or proc.pid in (None, last_pid)
            or proc.exitcode is not None
            or table.frames() < next_at
        ):
            stop.wait(0.002)
            continue
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        last_pid, t0 = proc.pid, time.monotonic()
        row = PROC_DISPATCHER if role == "dispatcher" else PROC_PUBLISHER
        while not stop.is_set():  # until the replacement is ready for messages
            new = getattr(pipeline, role)
            procs = table.get()
            if new.pid != last_pid and procs[row, P_PID] == new.pid and procs[row, P_READY_NS]:
                times.append(time.monotonic() - t0)
                break
            stop.wait(0.002)
        next_at = table.frames() + every
    return times


@reported
def role_replaced(
    tmp: Path,
    role: str,
    raw: dict,
    expected: dict[str, int],
    *,
    kills: int = 3,
    every: int = 25,
    deadline_s: float = 120,
) -> Figures:
    """Run ``raw`` and SIGKILL its dispatcher or publisher ``kills`` times mid-run: the run
    must complete (exit 0) with every message of each stream once in the HDF5 sink.
    ``expected``: stream name -> messages in it (ids 1..n)."""
    pipeline = Pipeline(load_config(raw=raw))
    killed: list[float] = []

    def killer(table: ProcTable, stop: threading.Event) -> None:
        killed.extend(kill_role_repeatedly(pipeline, role, kills, every, table, stop))

    summary, hung = run_with_fault(pipeline, killer, deadline_s)
    lost = dups = 0
    data = {}
    for stream, n in expected.items():
        data[stream] = read_or_empty(tmp / f"out_{stream}.h5", stream)
        ids = data[stream]["message_id"].tolist() + data[stream]["errors"]["message_id"].tolist()
        lo, du = count(ids, set(range(1, n + 1)))
        lost, dups = lost + lo, dups + du
    return Figures(
        f"{role} SIGKILLed {len(killed)}x ({raw['source']['kind']} source): replaced",
        faults=len(killed),
        lost=lost,
        duplicates=dups,
        hangs=int(hung),
        recovery_s=killed,
        exit_code=summary.exit_code,
        details={"summary": summary, "data": data},
    )


# -- crash safety of the results file ----------------------------------------------------------
def _check_after_kill(path: Path, frames: int, pool: list[bytes], before: int) -> int:
    """The file a killed run left: it opens, its committed rows are intact, none is lost.

    Returns the committed rows. Raises AssertionError naming what is wrong.
    """
    import h5py

    from shmpipe import results

    if not path.exists():
        assert before == 0, f"{path} vanished with {before} committed rows"
        return 0
    try:
        h5py.File(path, "r").close()
    except OSError as exc:  # the writer's open flag: SWMR readers and a resume handle it
        assert "already open for write" in str(exc), exc
    if results.hdf5.describe_file(str(path))["streams"] == []:
        return 0  # killed while the first entry was being made: no row was committed yet
    r = results.load(str(path), "scan_0001")
    ids = r.message_id.tolist()
    with h5py.File(path, "r", swmr=True) as f:
        extents = {k: d.shape for k, d in f["scan_0001"].items() if isinstance(d, h5py.Dataset)}
    assert len(ids) == len(set(ids)), f"duplicate ids after a kill: {ids[-5:]}, {extents}"
    assert len(ids) >= before, f"committed rows lost: {before} before, {len(ids)} after"
    assert set(ids) <= set(range(1, frames + 1))
    for mid, d in zip(ids, r["checksum.digest"], strict=True):
        assert bytes(d) == pool[(mid - 1) % len(pool)], f"row of id {mid} is not its frame"
    return len(ids)


@reported
def group_sigkill_resume(
    tmp: Path, kills: int = 3, frames: int = 400, rate: float = 400.0, seed: int = 14
) -> Figures:
    """SIGKILL the whole process group of an HDF5 run at random instants of its writing.

    Each run is ``mode = "resume"`` into the same file and commits every few frames; it is
    killed when its publisher has handed a random number of new frames to the sink (plus a
    random few milliseconds, so the kill falls anywhere in a commit). After each kill the file
    must open with every committed row intact; the next run resumes it; a last run completes
    it, and then every id is there exactly once.
    """
    from shmpipe.plugins.kernels import frame_digest
    from shmpipe.plugins.sources.sim import SimParams, SimSource

    rng = random.Random(seed)
    sim = SimSource(SimParams(**{k: v for k, v in SMALL.items() if k != "kind"}))
    sim.open()
    pool = [frame_digest(sim.frame_parts(i)) for i in range(SMALL["pool"])]
    out, path = tmp / "crash_{stream}.h5", tmp / "crash_scan_0001.h5"
    args = [
        "run", "--progress", "off", "--workers", "2", "--frames", str(frames), "--sink", "hdf5",
        "--output", str(out), "--set", "source.module_shape=[48, 64]",
        "--set", f"source.pool={SMALL['pool']}", "--set", f"source.modules={SMALL['modules']}",
        "--set", f"source.rate={rate}", "--set", 'sinks.0.mode="resume"',
        "--set", "run.commit_interval_s=0.02", "--set", "run.commit_every=8",
    ]  # fmt: skip
    rows, landed, resumed_s, after_kill = 0, [], [], []
    for i in range(kills):
        name = f"crash-{os.getpid()}-{i}"
        # Resumed frames already in the file are skipped, then new ones are written: kill
        # after a random share of what is left, so that every kill falls among new writes.
        step = max(1, (frames - rows) // (kills - i + 1))
        until = min(frames - 1, rows + rng.randint(1, 2 * step))
        proc = cli(*args, "--set", f"run.name={name}", new_session=True)
        try:
            wait_for(
                lambda n=name, u=until, p=proc: published(n) >= u or p.poll() is not None,
                timeout=120,
                what=f"{until} frames published by {name}",
            )
            time.sleep(rng.uniform(0, 0.03))  # the fault's instant, anywhere in a commit
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                landed.append(i)
            proc.communicate(timeout=60)
        rows = _check_after_kill(path, frames, pool, rows)
        after_kill.append(rows)
    t0 = time.monotonic()
    last = cli(*args, "--set", f"run.name=crash-{os.getpid()}-done")
    _, err = last.communicate(timeout=300)
    resumed_s.append(time.monotonic() - t0)
    assert last.returncode == 0, err
    ids = read_stream(str(path), "scan_0001")["message_id"].tolist()
    _check_after_kill(path, frames, pool, rows)
    lost, dups = count(ids, set(range(1, frames + 1)))
    return Figures(
        f"whole group SIGKILLed while writing HDF5, then resumed ({kills} kills)",
        faults=len(landed),
        lost=lost,
        duplicates=dups,
        recovery_s=resumed_s,
        exit_code=last.returncode,
        details={"ids": ids, "stderr": err, "rows_after_kill": after_kill},
    )
