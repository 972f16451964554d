"""Provenance of a run: what made a result, so that results made otherwise are never mixed.

Two things are recorded with every result. The *provenance* says who made it (shmpipe version,
the git commit when shmpipe runs from a git checkout or was installed from one, host, start
time). The *result-shaping configuration* is the part of the configuration that decides what a
result row holds: the source kind and the kernel chain with every kernel's parameters. Worker
counts, ring sizes, ports, commit intervals and the source's connection settings change how fast
results come, never what they are, so a run may be resumed with other values of those.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "shmpipe"


@cache
def version() -> str:
    """The installed shmpipe version ("unknown" when running from an uninstalled tree)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


@cache
def git_commit() -> str:
    """The commit shmpipe runs from, or "" when that cannot be known.

    A checkout (or an editable install of one) answers ``git rev-parse``, with ``-dirty`` when
    it has uncommitted changes; an install from a git URL records the commit in the
    distribution's ``direct_url.json``.
    """
    src = Path(__file__).resolve().parent
    try:
        # Only a checkout that tracks this very file: not some repository the install sits in.
        tracked = subprocess.run(
            ["git", "-C", str(src), "ls-files", "--error-unmatch", Path(__file__).name],
            capture_output=True,
            timeout=5,
        )
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if tracked.returncode == 0 and out.returncode == 0 and out.stdout.strip():
            commit = out.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        text = metadata.distribution(PACKAGE).read_text("direct_url.json") or "{}"
        return json.loads(text).get("vcs_info", {}).get("commit_id", "")
    except (metadata.PackageNotFoundError, ValueError):
        return ""


def iso_time(t: float) -> str:
    """Unix seconds as an ISO 8601 string with the UTC offset (NeXus ``NX_DATE_TIME``)."""
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="milliseconds")


def host() -> str:
    return socket.gethostname()


def result_shaping(effective: dict[str, Any]) -> dict[str, Any]:
    """The keys of an effective configuration that decide what a result row holds, flattened.

    Parameters
    ----------
    effective : dict
        ``PipelineConfig.effective()``.

    Returns
    -------
    dict
        Dotted keys (``kernels.integrate.npt``, ``detector.geometry``,
        ``reducers.avg.every``) to values, plus
        ``kernels`` (the chain order) and ``source.kind``.
    """
    out: dict[str, Any] = {
        "source.kind": effective["source"]["kind"],
        "kernels": list(effective["kernels"]),
    }
    for name, table in effective["kernels"].items():
        for key, value in table.items():
            out[f"kernels.{name}.{key}"] = value
    # The run's detector places every pixel (absent from configurations that declare none).
    for key, value in effective.get("detector", {}).items():
        out[f"detector.{key}"] = value
    for name, table in effective.get("reducers", {}).items():
        for key, value in table.items():
            out[f"reducers.{name}.{key}"] = value
    return out


SECRET_KEYS = frozenset({"token"})
REDACTED = "<redacted>"


def without_secrets(value: Any) -> Any:
    """A copy of a configuration with every secret (an ASAPO ``token``) replaced.

    Result files and output streams are read by many more people than the beamtime's token
    should reach, so what they record of the configuration never holds one. An empty value
    stays empty: it tells a reader that no token was set.
    """
    if isinstance(value, dict):
        return {
            k: (REDACTED if k in SECRET_KEYS and v else without_secrets(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def result_hash(shaping: dict[str, Any]) -> str:
    """A short hash of a result-shaping configuration (``result_shaping``)."""
    raw = json.dumps(shaping, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two result-shaping configurations, sorted."""
    norm = lambda d: json.loads(json.dumps(d, default=str))  # noqa: E731 - tuples vs lists
    a, b = norm(a), norm(b)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def describe_difference(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """``kernels.integrate.npt: 1000 -> 500, ...`` for the keys that differ."""
    keys = differing_keys(old, new)
    parts = [
        f"{k}: {json.dumps(old.get(k, '<unset>'), default=str)} -> "
        f"{json.dumps(new.get(k, '<unset>'), default=str)}"
        for k in keys[:limit]
    ]
    if len(keys) > limit:
        parts.append(f"... {len(keys) - limit} more")
    return ", ".join(parts)


def run_uid() -> str:
    """An id unique to one run of the supervisor (a restarted publisher keeps it)."""
    return f"{host()}-{os.getpid()}-{os.urandom(4).hex()}"
