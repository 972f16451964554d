"""Which engine integrates a kind of frame on this CPU: timed once, kept beside the tables.

FFTW's planner is the model: where several engines apply (:func:`engines.candidates`), each
is timed on a frame like the real ones, the fastest is taken (the registry's first, the default,
unless another is ``MARGIN`` faster), and the choice is stored in
``engines.json`` in the plan's table directory under the CPU model, so the next process on
the same kind of machine (every worker of a run, every later run) reads it instead of timing
again, and a machine of another kind times for itself. The choice is logged (logger
``native_kernels.engine_choice``) and reported by ``RadialPlan.engine_choices`` (shown by
``shmpipe bench``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from native_kernels.cpu import cpu_model
from native_kernels.engines import ENGINES, Engine, EngineKey, candidates

log = logging.getLogger(__name__)

CHOICE_FILE = "engines.json"
# Rounds of timing, the candidates interleaved in each (after one untimed run of each:
# compilation, first touch of the tables), the best of each kept: on a machine shared with
# other work, a candidate timed in one burst can lose to a neighbour's burst of activity.
TIMING_ROUNDS = 5
# The first candidate of the registry is the default (the loop the integrator had when it was
# last checked against pyFAI's speed); another replaces it only when it is this much faster:
# on a loaded machine two loops of equal speed time a few per cent apart either way, and a
# choice made on noise is stored and kept.
MARGIN = 0.05


@dataclass(frozen=True)
class Choice:
    """The engine chosen for a key, how (``"timed"``, ``"stored"``, ``"only"``, ``"forced"``),
    and the candidates' best times in ms when timed here."""

    engine: Engine
    how: str
    times_ms: dict[str, float]

    def as_dict(self) -> dict:
        return {"engine": self.engine.name, "how": self.how, "times_ms": dict(self.times_ms)}


def _read(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # none yet, or damaged: time again and rewrite


def _write(path: Path, cpu: str, key: str, entry: dict) -> None:
    """Add one choice, atomically (concurrent workers: the last rename wins, none is torn)."""
    data = _read(path)
    data.setdefault(cpu, {})[key] = entry
    try:
        fd, tmp = tempfile.mkstemp(prefix=".engines-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only table directory: the choice is kept in memory only
        log.warning("cannot store the engine choice in %s: %s", path, exc)


class EngineChooser:
    """The engine for each key of one plan, timed or read from ``directory/engines.json``.

    Parameters
    ----------
    directory : path, optional
        The plan's table directory (None: choices are kept in memory only).
    forced : str, optional
        An engine name to use wherever it applies (tests, benchmarks).
    """

    def __init__(self, directory: Path | None = None, forced: str | None = None) -> None:
        self.path = None if directory is None else Path(directory) / CHOICE_FILE
        self.forced = forced
        self.cpu = cpu_model()
        self._chosen: dict[EngineKey, Choice] = {}

    def choose(self, key: EngineKey, time_engine: Callable[[Engine], float]) -> Engine:
        """The engine for ``key``; ``time_engine(engine)`` runs it once on a probe frame and
        returns seconds (called only when candidates compete and no stored choice exists)."""
        got = self._chosen.get(key)
        if got is None:
            got = self._choice(key, time_engine)
            self._chosen[key] = got
        return got.engine

    def choices(self) -> dict[str, dict]:
        """Every choice made so far, by key: engine name, how, times (ms)."""
        return {str(k): c.as_dict() for k, c in self._chosen.items()}

    def _choice(self, key: EngineKey, time_engine: Callable[[Engine], float]) -> Choice:
        options = candidates(key)
        if self.forced is not None:
            forced = [e for e in options if e.name == self.forced]
            if forced:
                return Choice(forced[0], "forced", {})
        if len(options) == 1:
            return Choice(options[0], "only", {})
        stored = _read(self.path).get(self.cpu, {}).get(str(key), {})
        engine = ENGINES.get(stored.get("engine", ""))
        # A choice made among other candidates (an engine added or removed since) is timed
        # again: the new one may be the fastest.
        names = {e.name for e in options}
        timed_among = set(stored.get("times_ms") or names)
        if engine is not None and engine in options and timed_among == names:
            return Choice(engine, "stored", stored.get("times_ms", {}))
        for e in options:
            time_engine(e)  # compiles, maps the tables
        times = {e.name: float("inf") for e in options}
        for _ in range(TIMING_ROUNDS):
            for e in options:
                times[e.name] = min(times[e.name], time_engine(e) * 1e3)
        best = min(options, key=lambda e: times[e.name])
        if times[best.name] > times[options[0].name] * (1.0 - MARGIN):
            best = options[0]
        choice = Choice(best, "timed", {n: round(t, 3) for n, t in times.items()})
        log.info(
            "integration engine for %s on %s: %s (%s)",
            key,
            self.cpu,
            best.name,
            ", ".join(f"{n} {t:.2f} ms" for n, t in times.items()),
        )
        if self.path is not None:
            _write(self.path, self.cpu, str(key), choice.as_dict())
        return choice


def timer(run: Callable[[], None]) -> float:
    """Seconds one call of ``run`` takes."""
    t = time.perf_counter()
    run()
    return time.perf_counter() - t
