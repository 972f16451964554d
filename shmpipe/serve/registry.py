"""Running services on this machine, for ``shmpipe status``: each service describes itself in
``<run registry>/serve-<pid>.service`` (its URL and state file); ``status`` reads the state
file itself (SQLite, read-only), so it shows the runs even of a service that is busy."""

from __future__ import annotations

import json
import os
import sqlite3

import psutil

from shmpipe.observe.runs import registry_dir


class ServiceRecord:
    """This service's entry, removed at a clean exit (a stale one is skipped by pid)."""

    def __init__(self, url: str, state: str) -> None:
        self.path = registry_dir() / f"serve-{os.getpid()}.service"
        info = {"url": url, "state": state, "pid": os.getpid()}
        try:
            info["started"] = psutil.Process().create_time()
        except psutil.Error:
            info["started"] = 0.0
        self.path.write_text(json.dumps(info))

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def running_services() -> list[dict]:
    """Descriptions of the services running now (stale records are removed)."""
    out = []
    for path in sorted(registry_dir().glob("serve-*.service")):
        try:
            info = json.loads(path.read_text())
            alive = abs(psutil.Process(int(info["pid"])).create_time() - info["started"]) < 1
        except (OSError, ValueError, KeyError, psutil.Error):
            alive = False
        if alive:
            out.append(info)
        else:
            path.unlink(missing_ok=True)
    return out


def service_lines() -> list[str]:
    """``shmpipe status`` lines for every running service and its runs."""
    lines = []
    for info in running_services():
        lines.append(f"service {info['url']}  pid {info['pid']}  state {info['state']}")
        try:
            db = sqlite3.connect(f"file:{info['state']}?mode=ro", uri=True)
            rows = db.execute(
                "SELECT id, recipe, beamtime, data_source, version, state, frames_in, "
                "frames_out, errors, rate FROM runs ORDER BY id"
            ).fetchall()
            db.close()
        except sqlite3.Error as exc:
            lines.append(f"  cannot read its state: {exc}")
            continue
        lines.append(
            f"  {'id':>4s} {'run':40s} {'state':9s} {'in':>8s} {'out':>8s} {'errors':>7s} "
            f"{'frames/s':>9s}"
        )
        for rid, recipe, bt, ds, version, state, fin, fout, err, rate in rows:
            name = f"{recipe}.{bt}.{ds}" + (f"-r{version}" if version else "")
            lines.append(
                f"  {rid:4d} {name[:40]:40s} {state:9s} {fin:8d} {fout:8d} {err:7d} {rate:9.1f}"
            )
    return lines
