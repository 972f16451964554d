"""What this process may use of the machine: cores (affinity and cgroup quota).

``shmpipe run`` warns before starting when the configuration asks for more workers than there
are cores to run them: the extra workers only share the cores (and each holds its slots of
shared memory), so throughput does not grow and latency does.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("shmpipe.resources")

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Cores:
    """Cores this process may run on.

    Attributes
    ----------
    affinity : int
        CPUs in this process's affinity mask (``taskset``, cpusets).
    quota : float or None
        The cgroup CPU quota in cores (``cpu.max``: a container's ``--cpus``); None if unlimited.
    """

    affinity: int
    quota: float | None = None

    @property
    def usable(self) -> int:
        """Whole cores the workers can keep busy at once."""
        if self.quota is None:
            return self.affinity
        return max(1, min(self.affinity, math.floor(self.quota)))

    def describe(self) -> str:
        text = f"{self.affinity} CPUs in this process's affinity"
        if self.quota is not None:
            text += f", a cgroup quota of {self.quota:g} cores"
        return text


def _cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2: one unified hierarchy
            f = root / rel / "cpu.max"
            try:
                quota, period = f.read_text().split()[:2]
            except (OSError, ValueError):
                continue
            if quota != "max":
                return int(quota) / int(period)
        elif "cpu" in controllers.split(","):
            d = root / "cpu,cpuacct" / rel
            if not d.exists():
                d = root / "cpu" / rel
            try:
                quota_us = int((d / "cpu.cfs_quota_us").read_text())
                period_us = int((d / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if quota_us > 0 and period_us > 0:
                return quota_us / period_us
    return None


def available_cores() -> Cores:
    """The cores available to this process: its affinity and its cgroup's quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    return Cores(affinity, _cgroup_quota())


def oversubscription_warning(workers: int, cores: Cores) -> str:
    """A warning when ``workers`` exceed the usable cores; ``""`` when they fit."""
    if workers <= cores.usable:
        return ""
    return (
        f"run.workers = {workers} but this process can use {cores.usable} cores "
        f"({cores.describe()}): the extra workers share them and each holds its slots of "
        f"shared memory; --workers {cores.usable} is usually as fast"
    )


def warn_about_resources(workers: int) -> None:
    """Log the oversubscription warning, if any (called before anything starts)."""
    text = oversubscription_warning(workers, available_cores())
    if text:
        log.warning("%s", text)
