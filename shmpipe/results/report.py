"""``shmpipe results``: what a results file or an ASAPO output stream holds, as text."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


def format_description(
    doc: dict[str, Any], show_config: bool = False, show_all: bool = False
) -> str:
    """Render ``describe_file`` / ``describe_asapo`` output for a terminal.

    Parameters
    ----------
    doc : dict
        What ``describe_file`` or ``describe_asapo`` returned.
    show_config : bool
        Add each run's whole configuration (TOML).
    show_all : bool
        List every result-shaping key; otherwise only the kinds and the keys whose value
        differs from the plug-in's default.
    """
    lines = [doc["origin"]]
    if doc.get("creator"):
        lines.append(f"  written by {doc['creator']}, result hash {doc.get('result_hash', '')}")
    shaping = {k: v for k, v in (doc.get("result_config") or {}).items() if k != "kernels"}
    if shaping:
        shown = shaping if show_all else without_defaults(shaping)
        hidden = len(shaping) - len(shown)
        lines.append(
            "  result-shaping configuration"
            + (
                f" ({hidden} keys at their defaults not shown: --all shows them):"
                if hidden
                else ":"
            )
        )
        lines += [f"    {k} = {v}" for k, v in shown.items()]
    if not doc["streams"]:
        lines.append("  no streams")
    for s in doc["streams"]:
        ids = (f"ids {s['first_id']}..{s['last_id']}" if s["rows"] else "no rows") + (
            f" ({s['rows'] - s['unique_ids']} duplicate)" if s["rows"] != s["unique_ids"] else ""
        )
        state = "finished" if s["finished"] else "open"
        if s.get("next_stream"):
            state += f", next {s['next_stream']}"
        lines.append(
            f"  stream {s['stream']}: {s['rows']} rows, {ids}, {s['errors']} errors"
            + (f" ({s['quarantined']} quarantined)" if s.get("quarantined") else "")
            + f", {state}"
        )
        if s.get("default"):
            lines.append(f"    default plot: {s['stream']}/{s['default']}")
        for name, o in s["outputs"].items():
            unit = f" [{o['units']}]" if o.get("units") else ""
            lines.append(f"    {name} {tuple(o['shape'])}{unit}")
        for red in s.get("reducers", []):
            every = f"every {red['every']} frames" if red["every"] else "the whole stream"
            ids = f", ids {red['first_id']}..{red['last_id']}" if red["windows"] else ""
            lines.append(
                f"    reducer {red['name']} ({red['kind']} of {red['input']}, {every}): "
                f"{red['windows']} window{'' if red['windows'] == 1 else 's'}, "
                f"{red['frames']} frames{ids}"
            )
            for name, o in red["outputs"].items():
                unit = f" [{o['units']}]" if o.get("units") else ""
                lines.append(f"      {red['name']}.{name} {tuple(o['shape'])}{unit}")
        for r in s["runs"]:
            extra = " ".join(
                f"{k}={r[k]}"
                for k in (
                    "host",
                    "version",
                    "commit",
                    "start_time",
                    "end_time",
                    "first_row",
                    "records",
                )
                if r.get(k) not in (None, "")
            )
            lines.append(f"    run {r['run_name']}: {extra}".rstrip())
        if s.get("result_hashes") and len(s["result_hashes"]) > 1:
            lines.append(f"    MIXED result hashes: {s['result_hashes']}")
        if show_config and s.get("configuration"):
            lines.append("    configuration:")
            lines += [f"      {line}" for line in s["configuration"].splitlines()]
    return "\n".join(lines)


def without_defaults(shaping: dict[str, Any]) -> dict[str, Any]:
    """The result-shaping keys (``kernels.<name>.<key>``, ``reducers.<name>.<key>``) whose
    values differ from the default of their plug-in's parameter, the kinds, and every key of a
    plug-in not installed here."""
    kinds = {
        k.rsplit(".", 1)[0]: v for k, v in shaping.items() if k.endswith(".kind") and k != "kind"
    }
    defaults: dict[str, dict[str, Any]] = {}
    for table, kind in kinds.items():
        if table.startswith("kernels."):
            defaults[table] = _param_defaults("shmpipe.kernels", kind)
        elif table.startswith("reducers."):
            defaults[table] = _param_defaults("shmpipe.reducers", kind)
    defaults["sink"] = {"outputs": ["*"]}
    out = {}
    for key, value in shaping.items():
        table, _, name = key.rpartition(".")
        known = defaults.get(table)
        if name == "kind" or known is None or name not in known or not _same(known[name], value):
            out[key] = value
    return out


def _param_defaults(group: str, kind: str) -> dict[str, Any] | None:
    """The defaults of a plug-in's ``Params`` fields; None when the plug-in is not here."""
    from shmpipe.api.kernel import Kernel
    from shmpipe.api.reducer import Reducer
    from shmpipe.api.registry import PluginLookupError, resolve

    base = Reducer if group == "shmpipe.reducers" else Kernel
    try:
        cls = resolve(group, str(kind), base)
    except (PluginLookupError, ImportError, TypeError, ValueError):
        return None
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls.Params):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as stored: JSON has lists for tuples (and 1 == 1.0 in Python)."""

    def stored(v: Any) -> Any:
        return json.loads(json.dumps(v, default=str))

    return stored(a) == stored(b)
