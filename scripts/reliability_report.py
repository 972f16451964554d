#!/usr/bin/env python
"""Run the reliability tests and print the figures of their fault scenarios as a table.

    python scripts/reliability_report.py               # the CI versions (a few minutes)
    python scripts/reliability_report.py --soak        # with the long runs
    python scripts/reliability_report.py -k sigkill    # a subset (pytest's -k expression)

It runs ``pytest tests/test_reliability.py tests/test_replacement.py`` with
``$SHMPIPE_FAULT_FIGURES`` naming a file, where every fault scenario appends its figures as a
JSON line, then prints one table row per scenario run. Columns: faults injected; frames lost
(expected ids never published nor recorded as an error); duplicates (ids stored twice); hangs
(runs a guard had to stop: the test without a watchdog expects one); the longest recovery, in
seconds: for a killed worker, until its replacement is ready; for a retried frame, from the
fault to the frame's publication (the watchdog's wait included); for a stalled or restarted
ASAPO service, from its return to the next message pulled; for a killed dispatcher or
publisher, until its replacement is ready; for the whole group killed while writing HDF5, the
last resume's run time.

The verdict is the tests': the exit status is pytest's. The ASAPO scenarios run only where
``asapo_consumer`` is installed (pytest skips them otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES_ENV = "SHMPIPE_FAULT_FIGURES"
TEST_FILES = ["tests/test_reliability.py", "tests/test_replacement.py"]
HEADER = ["scenario", "faults injected", "frames lost", "duplicates", "hangs", "longest recovery s"]


def row(figures: dict) -> list[str]:
    """The table cells of one scenario's figures."""
    recovery = figures["longest_recovery_s"]
    return [
        figures["scenario"],
        str(figures["faults"]),
        str(figures["lost"]) if figures["lost"] >= 0 else "n/a",
        str(figures["duplicates"]),
        str(figures["hangs"]),
        f"{recovery:.3f}" if recovery is not None else "-",
    ]


def table(rows: list[dict]) -> str:
    """A Markdown table of the figures."""
    cells = [HEADER, *[row(f) for f in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADER))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def notes(rows: list[dict]) -> list[str]:
    """The details a table row cannot show: frames in flight, memory and file growth."""
    out = []
    for f in rows:
        d = f["details"]
        if "in_flight" in d:
            out.append(
                f"{f['scenario']}: {d['in_flight']} frames were in flight; the sim source "
                "cannot redeliver them (with ASAPO they come back)"
            )
        if "growth" in d:
            out.append(
                f"{f['scenario']}: largest growth of any process's resident memory between "
                f"25 % and 95 % of the frames {100 * d['growth']:.1f} %, of its open files "
                f"{d['fd_growth']:+d}; {d['errors']} error records for "
                f"{d['expected_errors']} bad frames"
            )
    return out


def run_tests(figures: Path, soak: bool, select: str) -> int:
    """Run the reliability tests (their output to stderr) with the figures file set."""
    env = dict(os.environ)
    env[FIGURES_ENV] = str(figures)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if "SHMPIPE_RUN_DIR" not in env:  # the runs' registry: not the user's
        env["SHMPIPE_RUN_DIR"] = str(figures.parent / "runs")
        Path(env["SHMPIPE_RUN_DIR"]).mkdir()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += [*TEST_FILES, *(["--soak"] if soak else [])]
    cmd += ["-k", select] if select else []
    return subprocess.run(cmd, cwd=REPO, env=env, stdout=sys.stderr, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak", action="store_true", help="with the long runs (pytest --soak)")
    ap.add_argument("-k", dest="select", default="", help="pytest -k expression: a subset")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="shmpipe-report-") as tmp:
        figures = Path(tmp) / "figures.jsonl"
        figures.touch()
        status = run_tests(figures, args.soak, args.select)
        rows = [json.loads(line) for line in figures.read_text().splitlines() if line]
    print(
        f"shmpipe reliability report ({'soak' if args.soak else 'short'}; "
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{time.monotonic() - t0:.0f} s; tests {'passed' if status == 0 else 'FAILED'})\n"
    )
    print(table(rows))
    for line in notes(rows):
        print(f"\n{line}")
    return status


if __name__ == "__main__":
    sys.exit(main())
