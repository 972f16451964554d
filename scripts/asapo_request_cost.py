"""Cost of one request to the standalone ASAPO service: N broker reads (``GET .../0/1``) on one
keep-alive connection, N 1 KiB cache reads (op 6) on one receiver connection and N/20 1.6 MB
messages from one producer connection, against an in-process service. Prints wall and process
CPU (client and service together) per request.

Usage: ``PYTHONPATH=. python scripts/asapo_request_cost.py [N]``; give another tree's path
to compare two versions.
"""

import http.client
import socket
import struct
import sys
import tempfile
import time
import warnings

from shmpipe.asapo import AsapoService

warnings.simplefilter("ignore")
HEADER = struct.Struct("<B7xQQQ3Q1024s1024s10s6x")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
with AsapoService(data_dir=tempfile.mkdtemp()) as svc:
    host, port = "127.0.0.1", svc.port
    rport = svc.receiver_port
    s = socket.create_connection((host, rport))
    creds = b"processed%i%s%bt%auto%src%tok"
    s.sendall(HEADER.pack(7, 0, 0, len(creds), 0, 0, 0, b"", b"", b"v0.7") + creds)
    s.recv(1028, socket.MSG_WAITALL)
    s.sendall(HEADER.pack(2, 1, 1024, 2, 13, 0, 0, b"a.bin", b"s", b"v0.7") + b"{}" + b"x" * 1024)
    s.recv(1028, socket.MSG_WAITALL)
    rec = svc.store.records(("bt", "src"), "s")[0]
    conn = http.client.HTTPConnection(host, port)

    def http_reads():
        for _ in range(N):
            conn.request("GET", "/v0.7/beamtime/bt/src/s/0/1?token=tok")
            conn.getresponse().read()

    field = "i\u00a7s\u00a7bt\u00a7src\u00a7s".encode()
    c = socket.create_connection((host, rport))
    req = HEADER.pack(6, rec["buf_id"], 1024, 0, 13, 0, 0, b"", field, b"v0.1")

    def cache_reads():
        for _ in range(N):
            c.sendall(req)
            c.recv(1028 + 1024, socket.MSG_WAITALL)

    big = bytes(range(256)) * 6250  # 1.6 MB, a LAMBDA module's worth
    next_id = [2]

    def big_messages():
        for _ in range(N // 20):
            i = next_id[0]
            next_id[0] += 1
            name = f"f/{i}.bin".encode()
            s.sendall(HEADER.pack(2, i, len(big), 2, 13, 0, 0, name, b"s", b"v0.7") + b"{}")
            s.sendall(big)
            s.recv(1028, socket.MSG_WAITALL)

    for name, fn, n in (
        ("broker read", http_reads, N),
        ("cache read (1 KiB)", cache_reads, N),
        ("produce 1.6 MB", big_messages, N // 20),
    ):
        fn()  # warm
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        print(f"{name:20s} {dt / n * 1e6:7.1f} us wall  {dc / n * 1e6:7.1f} us cpu per request")
