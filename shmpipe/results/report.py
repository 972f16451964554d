"""``shmpipe results``: what a results file or an ASAPO output stream holds, as text."""

from __future__ import annotations

from typing import Any


def format_description(doc: dict[str, Any], show_config: bool = False) -> str:
    """Render ``describe_file`` / ``describe_asapo`` output for a terminal."""
    lines = [doc["origin"]]
    if doc.get("creator"):
        lines.append(f"  written by {doc['creator']}, result hash {doc.get('result_hash', '')}")
    shaping = doc.get("result_config") or {}
    if shaping:
        lines.append("  result-shaping configuration:")
        lines += [f"    {k} = {v}" for k, v in shaping.items() if k != "kernels"]
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
