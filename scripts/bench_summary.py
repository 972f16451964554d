"""Markdown table of several ``shmpipe bench`` reports: each goal per run, and the median.

    for i in 1 2 3; do shmpipe bench --workers 1,2 --output run$i; done
    python scripts/bench_summary.py run1/report.json run2/report.json run3/report.json

The machine row is the speedup two CPU-bound processes got over one, measured beside the
scaling runs: on a shared machine it bounds the pipeline's own speedup.
"""

from __future__ import annotations

import argparse
import json
import statistics


def summary(reports: list[dict]) -> str:
    """The goals of every report side by side, with medians."""
    n = len(reports)
    head = "| goal | " + " | ".join(f"run {i + 1}" for i in range(n)) + " | median | target | met |"
    lines = [
        "Runs: " + ", ".join(f"{i + 1}: {r['meta']['date']}" for i, r in enumerate(reports)),
        "",
        head,
        "|---|" + "---:|" * (n + 1) + "---|---|",
    ]
    for k, g in enumerate(reports[0]["goals"]):
        vals = [r["goals"][k]["measured"] for r in reports]
        med = statistics.median(vals)
        op, target = g["target"].split()
        met = med >= float(target) if op == ">=" else med <= float(target)
        lines.append(
            f"| {g['goal']} | " + " | ".join(f"{v:.3g}" for v in vals)
            + f" | **{med:.3g}** | {g['target']} | {'yes' if met else 'no'} |"
        )  # fmt: skip
    rows = {
        "machine: 2 CPU-bound processes / 1": lambda r: r["scaling"]["machine"][-1]["cpu_speedup"],
        "model: frames/s of a 16-core node": lambda r: r["model"]["predicted_fps"],
        "model: nodes for a 2 kHz LAMBDA 9M": lambda r: r["model"]["nodes_for_detector"],
    }
    for name, get in rows.items():
        vals = [get(r) for r in reports]
        lines.append(
            f"| {name} | " + " | ".join(f"{v:.3g}" for v in vals)
            + f" | **{statistics.median(vals):.3g}** | | |"
        )  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="report.json files")
    args = ap.parse_args()
    reports = []
    for path in args.reports:
        with open(path) as f:
            reports.append(json.load(f))
    print(summary(reports), end="")


if __name__ == "__main__":
    main()
