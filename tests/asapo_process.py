"""The ASAPO-compatible service as a separate process (``shmpipe asapo-standalone``), so that
pipelines forked by a test never inherit its threads or sockets."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A port with its successor free too (the service puts its receiver on port + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no pair of free ports")


class AsapoProcess:
    """Start, stop and restart the service on one port and one data folder."""

    def __init__(self, data_dir: Path, tokens: list[str] | None = None) -> None:
        self.data_dir, self.tokens = data_dir, tokens or []
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._seen = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "shmpipe",
            "asapo-standalone",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        for t in self.tokens:
            args += ["--token", t]
        self.log = open(self.data_dir.parent / f"asapo-{self.port}.log", "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        # The service prints its address once it listens: that line is the handshake.
        deadline = time.monotonic() + 30
        log_path = Path(self.log.name)
        while time.monotonic() < deadline:
            if f"server_name=127.0.0.1:{self.port}" in log_path.read_text()[self._seen :]:
                self._seen = len(log_path.read_text())
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)  # polling interval of a bounded wait
        raise RuntimeError(f"the ASAPO service did not start: {log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def produce(
    endpoint: str,
    beamtime: str,
    frames: int,
    streams: list[str],
    module_shape: list[int],
    *,
    rate: float = 0.0,
    finish: bool = True,
) -> subprocess.Popen:
    """Run the demo producer script (the real asapo_producer) in its own process."""
    repo = Path(__file__).resolve().parents[1]
    return subprocess.Popen(
        [
            sys.executable,
            str(repo / "scripts" / "asapo_produce.py"),
            "--endpoint",
            endpoint,
            "--beamtime",
            beamtime,
            "--frames",
            str(frames),
            "--streams",
            ",".join(streams),
            "--rate",
            str(rate),
            "--module-shape",
            ",".join(map(str, module_shape)),
            *([] if finish else ["--no-finish"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
