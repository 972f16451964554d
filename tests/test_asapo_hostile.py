"""Hostile input against the standalone ASAPO service, one test per defect of the hardening
issue: what a program on the same node could send to either port. Loopback only; every
wait is bounded."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings

import psutil
import pytest

from shmpipe.asapo import AsapoService
from shmpipe.asapo.limits import MAX_ID, Limits
from shmpipe.asapo.process import AsapoProcess
from shmpipe.asapo.protocol import NetworkError, Opcode
from shmpipe.asapo.testing import running_asapo
from tests import asapo_wire as wire
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(120)

GRANTS = {"tok1": ["bt1"], "tok2": ["bt2"]}
GIB = 1 << 30


def _silence_deprecations() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)


def _rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


# ---------------------------------------------------------------- 1. memory for anyone
def test_memory_stays_flat_under_giant_headers_idle_connections_and_big_bodies(tmp_path):
    with running_asapo(tmp_path / "d", tokens=GRANTS, in_process=False) as asapo:
        pid = asapo.service.pid
        before = _rss_mib(pid)
        # headers claiming 1 GiB of meta or payload, before and after a failed authorization
        for op, meta_size, data_size in [
            (Opcode.TRANSFER_DATA, GIB, 0),
            (Opcode.TRANSFER_DATA, 0, GIB),
            (Opcode.AUTHORIZE, GIB, 0),
            (Opcode.GET_BUFFER_DATA, GIB, 0),
        ] * 5:
            with wire.connect(asapo.receiver_address) as sock:
                sock.sendall(wire.header(op, 1, data_size, meta_size, (13, 0, 0)))
                resp = wire.read_response(sock)
                assert resp is not None and resp.error in (
                    NetworkError.AUTHORIZATION,
                    NetworkError.WRONG_REQUEST,
                )
                assert wire.closed_by_peer(sock)
        # an authorized producer cannot claim more than the limits either
        with wire.connect(asapo.receiver_address) as sock:
            assert wire.authorize(sock, "bt1", "src", "tok1").error == NetworkError.NO_ERROR
            sock.sendall(wire.header(Opcode.TRANSFER_DATA, 1, 64 * GIB, GIB, (13, 0, 0)))
            assert wire.read_response(sock).error == NetworkError.WRONG_REQUEST
        # an HTTP body announced as 1 GiB: 401 without a token, 413 with one; nothing is read
        path = "/v0.7/beamtime/bt1/src/s/g/1"
        big = "POST {}?token={} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n"
        assert (
            wire.status_of(wire.raw_http(asapo.server_name, big.format(path, "no", GIB).encode()))
            == 401
        )
        assert (
            wire.status_of(wire.raw_http(asapo.server_name, big.format(path, "tok1", GIB).encode()))
            == 413
        )
        # idle connections on both ports hold no buffers
        idle = [wire.connect(asapo.receiver_address) for _ in range(100)]
        idle += [wire.connect(asapo.server_name) for _ in range(100)]
        for sock in idle[:100]:  # authorized ones too
            wire.authorize(sock, "bt1", "src", "tok1")
        wait_for(lambda: len(psutil.Process(pid).threads()) > 200, 30, "200 handler threads")
        grown = _rss_mib(pid) - before
        for sock in idle:
            sock.close()
        assert grown < 100, f"service grew by {grown:.0f} MiB"


def _server(service: AsapoService, address: str):
    port = int(address.rsplit(":", 1)[1])
    return next(x for x in service._servers if x.server_address[1] == port)


@pytest.mark.parametrize("port", ["receiver", "http"])
def test_idle_connections_time_out_and_connections_are_capped(port):
    with AsapoService(limits=Limits(idle_timeout_s=0.5)) as service:
        address = service.receiver_address if port == "receiver" else service.server_name
        t0 = time.monotonic()
        with wire.connect(address) as sock:  # a slowloris: connects, never sends
            assert wire.closed_by_peer(sock)
        assert time.monotonic() - t0 < 5
        with wire.connect(address) as sock:  # half a request, then silence
            sock.sendall(b"GET /asapo-discovery/v0.1/vers" if port == "http" else b"\x07" * 100)
            assert wire.closed_by_peer(sock)
    with AsapoService(limits=Limits(max_connections=4, idle_timeout_s=60)) as service:
        address = service.receiver_address if port == "receiver" else service.server_name
        held = [wire.connect(address) for _ in range(4)]
        server = _server(service, address)
        wait_for(lambda: server.active_connections == 4, 5, "4 connections served")
        t0 = time.monotonic()
        with wire.connect(address) as extra:
            assert wire.closed_by_peer(extra)  # over the cap: closed as it arrives
        assert time.monotonic() - t0 < 5
        for sock in held:
            sock.close()
        wait_for(lambda: server.active_connections == 0, 5, "connections released")
        with wire.connect(address) as again:  # and the slots come back
            if port == "http":
                again.sendall(b"GET /asapo-discovery/v0.1/version HTTP/1.1\r\nHost: x\r\n\r\n")
                assert again.recv(12) == b"HTTP/1.1 200"
            else:
                assert wire.authorize(again, "bt", "src", "t").error == NetworkError.NO_ERROR


# ---------------------------------------------------------------- 2. payloads without a token
def test_no_payload_without_its_record(tmp_path):
    with running_asapo(tmp_path / "d", tokens=GRANTS, beamtime="bt1", token="tok1") as asapo:
        producer = asapo.producer("src")
        producer.send(1, "raw/1.bin", b"secret-bytes", stream="s")
        producer.wait_requests_finished(5000)
        (record,) = asapo.service.store.records(("bt1", "src"), "s")
        buf_id, size = record["buf_id"], record["size"]
        assert buf_id > 1 << 32  # not a counter a stranger could walk
        address = asapo.receiver_address
        # walking small ids with the right size finds nothing
        for guess in range(1, 64):
            resp, _ = wire.cache_read(address, guess, size, "bt1", "src")
            assert resp.error == NetworkError.NO_DATA
        # the right id, but named for another beamtime or data source, finds nothing
        for bt, src in (("bt2", "src"), ("bt1", "other")):
            resp, _ = wire.cache_read(address, buf_id, size, bt, src)
            assert resp.error == NetworkError.NO_DATA
        # a connection authorized for bt2 cannot read bt1's payload either
        with wire.connect(address) as sock:
            assert wire.authorize(sock, "bt2", "src", "tok2").error == NetworkError.NO_ERROR
            field = "i\u00a7s\u00a7bt1\u00a7src\u00a7s"
            sock.sendall(wire.header(Opcode.GET_BUFFER_DATA, buf_id, size, stream=field))
            assert wire.read_response(sock).error == NetworkError.NO_DATA
        # what the record (read with a token) names is served: the real consumer path
        resp, data = wire.cache_read(address, buf_id, size, "bt1", "src")
        assert resp.error == NetworkError.NO_ERROR and data == b"secret-bytes"
        data, _ = asapo.consumer("src").get_by_id(1, meta_only=False, stream="s")
        assert data.tobytes() == b"secret-bytes"


# ---------------------------------------------------------------- 3. one request freezes all
def test_nacks_over_a_huge_range_answer_at_once_while_the_service_serves():
    with running_asapo(tokens=GRANTS, beamtime="bt1", token="tok1") as asapo:
        producer = asapo.producer("src")
        for id_ in (1, 2, 1 << 61):  # one huge id: the numeric range is astronomically long
            producer.send(id_, f"raw/{id_}.bin", b"x", stream="s")
        producer.wait_requests_finished(5000)
        base = "/v0.7/beamtime/bt1/src/s/g/nacks?token=tok1"
        stop, reads = threading.Event(), []

        def reader() -> None:  # a broker read that must keep being served meanwhile
            while not stop.is_set():
                t0 = time.monotonic()
                status, _ = wire.http(
                    asapo.server_name, "GET", "/v0.7/beamtime/bt1/src/s/0/1?token=tok1"
                )
                reads.append((status, time.monotonic() - t0))

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for query in ("&from=0&to=0", f"&from=0&to={MAX_ID}", "&from=1&to=200000000"):
                t0 = time.monotonic()
                status, body = wire.http(asapo.server_name, "GET", base + query)
                assert status == 200 and time.monotonic() - t0 < 2.0
                assert json.loads(body)["unacknowledged"] in ([1, 2, 1 << 61], [1, 2])
            status, _ = wire.http(asapo.server_name, "GET", base + f"&to={1 << 63}")
            assert status == 400  # out of what the journal can hold: refused, not scanned
            consumer = asapo.consumer("src")
            _silence_deprecations()
            with pytest.raises(Exception):  # noqa: B017 - no complete dataset: end of stream
                consumer.get_next_dataset(consumer.generate_group_id(), min_size=1, stream="s")
        finally:
            stop.set()
            thread.join(10)
        assert reads and all(status == 200 and dt < 2.0 for status, dt in reads)


# ---------------------------------------------------------------- 4. beamtimes on disk
def _folder_token(server_name: str, beamtime: str, token: str, folder: str = "") -> tuple[int, str]:
    body = json.dumps({"Folder": folder, "BeamtimeId": beamtime, "Token": token}).encode()
    status, answer = wire.http(server_name, "POST", "/asapo-authorizer/v0.2/folder", body)
    return status, answer.decode()


def _transfer(
    server_name: str, folder_token: str, name: str, folder: str = ""
) -> tuple[int, bytes]:
    body = json.dumps({"Folder": folder, "FileName": name}).encode()
    headers = {"Cookie": f"Authorization=Bearer {folder_token}"}
    return wire.http(server_name, "POST", "/v0.2/transfer?token=x", body, headers)


def test_no_cross_beamtime_write_or_read(tmp_path):
    limits = Limits(folder_token_s=1.0)
    with AsapoService(data_dir=tmp_path / "d", tokens=GRANTS, limits=limits) as service:
        data_dir, server = service.data_dir, service.server_name
        with (
            wire.connect(service.receiver_address) as bt1,
            wire.connect(service.receiver_address) as bt2,
        ):
            assert wire.authorize(bt1, "bt1", "src", "tok1").error == NetworkError.NO_ERROR
            assert wire.authorize(bt2, "bt2", "src", "tok2").error == NetworkError.NO_ERROR
            assert wire.send_message(bt1, 1, "raw/file1.bin", b"bt1 data").error == 0
            # bt2 writes where bt1's file is, by every route a name offers
            (data_dir / "bt2").mkdir(exist_ok=True)
            (data_dir / "bt2" / "link").symlink_to(data_dir / "bt1")
            for i, name in enumerate(["../bt1/raw/file1.bin", "link/raw/file1.bin", "."], 2):
                assert wire.send_message(bt2, i, name, b"evil").error == NetworkError.WRONG_REQUEST
            assert wire.send_message(bt2, 9, "bt1/raw/file1.bin", b"bt2 data").error == 0
        assert (data_dir / "bt1" / "raw" / "file1.bin").read_bytes() == b"bt1 data"
        assert (data_dir / "bt2" / "bt1" / "raw" / "file1.bin").read_bytes() == b"bt2 data"
        # a folder token is issued only for the token's beamtime, and reads only there
        assert _folder_token(server, "bt1", "tok2")[0] == 401
        assert _folder_token(server, "bt2", "tok2", folder=str(data_dir / "bt1"))[0] == 401
        assert _folder_token(server, "bt2", "tok2", folder=str(data_dir / "bt2"))[0] == 200
        status, token2 = _folder_token(server, "bt2", "tok2")
        assert status == 200
        for name in ("../bt1/raw/file1.bin", "link/raw/file1.bin"):
            assert _transfer(server, token2, name)[0] == 400
        assert _transfer(server, token2, "raw/file1.bin")[0] == 404  # bt2 has no such file
        assert _transfer(server, token2, "bt1/raw/file1.bin") == (200, b"bt2 data")
        assert _transfer(server, token2, "bt1/raw/file1.bin", folder="/elsewhere")[0] == 401
        assert _transfer(server, token2[:-1], "bt1/raw/file1.bin")[0] == 401  # no substrings
        assert _transfer(server, token2 + "0", "bt1/raw/file1.bin")[0] == 401
        # and it expires
        wait_for(lambda: _transfer(server, token2, "bt1/raw/file1.bin")[0] == 401, 10, "expiry")


def test_real_consumers_fetch_files_by_folder_token_and_file_system(tmp_path):
    with running_asapo(
        tmp_path / "d",
        tokens=GRANTS,
        beamtime="bt1",
        token="tok1",
        cache_bytes=0,
        limits=Limits(folder_token_s=0.5),
    ) as asapo:
        producer = asapo.producer("src")
        for id_ in (1, 2):
            producer.send(id_, f"raw/{id_}.bin", b"frame-%d" % id_, stream="s")
        producer.wait_requests_finished(5000)
        assert (asapo.beamtime_dir() / "raw" / "1.bin").read_bytes() == b"frame-1"
        remote = asapo.consumer("src")  # cache miss -> folder token -> file transfer
        assert remote.get_by_id(1, meta_only=False, stream="s")[0].tobytes() == b"frame-1"
        folder_tokens = asapo.service._broker.folder_tokens
        wait_for(lambda: folder_tokens.live() == 0, 10, "the folder token to expire")
        # the client asks for a new folder token on the 401 and goes on
        assert remote.get_by_id(2, meta_only=False, stream="s")[0].tobytes() == b"frame-2"
        local = asapo.consumer("src", has_filesystem=True)  # source_path: the beamtime folder
        assert local.get_by_id(1, meta_only=False, stream="s")[0].tobytes() == b"frame-1"
        assert asapo.service.stats["file_transfers"] == 2


# ---------------------------------------------------------------- 5. one token syntax
def test_token_syntax_is_the_same_for_both_commands(tmp_path):
    from shmpipe.asapo import __main__ as module_main
    from shmpipe.asapo.command import add_arguments, token_grants
    from shmpipe.cli import build_parser

    token_file = tmp_path / "tokens"
    token_file.write_text("# beamline tokens\nfile-tok=bt3\n\n")
    argv = ["--token", "tok=bt1,bt2", "--token", "any", "--token-file", str(token_file)]
    cli_args = build_parser().parse_args(["asapo-standalone", *argv])
    import argparse

    module_parser = argparse.ArgumentParser()
    add_arguments(module_parser)
    module_args = module_parser.parse_args(argv)
    expected = {"tok": ["bt1", "bt2"], "any": ["*"], "file-tok": ["bt3"]}
    assert token_grants(cli_args) == token_grants(module_args) == expected
    assert module_main.add_arguments is add_arguments
    # and both commands serve with that meaning: tok=bt1 is scoped, not a literal token
    with AsapoProcess(tmp_path / "cli", tokens={"tok": ["bt1"]}, cli=True) as cli:
        path = "/v0.7/beamtime/{}/src/s/0/last?token={}"
        assert wire.http(cli.server_name, "GET", path.format("bt1", "tok"))[0] == 409  # empty
        assert wire.http(cli.server_name, "GET", path.format("bt2", "tok"))[0] == 401
        assert wire.http(cli.server_name, "GET", path.format("bt1", "tok=bt1"))[0] == 401
    with running_asapo(tokens={"tok": ["bt1"]}, in_process=False) as asapo:
        assert asapo.service._token_args == ["--token", "tok=bt1"]
        path = "/v0.7/beamtime/{}/src/s/0/last?token=tok"
        assert wire.http(asapo.server_name, "GET", path.format("bt1"))[0] == 409
        assert wire.http(asapo.server_name, "GET", path.format("bt2"))[0] == 401


# ---------------------------------------------------------------- 6. tokens in the log
def test_tokens_never_reach_the_log(tmp_path):
    secret = "s3cr3t-token-value"
    with running_asapo(
        tmp_path / "d", tokens={secret: ["bt1"]}, beamtime="bt1", token=secret, in_process=False
    ) as asapo:
        asapo.service.stop()
        asapo.service.log_level = "DEBUG"
        asapo.service.start()
        server = asapo.server_name
        status, folder_token = _folder_token(server, "bt1", secret)
        assert status == 200
        requests = [
            ("GET", f"/no/such/route?token={secret}", None, {}),
            ("GET", f"/v0.7/beamtime/bt1/src/s/g/nacks?token={secret}&to=abc", None, {}),
            ("POST", f"/v0.7/beamtime/bt1/src/s/g/1?token={secret}", b"[]", {}),
            (
                "POST",
                "/v0.2/transfer",
                b'{"FileName": "."}',
                {"Cookie": f"Authorization=Bearer {folder_token}"},
            ),
            ("GET", f"/v0.7/beamtime/bt1/src/s/0/last?token={secret}x", None, {}),
        ]
        for method, path, body, headers in requests:
            assert 400 <= wire.http(server, method, path, body, headers)[0] < 500
        raw = f"GARBAGE /?token={secret} HTTP/1.1\r\n\r\n".encode()
        assert wire.status_of(wire.raw_http(server, raw)) == 405
        raw = f"GET /?token={secret} HTTP/1.1 extra\r\n\r\n".encode()
        assert b"Error code: 400" in wire.raw_http(server, raw)  # no status line: bad syntax
        producer = asapo.producer("src")
        producer.send(1, "raw/1.bin", b"x", stream="s")
        producer.wait_requests_finished(5000)
        with wire.connect(asapo.receiver_address) as sock:
            assert wire.authorize(sock, "bt1", "src", secret + "-wrong").error != 0
        asapo.service.stop()  # flushes its log
        output = asapo.service.output()
    assert "GET /no/such/route" in output or "unhandled request" in output  # it did log
    assert secret not in output and folder_token not in output


# ---------------------------------------------------------------- 7. malformed input
MALFORMED = [
    ("POST", "/v0.7/beamtime/bt1/src/s/g/1?token=tok1", b"[]"),
    ("POST", "/v0.7/beamtime/bt1/src/s/g/1?token=tok1", b"null"),
    ("POST", "/v0.7/beamtime/bt1/src/s/g/1?token=tok1", b"[" * 100000),
    ("POST", "/v0.7/beamtime/bt1/src/s/g/1?token=tok1", b'{"Op": "negackmessage", "Params": []}'),
    (
        "POST",
        "/v0.7/beamtime/bt1/src/s/g/1?token=tok1",
        b'{"Op":"negackmessage","Params":{"DelayMs":"x"}}',
    ),
    (
        "POST",
        "/v0.7/beamtime/bt1/src/s/g/1?token=tok1",
        b'{"Op":"negackmessage","Params":{"DelayMs":1e300}}',
    ),
    ("POST", f"/v0.7/beamtime/bt1/src/s/g/{1 << 63}?token=tok1", b'{"Op":"ackmessage"}'),
    ("GET", f"/v0.7/beamtime/bt1/src/s/0/{1 << 64}?token=tok1", None),
    ("GET", "/v0.7/beamtime/bt1/src/s/g/nacks?token=tok1&from=-1", None),
    ("POST", f"/v0.7/beamtime/bt1/src/s/g/resetcounter?token=tok1&value={1 << 63}", None),
    ("GET", "/v0.7/beamtime/bt1/src/s/g/next?token=tok1&resend_nacks=true&delay_ms=1e9", None),
    ("POST", "/v0.7/beamtime/bt1/src/s/delete?token=tok1", b'{"ErrorOnNotExist": "no"}'),
    ("POST", "/v0.7/beamtime/bt1/src/s/delete?token=tok1", b"7"),
    ("POST", "/asapo-authorizer/v0.2/folder", b'{"BeamtimeId": ["bt1"], "Token": "tok1"}'),
    ("POST", "/asapo-authorizer/v0.2/folder", b"\xff\xfe"),
    ("POST", "/asapo-authorizer/v0.2/folder", b'{"BeamtimeId": "\\ud800", "Token": "\\ud800"}'),
    (
        "POST",
        "/asapo-authorizer/v0.2/folder",
        b'{"BeamtimeId": "bt1", "Token": "' + b"t" * 70000 + b'"}',
    ),
]


def test_malformed_requests_get_4xx_and_memory_and_journal_agree(tmp_path):
    with running_asapo(tmp_path / "d", tokens=GRANTS, beamtime="bt1", token="tok1") as asapo:
        producer = asapo.producer("src")
        for id_ in (1, 2):
            producer.send(id_, f"raw/{id_}.bin", b"x", stream="s")
        producer.wait_requests_finished(5000)
        consumer = asapo.consumer("src")
        group = consumer.generate_group_id()
        consumer.acknowledge(group, 1, stream="s")
        for method, path, body in MALFORMED:
            status, answer = wire.http(
                asapo.server_name, method, path.replace("/g/", f"/{group}/"), body
            )
            assert 400 <= status < 500, (path, body, status, answer)
            assert b"Traceback" not in answer and len(answer) < 2000
        bad_length = "POST /v0.7/creategroup HTTP/1.1\r\nContent-Length: abc\r\n\r\n"
        assert wire.status_of(wire.raw_http(asapo.server_name, bad_length.encode())) == 400
        many_headers = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"x" * 60000 + b"\r\n" + b"\r\n"
        assert wire.status_of(wire.raw_http(asapo.server_name, many_headers)) == 431
        # the producer side: ids the journal cannot hold and a "." file name
        with wire.connect(asapo.receiver_address) as sock:
            assert wire.authorize(sock, "bt1", "src", "tok1").error == 0
            for id_ in (1 << 63, (1 << 64) - 1):
                sock.sendall(
                    wire.header(Opcode.TRANSFER_DATA, id_, 1, 0, (13, 0, 0), "a", "s") + b"x"
                )
                assert wire.read_response(sock).error == NetworkError.WRONG_REQUEST
        with wire.connect(asapo.receiver_address) as sock:
            assert wire.authorize(sock, "bt1", "src", "tok1").error == 0
            assert wire.send_message(sock, 3, ".", b"x").error == NetworkError.WRONG_REQUEST
            assert (
                wire.send_message(sock, 4, "ok.bin", b"x", meta=b"[" * 5000).error
                == NetworkError.WRONG_REQUEST
            )
            assert wire.send_message(sock, 5, "ok.bin", b"y").error == 0  # still in step
        store = asapo.service.store
        before = (
            [r["_id"] for r in store.records(("bt1", "src"), "s")],
            store.unacknowledged(("bt1", "src"), "s", group),
            store.last_ack(("bt1", "src"), "s", group),
        )
        assert before == ([1, 2, 5], [2, 5], 1)
        asapo.restart()
        store = asapo.service.store
        after = (
            [r["_id"] for r in store.records(("bt1", "src"), "s")],
            store.unacknowledged(("bt1", "src"), "s", group),
            store.last_ack(("bt1", "src"), "s", group),
        )
        assert after == before  # memory and disk agree


# ---------------------------------------------------------------- 9. minor
def test_part_leftovers_removed_and_files_created_0640(tmp_path):
    data_dir = tmp_path / "d"
    leftover = data_dir / "bt1" / "raw" / "1.bin.4711.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a frame")
    keep = data_dir / "bt1" / "raw" / "notes.part"  # not one of ours
    keep.write_bytes(b"user file")
    old_umask = os.umask(0)  # the process umask must not decide who can read the data
    try:
        with running_asapo(data_dir, beamtime="bt1") as asapo:
            assert not leftover.exists() and keep.exists()
            producer = asapo.producer("src")
            producer.send(1, "raw/1.bin", b"frame", stream="s")
            producer.wait_requests_finished(5000)
            assert (data_dir / "bt1" / "raw" / "1.bin").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old_umask)


def test_a_burst_of_connects_is_queued_not_dropped():
    with AsapoService() as service:
        host, port = wire.split(service.server_name)
        server = _server(service, service.server_name)
        assert server.request_queue_size >= 128
        times: list[float] = []
        socks: list[socket.socket] = []
        lock = threading.Lock()

        def connect_many(n: int) -> None:
            for _ in range(n):
                t0 = time.monotonic()
                sock = socket.create_connection((host, port), timeout=10)
                with lock:
                    times.append(time.monotonic() - t0)
                    socks.append(sock)

        threads = [threading.Thread(target=connect_many, args=(25,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for sock in socks:
            sock.close()
        # a dropped SYN is retried after 1 s: no connect of the 200 may have needed that
        assert len(times) == 200 and max(times) < 0.9, f"slowest connect {max(times):.2f} s"


def test_payloads_stored_before_owners_were_recorded_are_served_to_their_owner(tmp_path):
    import sqlite3

    import asapo_producer as ap

    mode = ap.INGEST_MODE_TRANSFER_DATA | ap.INGEST_MODE_STORE_IN_DATABASE  # cache only
    with running_asapo(tmp_path / "d", beamtime="bt1") as asapo:
        producer = asapo.producer("src")
        producer.send(1, "blob", b"cache-only", stream="s", ingest_mode=mode)
        producer.wait_requests_finished(5000)
        asapo.stop()
        # the payloads table as an earlier version wrote it: no owner columns
        with sqlite3.connect(asapo.data_dir / ".asapo" / "state.sqlite") as db:
            db.executescript(
                "CREATE TABLE old AS SELECT buf_id, path, size, in_fs FROM payloads;"
                "DROP TABLE payloads; ALTER TABLE old RENAME TO payloads;"
            )
        asapo.start()
        (record,) = asapo.service.store.records(("bt1", "src"), "s")
        resp, _ = wire.cache_read(asapo.receiver_address, record["buf_id"], 10, "bt2", "src")
        assert resp.error == NetworkError.NO_DATA
        data, _ = asapo.consumer("src").get_by_id(1, meta_only=False, stream="s")
        assert data.tobytes() == b"cache-only"


def test_real_clients_carry_on_after_an_idle_close():
    with running_asapo(limits=Limits(idle_timeout_s=0.5)) as asapo:
        producer, consumer = asapo.producer("src"), asapo.consumer("src")
        errors: list = []
        producer.send(1, "raw/1.bin", b"one", stream="s", callback=lambda _p, e: errors.append(e))
        producer.wait_requests_finished(5000)
        assert consumer.get_by_id(1, meta_only=False, stream="s")[0].tobytes() == b"one"
        servers = asapo.service._servers
        wait_for(lambda: all(s.active_connections == 0 for s in servers), 10, "idle closes")
        producer.send(2, "raw/2.bin", b"two", stream="s", callback=lambda _p, e: errors.append(e))
        producer.wait_requests_finished(10000)
        assert errors == [None, None]
        assert consumer.get_by_id(2, meta_only=False, stream="s")[0].tobytes() == b"two"


def test_a_receiver_request_sent_to_the_broker_is_refused_at_once():
    """Bytes that cannot start an HTTP request (here the consumer's binary cache read, which
    the 25.3 client can send down an HTTP connection whose descriptor it reused) are answered
    400 and the connection closed at once, not after the idle timeout; HTTP goes on."""
    with AsapoService() as service:  # idle timeout: the default 300 s
        with wire.connect(service.server_name, timeout=5) as sock:
            field = "inst\u00a7step\u00a7bt1\u00a7detector\u00a7s"
            sock.sendall(wire.header(Opcode.GET_BUFFER_DATA, 1, 100, stream=field, api="v0.1"))
            answer = b""
            while chunk := sock.recv(4096):  # a socket timeout (5 s) would fail the test
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 not an HTTP request")
        path = "/asapo-discovery/v0.1/asapo-broker?protocol=v0.7"
        assert wire.http(service.server_name, "GET", path) == (200, service.server_name.encode())
