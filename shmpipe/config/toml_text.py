"""TOML text of a configuration, for ``shmpipe config show`` and the result files."""

from __future__ import annotations

import json
from typing import Any


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if v is None:
        return '""'
    return json.dumps(str(v))


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def to_toml(doc: dict[str, Any]) -> str:
    """Render the effective configuration as TOML (readable back by ``load_config``)."""
    out: list[str] = []
    for section in ("run", "detector", "ring", "metrics", "view", "tango", "source"):
        if section not in doc:
            continue  # a configuration recorded before the section existed
        out.append(f"[{section}]")
        out += [
            f"{_toml_key(k)} = {toml_value(v)}" for k, v in doc[section].items() if v is not None
        ]
        out.append("")
    for name, table in doc["kernels"].items():
        out.append(f"[kernels.{_toml_key(name)}]")
        out += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    for name, table in doc.get("reducers", {}).items():
        out.append(f"[reducers.{_toml_key(name)}]")
        out += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    for table in doc["sinks"]:
        out.append("[[sinks]]")
        out += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    return "\n".join(out)
