"""Measure what hostile clients on the same node do to the standalone ASAPO service.

Starts ``python -m shmpipe.asapo`` (from whatever ``shmpipe`` is on ``PYTHONPATH``, so two
versions can be compared) with a token and a data folder, then, on loopback only:

* sends 20 unauthenticated headers each claiming 1 GiB of metadata, and reports the
  service's resident memory before and after;
* opens 250 idle connections to the receiver and reports memory again;
* sends one message with id 2**61 and times ``GET .../nacks?to=200000000`` and
  ``to=2**62`` (each bounded by a 30 s client timeout), and a broker read made meanwhile;
* connects 200 sockets from 8 threads at once and reports the p50/p99/max connect time.

Usage: ``PYTHONPATH=. python scripts/asapo_hostile_probe.py``.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import psutil

HEADER = struct.Struct("<B7xQQQ3Q1024s1024s10s6x")
RESPONSE = 1028
TOKEN = "probe-token"


def header(op: int, data_id=0, size=0, meta=0, custom=(0, 0, 0), msg=b"", stream=b"s") -> bytes:
    return HEADER.pack(op, data_id, size, meta, *custom, msg, stream, b"v0.7")


def start(data_dir: str) -> tuple[subprocess.Popen, str, str]:
    cmd = [sys.executable, "-m", "shmpipe.asapo", "--port", "0", "--data-dir", data_dir,
           "--token", TOKEN, "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"server_name=(\S+) receiver=(\S+)", line)
        if found:
            return proc, found[1], found[2]
    raise RuntimeError("service did not start")


def addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def timed_get(server: str, path: str, timeout: float = 30.0) -> str:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(*addr(server), timeout=timeout)
    try:
        conn.request("GET", path)
        status = conn.getresponse().status
        return f"HTTP {status} in {time.monotonic() - t0:.3f} s"
    except OSError as exc:
        return f"{type(exc).__name__} after {time.monotonic() - t0:.1f} s"
    finally:
        conn.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        proc, server, receiver = start(data_dir)
        try:
            pid = proc.pid
            print(f"service rss at start:                 {rss_mib(pid):8.0f} MiB")
            socks = []
            for _ in range(20):
                s = socket.create_connection(addr(receiver), timeout=5)
                s.sendall(header(2, 1, 0, 1 << 30, (13, 0, 0)))
                socks.append(s)
            time.sleep(1.0)  # let the service act on what it was sent
            print(f"after 20 headers claiming 1 GiB:      {rss_mib(pid):8.0f} MiB")
            for s in socks:
                s.close()
            idle = [socket.create_connection(addr(receiver), timeout=5) for _ in range(250)]
            time.sleep(1.0)
            print(f"with 250 idle receiver connections:   {rss_mib(pid):8.0f} MiB")
            for s in idle:
                s.close()
            # one message with a huge id from an authorized producer
            with socket.create_connection(addr(receiver), timeout=10) as s:
                creds = f"processed%i%s%bt%auto%src%{TOKEN}".encode()
                s.sendall(header(7, meta=len(creds)) + creds)
                s.recv(RESPONSE, socket.MSG_WAITALL)
                for id_ in (1, 1 << 61):
                    s.sendall(header(2, id_, 1, 2, (13, 0, 0), f"f{id_}".encode()) + b"{}x")
                    s.recv(RESPONSE, socket.MSG_WAITALL)
            base = f"/v0.7/beamtime/bt/src/s/g/nacks?token={TOKEN}"
            read_path = f"/v0.7/beamtime/bt/src/s/0/1?token={TOKEN}"
            meanwhile: list[str] = []

            def read_meanwhile() -> None:
                time.sleep(0.2)  # sent while the nacks request is being served
                meanwhile.append(timed_get(server, read_path))

            reader = threading.Thread(target=read_meanwhile)
            reader.start()
            answer = timed_get(server, base + "&to=200000000")
            print(f"nacks to=200000000:                   {answer}")
            reader.join()
            print(f"  a broker read sent meanwhile:       {meanwhile[0]}")
            answer = timed_get(server, base + f"&to={1 << 62}")
            print(f"nacks to=2**62:                       {answer}")
            times: list[float] = []
            lock = threading.Lock()
            held: list[socket.socket] = []

            def burst() -> None:
                for _ in range(25):
                    t0 = time.monotonic()
                    s = socket.create_connection(addr(server), timeout=10)
                    with lock:
                        times.append(time.monotonic() - t0)
                        held.append(s)

            threads = [threading.Thread(target=burst) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for s in held:
                s.close()
            times.sort()
            print(
                f"200 concurrent connects: p50 {times[99] * 1e3:.1f} ms, "
                f"p99 {times[197] * 1e3:.1f} ms, max {times[-1] * 1e3:.1f} ms"
            )
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
