"""AsapoProcess: the service in a child process (``python -m shmpipe.asapo``).

For tests that must not share the GIL with the service, or that crash it: :meth:`kill` sends
SIGKILL, and :meth:`start` brings it back on the same ports and data folder — what a node
sees when ASAPO dies and is restarted. Its output (log lines) goes to a temporary file, read
back for the start-up line and kept for :meth:`output` when a test needs to show it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import shmpipe
from shmpipe.asapo.handle import ServiceHandle

_READY = re.compile(r"server_name=(\S+):(\d+) receiver=(\S+):(\d+) data_dir=(.+)$", re.M)
_PACKAGE_ROOT = str(Path(shmpipe.__file__).resolve().parents[1])


class AsapoProcess(ServiceHandle):
    """Run, stop, kill and restart the service as a child process.

    Parameters
    ----------
    data_dir
        Persistent data folder, or ``None`` (memory only: a restart starts empty).
    tokens
        As for :class:`~shmpipe.asapo.service.AsapoService`.
    host
        Listen address.
    start_timeout
        Seconds to wait for the child's start-up line.
    log_level
        The child's ``--log-level``.
    extra_args
        More options for the command line (e.g. ``["--idle-timeout", "1"]``).
    cli
        Start it as ``python -m shmpipe asapo-standalone`` instead of ``python -m shmpipe.asapo``
        (the two commands share their options; a test of the console command uses this).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        tokens: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
        log_level: str = "WARNING",
        extra_args: Iterable[str] = (),
        cli: bool = False,
    ) -> None:
        self.command = ["shmpipe", "asapo-standalone"] if cli else ["shmpipe.asapo"]
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.host = self.advertise_host = host  # the clients connect to the listen address
        self.port = 0
        self.receiver_port = 0
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self.data_dir: Path | None = self._given_data_dir
        self._token_args: list[str] = []
        if tokens is not None:
            items = tokens.items() if isinstance(tokens, Mapping) else ((t, ["*"]) for t in tokens)
            for token, beamtimes in items:
                self._token_args += ["--token", f"{token}={','.join(beamtimes)}"]
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        fd, self._log_path = tempfile.mkstemp(prefix="shmpipe-asapo-", suffix=".log")
        os.close(fd)

    @property
    def running(self) -> bool:
        """Whether the child is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self.running else None

    def start(self) -> AsapoProcess:
        """Start the child (on the ports of the previous start, if any) and wait until ready."""
        if self.running:
            raise RuntimeError("service process already running")
        cmd = [
            sys.executable,
            "-m",
            *self.command,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--receiver-port",
            str(self.receiver_port),
            "--log-level",
            self.log_level,
            *self._token_args,
            *self.extra_args,
        ]
        if self._given_data_dir is not None:
            cmd += ["--data-dir", str(self._given_data_dir)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        start_at = len(self._output_bytes())
        # the child gets its own append-mode description of the log: no shared file offset
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while True:
            ready = _READY.search(self._output_bytes()[start_at:].decode("utf-8", "replace"))
            if ready:
                break
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ASAPO service process did not start:\n{self.output()}")
            time.sleep(0.02)
        self.port, self.receiver_port = int(ready[2]), int(ready[4])
        self.data_dir = Path(ready[5].strip())
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait: a clean shutdown (idempotent)."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                raise RuntimeError("ASAPO service process ignored SIGTERM") from None
        self._proc = None

    def kill(self) -> None:
        """SIGKILL and wait: a crash. Whatever the clients were told is stored survives."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def output(self) -> str:
        """Everything the child printed so far."""
        return self._output_bytes().decode("utf-8", "replace")

    def _output_bytes(self) -> bytes:
        try:
            with open(self._log_path, "rb") as log:
                return log.read()
        except FileNotFoundError:
            return b""

    def close(self) -> None:
        """Stop the child and remove its output file (idempotent)."""
        self.stop()
        Path(self._log_path).unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        self.close()
