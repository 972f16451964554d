"""Making a run's reducers, and the checks before any process starts.

``check_reducers`` runs in the start-up checks once the kernels' outputs are known: each
reducer's input must be one of them, the reducer must accept it, and a checkpoint left by an
earlier run must agree with the sinks' ``mode`` (continued under ``"resume"``, refused under
``"new"``, replaced under ``"overwrite"``).
"""

from __future__ import annotations

import os

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.reducer import Reducer
from shmpipe.api.sink import Record, ReducerInfo, RunInfo
from shmpipe.config import ConfigError, PipelineConfig
from shmpipe.reduce import checkpoint


def state_path(config: PipelineConfig) -> str:
    """Where the reducers' checkpoint of this run is (``run.reducer_state``)."""
    return os.path.abspath(config.run.reducer_state.format(run=config.run.name))


def rerun_mode(config: PipelineConfig) -> str:
    """What the run does with an earlier checkpoint: the first sink's ``mode`` that has one
    (``"new"``, ``"resume"``, ``"overwrite"``); ``"resume"`` when no sink has a mode (a
    restarted ASAPO consumer group continues where it was)."""
    for s in config.sinks:
        mode = getattr(s.params, "mode", None)
        if isinstance(mode, str):
            return mode
    return "resume"


def build_reducers(config: PipelineConfig, outputs: list[ArraySpec]) -> list[Reducer]:
    """The run's reducers, each given the spec of its input (``ConfigError`` naming the key
    when an input is not an output of the chain or the reducer refuses it)."""
    available = {s.name: s for s in outputs}
    built = []
    for spec in config.reducers:
        key = f"reducers.{spec.name}"
        name = spec.params.input
        if name not in available:
            raise ConfigError(
                f"{name!r} is not an output of the chain; outputs: {', '.join(available)}",
                f"{key}.input",
                config.path,
            )
        reducer = spec.cls(spec.name, spec.params, available[name])
        try:
            reducer.check(available)
        except ValueError as exc:
            raise ConfigError(str(exc), key, config.path) from None
        built.append(reducer)
    return built


def warm(reducer: Reducer) -> None:
    """Add one frame of zeros to a fresh state: compiles (and caches) a reducer's Numba
    code here, in the start-up checks, rather than in the publisher at its first frame."""
    spec = reducer.input_spec
    record = Record("warm-up", 1, "", {}, {spec.name: np.zeros(spec.shape, spec.dtype)}, 0.0)
    try:
        reducer.add(reducer.new_state(), record.arrays[spec.name], record)
    except (ValueError, KeyError):
        pass  # a weight or position the zeros lack: compiled at the first real frame
    except Exception as exc:  # noqa: BLE001 - Numba's typing errors: an input it cannot take
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"cannot reduce {spec.name} ({spec.dtype}, {spec.shape}): {first}"
        ) from None


def reducer_identity(config: PipelineConfig) -> dict:
    """What a process attaching to the run later needs to read its reducers' results: the
    kernel and reducer tables and the checkpoint's path (``config_of_identity``)."""
    doc = config.effective()
    return {
        "kernels": doc["kernels"],
        "reducers": doc["reducers"],
        "reducer_state": state_path(config),
    }


def config_of_identity(identity: dict) -> PipelineConfig:
    """The configuration ``reducer_identity`` describes (enough for ``LiveReduced``)."""
    from shmpipe.config import load_config

    raw = {
        "kernels": identity["kernels"],
        "reducers": identity["reducers"],
        "run": {"reducer_state": identity["reducer_state"]},
    }
    return load_config(raw=raw)


def reducer_infos(config: PipelineConfig, outputs: list[ArraySpec]) -> list[ReducerInfo]:
    """What the sinks learn of the reducers (``RunInfo.reducers``)."""
    available = {s.name: s for s in outputs}
    return [
        ReducerInfo(
            name=r.name,
            kind=spec.kind,
            input=r.params.input,
            every=r.params.every,
            outputs=r.qualified_outputs(),
            input_axis=available[r.params.input].axis,
        )
        for r, spec in zip(build_reducers(config, outputs), config.reducers, strict=True)
    ]


def check_reducers(config: PipelineConfig, outputs: list[ArraySpec], run: RunInfo) -> None:
    """Every check of the reducers before any process starts (``ConfigError``)."""
    if not config.reducers:
        return
    for r in build_reducers(config, outputs):
        try:
            warm(r)
        except ValueError as exc:
            raise ConfigError(str(exc), f"reducers.{r.name}", config.path) from None
    path = state_path(config)
    if os.path.isdir(path) or not os.path.isdir(os.path.dirname(path)):
        raise ConfigError(
            f"{path}: must name a file in an existing directory", "run.reducer_state", config.path
        )
    if not checkpoint.exists(path):
        return
    mode = rerun_mode(config)
    if mode == "overwrite":
        return
    if mode == "new":
        raise ConfigError(
            f"{path} holds the reducers' state of an earlier run; the sinks' mode = \"new\" "
            'never continues one: set mode = "resume" to continue it, "overwrite" to start '
            "afresh, or choose another run.reducer_state",
            "run.reducer_state",
            config.path,
        )
    try:
        _, result_hash = checkpoint.identity(path)
    except ValueError as exc:
        raise ConfigError(str(exc), "run.reducer_state", config.path) from None
    if result_hash != run.result_hash:
        raise ConfigError(
            f'{path} holds reducer state made with another configuration; mode = "resume" '
            'cannot continue it: use another run.reducer_state, or mode = "overwrite"',
            "run.reducer_state",
            config.path,
        )
