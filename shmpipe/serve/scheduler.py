"""Scheduler: the service's one actor. Each tick it reaps children that ended, looks for new
data sources, starts queued runs while the node's workers allow, and samples live counts.

Only the scheduler's thread changes a run's state; the HTTP handlers add runs and mark stop
requests in the store and wake it. The queue is first come, first served: a run that does
not fit waits, and so do those behind it (a large run is never starved by small ones); a run
waiting out a restart back-off holds no place.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from shmpipe.config import ConfigError, PipelineConfig, load_config, to_toml
from shmpipe.engine import exit_codes
from shmpipe.serve import discovery
from shmpipe.serve.config import ServiceConfig
from shmpipe.serve.plan import RunPlan, child_overrides, group_id, output_data_sources, run_name
from shmpipe.serve.runner import Child, live_counts, read_summary
from shmpipe.serve.state import StateStore

log = logging.getLogger("shmpipe.serve")

MAX_BACKOFF_S = 60.0
RATE_S = 1.0  # the rate is measured over at least this long
DONE_CODES = (exit_codes.EXIT_OK, exit_codes.EXIT_FRAME_ERRORS)
# Stopped by SIGINT or SIGTERM: through the pipeline's own handling, or before it had any.
INTERRUPTED_CODES = (exit_codes.EXIT_SIGINT, exit_codes.EXIT_SIGTERM, -2, -15)


class Scheduler:
    """Owns the node's runs.

    Parameters
    ----------
    service
        The validated service configuration.
    store
        Its state.
    """

    def __init__(self, service: ServiceConfig, store: StateStore) -> None:
        self.service, self.store = service, store
        self.children: dict[int, Child] = {}
        self.bases: dict[str, PipelineConfig] = {
            r.name: load_config(r.config) for r in service.recipes
        }
        self.outputs: set[str] = set()
        for base in self.bases.values():
            self.outputs |= output_data_sources(base)
        self.wake = threading.Event()
        self.versions = threading.Lock()
        """Held from choosing a reprocessing's version to storing its run (two requests at
        once must not both take version k)."""
        self.stopping = False
        self._next_discovery = 0.0
        self._sampled: dict[int, tuple[float, int]] = {}
        self.beamtime_errors: dict[str, str] = {}
        """Why a followed beamtime's data sources could not be listed lately ("" : they could)."""

    # -- what the HTTP side asks ---------------------------------------------------------
    def followed(self) -> dict[str, str]:
        """Followed beamtimes: those of the file, then those added at run time (id -> token)."""
        return {**self.service.beamtimes, **self.store.beamtimes()}

    def workers_in_use(self) -> int:
        return sum(r["workers"] for r in self.store.runs(("running",)))

    def base_workers(self, recipe: str, overrides: dict) -> int:
        """Workers a run of ``recipe`` with ``overrides`` uses (raises ConfigError)."""
        r = self.service.recipe(recipe)
        assert r is not None
        plan = RunPlan(recipe, "bt", "ds", 1, [], overrides, "g", "")
        cfg = load_config(r.config, child_overrides(self.service, r, plan, self.bases[recipe]))
        return cfg.run.workers

    # -- the loop ------------------------------------------------------------------------
    def resume(self) -> None:
        """After a (re)start: adopt the children of runs that were running; those that are
        gone are reaped at the first tick (restarted, or ended as their exit file says)."""
        for run in self.store.runs(("running",)):
            files = self.service.run_dir / str(run["id"])
            child = Child.adopt(run["id"], run["pid"], run["pid_started"], files)
            if child is not None:
                child.log_offset = run["log_offset"]
                log.info("run %d: adopted its running pipeline (pid %d)", run["id"], run["pid"])
            if child is None:  # gone: reaped at the first tick, as its exit file says
                child = Child(run["id"], 0, 0.0, files)
                child.log_offset = run["log_offset"]
            self.children[run["id"]] = child

    def loop(self, stop: threading.Event, tick_s: float = 0.25) -> None:
        """Tick until ``stop`` is set, then stop every child (they drain)."""
        self.resume()
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the service must outlive one bad tick
                log.exception("scheduler tick failed")
            self.wake.wait(tick_s)
            self.wake.clear()
        self.shutdown()

    def tick(self) -> None:
        now = time.time()
        self._reap(now)
        self._handle_stops()
        if now >= self._next_discovery:
            self._next_discovery = now + self.service.serve.poll_s
            self.discover()
        self._admit(now)
        self._sample(now)

    # -- discovery -----------------------------------------------------------------------
    def discover(self) -> list[int]:
        """Add the pipeline of each (recipe, beamtime, data source) that has none; returns
        the ids of the runs added."""
        added = []
        endpoint = self.service.serve.endpoint
        for beamtime, token in self.followed().items():
            listed, error = discovery.data_sources(endpoint, beamtime, token)
            if error != self.beamtime_errors.get(beamtime, ""):
                if error:
                    log.warning("beamtime %s: ASAPO at %s: %s", beamtime, endpoint, error)
                self.beamtime_errors[beamtime] = error
            configured = [ds for r in self.service.recipes for ds in r.data_sources]
            for ds in sorted(set(listed) | set(configured)):
                if discovery.is_output(ds, self.outputs):
                    continue
                for recipe in self.service.recipes:
                    if not recipe.matches(beamtime, ds):
                        continue
                    if self.store.find(recipe.name, beamtime, ds, 0) is not None:
                        continue
                    names = discovery.streams(endpoint, beamtime, ds, token)
                    if not names:
                        continue  # no data yet
                    workers = self.base_workers(recipe.name, {})
                    run_id = self.store.add_run(
                        recipe=recipe.name,
                        beamtime=beamtime,
                        data_source=ds,
                        version=0,
                        group_id=group_id(recipe.name, 0),
                        start_stream=names[0],
                        workers=workers,
                    )
                    log.info(
                        "run %d: %s on %s/%s (new data source)", run_id, recipe.name, beamtime, ds
                    )
                    added.append(run_id)
        return added

    # -- starting ------------------------------------------------------------------------
    def _admit(self, now: float) -> None:
        free = self.service.workers - self.workers_in_use()
        for run in self.store.runs(("queued",)):
            if run["stop_requested"] or run["not_before"] > now:
                continue
            if run["workers"] > free:
                if run["message"] != "waiting for workers":
                    self.store.update(run["id"], message="waiting for workers")
                break  # first come, first served
            self._start(run)
            free -= run["workers"]

    def _view_port(self, run_id: int) -> int:
        base = self.service.serve.view_port
        if not base:
            return 0
        taken = {r["view_port"] for r in self.store.runs(("running",)) if r["id"] != run_id}
        for port in range(base, min(base + 1000, 65536)):
            if port not in taken and _bindable(self.service.serve.host, port):
                return port
        log.warning("run %d: no free port for its live view from %d up", run_id, base)
        return 0

    def _start(self, run: dict) -> None:
        recipe = self.service.recipe(run["recipe"])
        token = self.followed().get(run["beamtime"])
        if recipe is None or token is None:
            what = "recipe" if recipe is None else "beamtime"
            self._end(run, "failed", f"the {what} is no longer in the service configuration")
            return
        streams = run["streams"]
        start = streams[run["stream_index"]] if streams else run["start_stream"]
        port = self._view_port(run["id"])
        plan = RunPlan(
            run["recipe"], run["beamtime"], run["data_source"], run["version"], streams,
            run["overrides"], run["group_id"], start, token, port,
        )  # fmt: skip
        sets = child_overrides(self.service, recipe, plan, self.bases[recipe.name])
        files = self.service.run_dir / str(run["id"])
        try:
            config = write_config(files / "pipeline.toml", load_config(recipe.config, sets))
        except ConfigError as exc:  # the recipe's file changed since the service started
            self._end(run, "failed", f"cannot start: {exc}")
            return
        child = Child.start(
            run["id"], ["run", "--config", str(config)], self.service.serve.output_dir, files
        )
        self.children[run["id"]] = child
        self.store.update(
            run["id"],
            state="running",
            pid=child.pid,
            pid_started=child.pid_started,
            log_offset=child.log_offset,
            started=run["started"] or time.time(),
            view_port=port,
            message=f"pipeline {start or ''} started (pid {child.pid})",
        )
        log.info(
            "run %d: started %s (pid %d)",
            run["id"],
            run_name(run["recipe"], run["beamtime"], run["data_source"], run["version"]),
            child.pid,
        )

    # -- stopping and ending -------------------------------------------------------------
    def _handle_stops(self) -> None:
        for run in self.store.runs(("queued", "running")):
            if not run["stop_requested"]:
                continue
            child = self.children.get(run["id"])
            if run["state"] == "queued":
                self._end(run, "stopped", "stopped on request before it started")
            elif child is not None and not child.terminated:
                child.terminate()
                self.store.update(run["id"], message="stopping: draining the frames in flight")

    def _end(self, run: dict, state: str, message: str, **fields) -> None:
        self.store.update(
            run["id"], state=state, ended=time.time(), message=message, pid=0, **fields
        )

    def _reap(self, now: float) -> None:
        for run_id, child in list(self.children.items()):
            code = child.poll()
            if code is None:
                continue
            del self.children[run_id]
            self._sampled.pop(run_id, None)
            run = self.store.run(run_id)
            if run is None:
                continue
            s = read_summary(child.log_path, child.log_offset)
            # A child killed before its summary counted what was last sampled of it.
            done = {
                "done_in": max(run["frames_in"], run["done_in"] + s.frames_in),
                "done_out": max(run["frames_out"], run["done_out"] + s.frames_out),
                "done_errors": max(run["errors"], run["done_errors"] + s.errors),
            }
            counts = {
                "frames_in": done["done_in"],
                "frames_out": done["done_out"],
                "errors": done["done_errors"],
                "outputs": sorted(set(run["outputs"]) | set(s.outputs)),
                "exit_code": code,
                "summary": s.summary or s.last_line,
                "rate": 0.0,
                **done,
            }
            self._ended(run, code, s.last_line, counts, now)

    def _ended(self, run: dict, code: int, last: str, counts: dict, now: float) -> None:
        rid = run["id"]
        if run["stop_requested"]:
            self._end(run, "stopped", f"stopped on request (exit {code})", **counts)
        elif self.stopping:
            self.store.update(
                rid, state="queued", pid=0, message="the service stopped: resumes at its "
                "next start", **counts,
            )  # fmt: skip
        elif code in INTERRUPTED_CODES:
            # Signalled by someone else (systemd stopping the whole unit, an operator): not a
            # failure of the pipeline; it resumes from its group.
            self.store.update(
                rid, state="queued", pid=0, message=f"interrupted (exit {code}): resumes",
                **counts,
            )  # fmt: skip
        elif code in DONE_CODES:
            if run["streams"] and run["stream_index"] + 1 < len(run["streams"]):
                self.store.update(
                    rid, state="queued", pid=0, stream_index=run["stream_index"] + 1, **counts
                )
            else:
                self._end(run, "finished", f"finished (exit {code})", **counts)
        else:
            self._died(run, code, last, counts, now)

    def _died(self, run: dict, code: int, last: str, counts: dict, now: float) -> None:
        """Start a pipeline that died again after a back-off, or give up on it after
        ``serve.max_restarts`` deaths in a row (a death after published frames starts anew)."""
        progressed = counts["frames_out"] > run["frames_out_at_failure"]
        failures = 1 if progressed else run["failures"] + 1
        counts = {**counts, "failures": failures, "frames_out_at_failure": counts["frames_out"]}
        if failures > self.service.serve.max_restarts:
            message = (
                f"exit {code}; gave up after {failures} deaths in a row (serve.max_restarts): "
                f"{last}"
            )
            log.error("run %d: %s", run["id"], message)
            self._end(run, "failed", message, **counts)
            return
        wait = min(MAX_BACKOFF_S, self.service.serve.restart_backoff_s * 2 ** (failures - 1))
        log.warning(
            "run %d: pipeline ended with exit %d; restarting in %.0f s: %s",
            run["id"], code, wait, last,
        )  # fmt: skip
        self.store.update(
            run["id"], state="queued", pid=0, restarts=run["restarts"] + 1,
            not_before=now + wait, message=f"exit {code}, restarting in {wait:.0f} s: {last}",
            **counts,
        )  # fmt: skip

    def _sample(self, now: float) -> None:
        """Live counts and rates of the running pipelines, written only when they changed
        (every write is a synchronous commit). Read at every tick: a pipeline that is killed
        takes with it the counts since the last reading."""
        for run_id in list(self.children):
            before = self._sampled.get(run_id)
            run = self.store.run(run_id)
            if run is None or run["state"] != "running":
                continue
            name = run_name(run["recipe"], run["beamtime"], run["data_source"], run["version"])
            got = live_counts(name)
            if got is None:
                continue
            fin, fout, ferr = got
            rate = run["rate"]
            if before is None or now - before[0] >= RATE_S:
                self._sampled[run_id] = (now, fout)
                if before is not None:
                    rate = max(0.0, (fout - before[1]) / (now - before[0]))
            fields = {
                "frames_in": run["done_in"] + fin,
                "frames_out": run["done_out"] + fout,
                "errors": run["done_errors"] + ferr,
                "rate": round(rate, 2),
            }
            if any(run[k] != v for k, v in fields.items()):
                self.store.update(run_id, **fields)

    def shutdown(self, timeout_s: float = 120.0) -> None:
        """Stop every child (each drains) and wait for them; their runs stay queued, to
        resume at the next start."""
        self.stopping = True
        for child in self.children.values():
            child.terminate()
        deadline = time.monotonic() + timeout_s
        while self.children and time.monotonic() < deadline:
            self._reap(time.time())
            if self.children:
                time.sleep(0.1)  # polling the children's exits
        for child in self.children.values():
            child.signal(9)


def write_config(path: Path, config: PipelineConfig) -> Path:
    """The child's whole configuration as a file only its owner reads: the beamtime's token
    is in it, and a command line (``--set source.token=...``) would show it to every user."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(to_toml(config.effective()))
    os.replace(tmp, path)
    return path


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False
