"""The ``[reducers.NAME]`` tables: reducers across frames, validated before anything starts.

Each table names its reducer (``kind``: ``mean``, ``sum``, ``map``, ``histogram`` or
``package.module:ClassName``), the per-frame output it reduces (``input = "kernel.output"``)
and ``every`` (0: per stream). Whether that output exists is known once the kernels are set up
(``shmpipe.reduce.check_reducers``, still before any process starts); here the kernel it names
must be in the chain and the reducer's name must not be a kernel's (both qualify outputs).
"""

from __future__ import annotations

import re
import typing
from typing import Any

from shmpipe.api.reducer import Reducer, ReducerParams
from shmpipe.config.schema import (
    TABLE_VALIDATORS,
    ConfigError,
    PluginSpec,
    _plugin,
    did_you_mean,
)


def reducer_specs(
    tables: Any, kernels: list[PluginSpec], file: str | None, given: typing.Collection[str]
) -> list[PluginSpec]:
    """Validate the ``[reducers.*]`` tables (``ConfigError`` naming the key)."""
    if not isinstance(tables, dict):
        raise ConfigError("must be tables [reducers.<name>]", "reducers", file)
    chain = [k.name for k in kernels]
    specs = []
    for name, table in tables.items():
        key = f"reducers.{name}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(
                f"{name!r}: a reducer's name is letters, digits and _ (it names its outputs, "
                "an HDF5 group and Tango attributes)",
                key,
                file,
            )
        if name in chain:
            raise ConfigError(
                f"{name!r} is also a kernel's name; reducer outputs are {name}.<output> like "
                "a kernel's, so the names must differ",
                key,
                file,
            )
        if isinstance(table, dict) and "kind" not in table:
            raise ConfigError(
                'needs kind = "mean", "sum", "map", "histogram" or "package.module:Class"',
                f"{key}.kind",
                file,
            )
        spec = _plugin("shmpipe.reducers", Reducer, table, key, file, name=name, given=given)
        if not isinstance(spec.params, ReducerParams):
            raise ConfigError(
                f"{spec.kind}: its Params must subclass shmpipe.api.ReducerParams", key, file
            )
        kernel = spec.params.input.partition(".")[0]
        if kernel not in chain:
            raise ConfigError(
                f"{spec.params.input!r} is not an output of the chain: no kernel "
                f"{kernel!r}{did_you_mean(kernel, chain)}; kernels: {', '.join(chain)}",
                f"{key}.input",
                file,
            )
        specs.append(spec)
    return specs


TABLE_VALIDATORS["reducers"] = reducer_specs
