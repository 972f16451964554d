"""What a child ``shmpipe run`` of the service is given: names, consumer group, versioned
outputs, as ``--set`` overrides after the recipe's own.

Version 0 is the pipeline a recipe runs on its own; version k > 0 is the k-th reprocessing of
the same data: its ASAPO outputs go to ``<data_source>-r<k>`` and its files to
``<name>-r<k>.<suffix>``, so the first results are never touched.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from shmpipe.config import PipelineConfig
from shmpipe.config.schema import toml_value
from shmpipe.serve.config import Recipe, ServiceConfig, overrides_of

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class RunPlan:
    """One run of a recipe on one data source."""

    recipe: str
    beamtime: str
    data_source: str
    version: int
    streams: list[str]
    """Reprocessing: these streams, one after the other; empty: all, from the first."""
    overrides: dict[str, Any]
    """The request's ``set`` (on top of the recipe's)."""
    group_id: str
    start_stream: str
    token: str = ""
    view_port: int = 0
    stream_index: int = 0
    """Reprocessing of listed streams: which one the next child reads."""
    extra: dict[str, Any] = field(default_factory=dict)


def safe(text: str) -> str:
    """``text`` with anything but letters, digits, ``_ . -`` replaced (names of files, groups)."""
    return _UNSAFE.sub("_", text) or "_"


def run_name(recipe: str, beamtime: str, data_source: str, version: int) -> str:
    """The child's ``run.name``: ``azint.bt1.lambda9m`` or ``azint.bt1.lambda9m-r2``."""
    name = safe(f"{recipe}.{beamtime}.{data_source}")
    return f"{name}-r{version}" if version else name


def group_id(recipe: str, version: int) -> str:
    """The consumer group of a run. Version 0 keeps one per recipe (so a restarted or
    reinstalled service resumes it); a reprocessing gets a fresh one, never used before."""
    base = f"serve_{safe(recipe).replace('.', '_')}"
    return f"{base}_r{version}_{os.urandom(4).hex()}" if version else base


def versioned_path(path: str, version: int) -> str:
    """``out_{stream}.h5`` -> ``out_{stream}-r2.h5`` (``-r<k>`` before the suffix)."""
    if not version:
        return path
    head, sep, tail = path.rpartition("/")
    stem, dot, suffix = tail.rpartition(".")
    if not dot or not stem:
        stem, suffix, dot = tail, "", ""
    return f"{head}{sep}{stem}-r{version}{dot}{suffix}"


def _q(value: Any) -> str:
    return json.dumps(value)  # a JSON string or number is a TOML value as well


def child_overrides(
    service: ServiceConfig, recipe: Recipe, plan: RunPlan, base: PipelineConfig
) -> list[str]:
    """The ``--set`` list of a child: the recipe's, the request's, then the service's own.

    Parameters
    ----------
    service, recipe
        The service configuration and the run's recipe.
    plan
        The run.
    base
        The recipe's pipeline configuration as its file says (to find its sinks).
    """
    sets = overrides_of(recipe.set) + overrides_of(plan.overrides)
    provenance = {
        "service": "shmpipe serve",
        "recipe": plan.recipe,
        "version": plan.version,
        "overrides": {**recipe.set, **plan.overrides},
    }
    endpoint = _q(service.serve.endpoint)
    sets += [
        f"run.name={_q(run_name(plan.recipe, plan.beamtime, plan.data_source, plan.version))}",
        f"run.provenance={toml_value(provenance)}",
        'run.progress="off"',
        "metrics.port=0",
        f"view.port={plan.view_port}",
        f"view.host={_q(service.serve.host)}",  # the live views listen where the page does
        f"source.endpoint={endpoint}",
        f"source.beamtime={_q(plan.beamtime)}",
        f"source.data_source={_q(plan.data_source)}",
        f"source.token={_q(plan.token)}",
        f"source.group_id={_q(plan.group_id)}",
        "source.reprocess=false",
    ]
    if plan.start_stream:
        sets.append(f"source.stream={_q(plan.start_stream)}")
    if plan.version:
        sets.append('source.until="finished"')
        if plan.streams:
            sets.append('source.follow="none"')
    for i, sink in enumerate(base.sinks):
        params = sink.params
        if sink.kind == "asapo":
            sets += [
                f"sinks.{i}.endpoint={endpoint}",
                f"sinks.{i}.beamtime={_q(plan.beamtime)}",
                f"sinks.{i}.token={_q(plan.token)}",
            ]
            if plan.version:
                sets.append(f"sinks.{i}.data_source={_q(f'{params.data_source}-r{plan.version}')}")
        elif hasattr(params, "output") and hasattr(params, "mode"):
            # A restarted child appends to its own files (the sink skips ids it has).
            sets.append(f'sinks.{i}.mode="resume"')
            if plan.version:
                sets.append(f"sinks.{i}.output={_q(versioned_path(params.output, plan.version))}")
    return sets


def output_data_sources(base: PipelineConfig) -> set[str]:
    """The ASAPO data sources a recipe writes (never taken as inputs by any recipe)."""
    return {s.params.data_source for s in base.sinks if s.kind == "asapo"}
