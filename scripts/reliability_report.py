#!/usr/bin/env python
"""Run the fault scenarios of the reliability suite and print the figures as a table.

    python scripts/reliability_report.py            # short runs (a few minutes)
    python scripts/reliability_report.py --soak     # long runs
    python scripts/reliability_report.py --only sigkill,poison

Columns: faults injected; frames lost (expected ids never published nor recorded as an
error); duplicates (ids stored twice); hangs (runs the hang guard had to stop); the longest
recovery, in seconds: for a killed worker, until its replacement is ready; for a retried
frame, from the fault to the frame's publication (the watchdog's wait included); for a
stalled or restarted ASAPO service, from its return to the next message pulled; for a
killed dispatcher or publisher, from the kill to the end of the run (sim source) or to the
restarted run's first published frame (ASAPO).

The scenarios are ``tests/faults.py``; the ASAPO ones run only where ``asapo_consumer`` is
installed. Every scenario runs in a fresh temporary folder, removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from tests import faults  # noqa: E402 - after the path is set


def scenarios(soak: bool) -> list[tuple[str, Callable[[Path], faults.Figures]]]:
    """(key, run) for every scenario, sized for ``--soak`` or for a short report."""
    frames = 20_000 if soak else 600
    long_frames = 100_000 if soak else 5_000
    out: list[tuple[str, Callable[[Path], faults.Figures]]] = [
        ("sigkill", lambda d: faults.random_sigkill(d, frames=frames, every=25)),
        ("hang", lambda d: faults.crash_kernel(d, "hang", [4, 9], once=True, watchdog_s=1.5)),
        (
            "hang",
            lambda d: faults.crash_kernel(d, "sigstop", [4, 9], once=True, watchdog_s=1.5),
        ),
        (
            "hang",
            lambda d: faults.crash_kernel(d, "sigstop", [5], once=False, watchdog_s=1.5),
        ),
        ("hang", lambda d: faults.stopped_worker(d)),
        ("poison", lambda d: faults.crash_kernel(d, "raise", [3, 7, 11], once=False)),
        ("poison", lambda d: faults.crash_kernel(d, "abort", [3, 7, 11], once=False)),
        ("poison", lambda d: faults.crash_kernel(d, "segfault", [3, 7, 11], once=False)),
        ("poison", lambda d: faults.crash_kernel(d, "sigkill", [3, 7, 11], once=True)),
        ("death", lambda d: faults.process_death(d, "dispatcher")),
        ("death", lambda d: faults.process_death(d, "publisher")),
        ("sigterm", lambda d: faults.sigterm_under_load(d)),
        ("long", lambda d: faults.long_run(d, frames=long_frames, error_every=1000)),
    ]
    try:
        import asapo_consumer  # noqa: F401
    except ImportError:
        print("asapo_consumer is not installed: the ASAPO scenarios are left out", file=sys.stderr)
        return out
    out += [
        ("asapo", lambda d: _with_service(d, lambda s: faults.asapo_stall(s, d))),
        ("asapo", lambda d: _with_service(d, lambda s: faults.asapo_restart(s, d))),
        (
            "asapo",
            lambda d: _with_service(d, lambda s: faults.asapo_role_death(s, d, "dispatcher")),
        ),
        (
            "asapo",
            lambda d: _with_service(d, lambda s: faults.asapo_role_death(s, d, "publisher")),
        ),
        ("asapo", lambda d: _with_service(d, lambda s: faults.asapo_group_kill(s, d))),
    ]
    return out


def _with_service(tmp: Path, run: Callable) -> faults.Figures:
    from shmpipe.asapo.process import AsapoProcess

    with AsapoProcess(tmp / "asapo-data") as service:
        return run(service)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak", action="store_true", help="the long runs")
    ap.add_argument("--only", default="", help="comma-separated scenario keys to run")
    args = ap.parse_args(argv)
    only = {k for k in args.only.split(",") if k}
    os.environ.setdefault("SHMPIPE_RUN_DIR", tempfile.mkdtemp(prefix="shmpipe-report-runs-"))
    rows: list[faults.Figures] = []
    failed = 0
    t0 = time.monotonic()
    for key, run in scenarios(args.soak):
        if only and key not in only:
            continue
        with tempfile.TemporaryDirectory(prefix="shmpipe-report-") as d:
            figures = run(Path(d))
        rows.append(figures)
        print(f"  {figures.scenario}: exit {figures.exit_code}", file=sys.stderr)
        failed += bool(figures.lost or figures.duplicates or figures.hangs)
    print(
        f"shmpipe reliability report ({'soak' if args.soak else 'short'}; "
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{time.monotonic() - t0:.0f} s)\n"
    )
    print(faults.table(rows))
    for f in rows:
        if "in_flight" in f.details:
            print(
                f"\n{f.scenario}: {f.details['in_flight']} frames were in flight; the sim "
                "source cannot redeliver them (with ASAPO they come back: the rows below)"
            )
        if "growth" in f.details:
            print(
                f"\n{f.scenario}: largest growth of any process's resident memory between "
                f"25 % and 95 % of the frames {100 * f.details['growth']:.1f} %, of its open "
                f"files {f.details['fd_growth']:+d}; {f.details['errors']} error records for "
                f"{f.details['expected_errors']} bad frames"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
