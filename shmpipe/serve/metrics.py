"""``GET /metrics``: the service's runs in the Prometheus text format, one series per run
(labelled with its name, recipe, beamtime, data source, version and state) and the node's
worker budget and queue."""

from __future__ import annotations

from typing import Any

_RUN_SERIES = (
    ("frames_in", "counter", "Messages taken from the source, over every start of the run"),
    ("frames_out", "counter", "Results and error records published"),
    ("errors", "counter", "Error records published"),
    ("restarts", "counter", "Times the run's pipeline died and was started again"),
    ("rate", "gauge", "Frames per second published, lately"),
    ("workers", "gauge", "Workers the run uses while it runs"),
)


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(runs: list[dict[str, Any]], max_workers: int) -> str:
    """The exposition text of ``runs`` (as the API shows them) and the node's budget."""
    out: list[str] = []
    running = [r for r in runs if r["state"] == "running"]
    node = (
        ("max_workers", "Workers all runs together may use", max_workers),
        ("workers_in_use", "Workers of the running runs", sum(r["workers"] for r in running)),
        ("queued_runs", "Runs waiting for workers", sum(r["state"] == "queued" for r in runs)),
        ("running_runs", "Runs running", len(running)),
    )
    for name, text, value in node:
        out += [f"# HELP shmpipe_serve_{name} {text}.", f"# TYPE shmpipe_serve_{name} gauge"]
        out.append(f"shmpipe_serve_{name} {value}")
    for key, kind, text in _RUN_SERIES:
        metric = f"shmpipe_serve_run_{key}" + ("_total" if kind == "counter" else "")
        out += [f"# HELP {metric} {text}.", f"# TYPE {metric} {kind}"]
        for r in runs:
            labels = ",".join(
                f'{k}="{_label(r[k])}"'
                for k in ("name", "recipe", "beamtime", "data_source", "version", "state")
            )
            out.append(f"{metric}{{{labels}}} {r[key]}")
    return "\n".join(out) + "\n"
