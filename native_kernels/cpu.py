"""The CPU a process runs on, named as a speed figure or a cached engine choice must name it."""

from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU model, e.g. ``"AMD EPYC (family 25 model 1 stepping 1)"``.

    Read from ``/proc/cpuinfo`` (the ``model name``, ``cpu family``, ``model`` and
    ``stepping`` of the first CPU, as ``lscpu`` prints them); elsewhere ``platform``'s
    machine and processor strings.
    """
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU's block is enough
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    ids = [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    ids = [s.replace("cpu family", "family") for s in ids]
    return f"{name} ({' '.join(ids)})" if ids else name
