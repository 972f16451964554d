"""RunRegistry: which pipelines are running on this machine, found by ``run.name``.

Each running supervisor holds an exclusive ``flock`` on ``<name>.lock`` and describes itself
in ``<name>.json``. The lock dies with the process, whatever kills it, so a record whose lock
can be taken belongs to a dead run and is removed (at the next start, or by ``shmpipe clean``).
The rings themselves are nameless memfd regions and cannot outlive their processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def registry_dir() -> Path:
    base = os.environ.get("SHMPIPE_RUN_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"shmpipe-{os.getuid()}"
    )
    path = Path(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class RunNameInUse(RuntimeError):
    pass


class RunRecord:
    """This process's entry in the registry, held for the life of the run."""

    def __init__(self, name: str) -> None:
        self.name = name
        d = registry_dir()
        self.lock_path, self.info_path = d / f"{name}.lock", d / f"{name}.json"
        self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            info = read_info(self.info_path)
            raise RunNameInUse(
                f"run name {name!r} is in use by a running pipeline (pid {info.get('pid', '?')}); "
                "choose another with --set run.name=..."
            ) from None

    def describe(self, info: dict[str, Any]) -> None:
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.info_path)

    def release(self) -> None:
        for p in (self.info_path, self.lock_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        os.close(self._fd)


def read_info(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _is_live(lock_path: Path) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def live_runs() -> list[dict[str, Any]]:
    """Descriptions of the pipelines running now."""
    out = []
    for info_path in sorted(registry_dir().glob("*.json")):
        if _is_live(info_path.with_suffix(".lock")):
            info = read_info(info_path)
            if info:
                out.append(info)
    return out


def sweep_stale() -> list[str]:
    """Remove the records of dead runs; return a sentence for each one removed."""
    removed = []
    d = registry_dir()
    names = {p.stem for p in d.glob("*.lock")} | {p.stem for p in d.glob("*.json")}
    for name in sorted(names):
        lock = d / f"{name}.lock"
        if _is_live(lock):
            continue
        info = read_info(d / f"{name}.json")
        for p in (d / f"{name}.json", lock, d / f"{name}.tmp"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        removed.append(f"removed the record of dead run {name!r} (pid {info.get('pid', '?')})")
    # Named segments of ours in /dev/shm: the rings are nameless, so any found here come from
    # outside this version (or a foreign tool using our prefix) and are reported, not touched.
    shm = Path("/dev/shm")
    if shm.is_dir():
        for p in shm.glob("shmpipe*"):
            removed.append(f"note: {p} exists but shmpipe creates no named segments; left alone")
    return removed
