"""Service life cycle: restart with a data folder loses nothing; stop leaves nothing behind."""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

import asapo_consumer as ac
import asapo_producer as ap
import pytest

from shmpipe.asapo.service import AsapoService
from shmpipe.asapo.testing import running_asapo, wait_until


def payload(i: int) -> bytes:
    return f"payload-{i}-".encode() * 50


def send(producer, stream, ids) -> list:
    """Send and wait; returns the callback errors (warnings included)."""
    errors = []
    for i in ids:
        producer.send(
            i,
            f"{stream}/{i}.bin",
            payload(i),
            user_meta=json.dumps({"i": i}),
            stream=stream,
            callback=lambda _p, err: err and errors.append(err),
        )
    producer.wait_requests_finished(10000)
    return errors


def test_restart_keeps_messages_acks_and_group_pointer(tmp_path):
    with running_asapo(tmp_path / "asapo") as asapo:
        producer = asapo.producer("src")
        assert send(producer, "s", range(1, 11)) == []
        consumer = asapo.consumer("src", timeout_ms=1000)
        group = consumer.generate_group_id()
        for i in range(1, 5):
            _, meta = consumer.get_next(group, meta_only=True, stream="s", ordered=False)
            assert meta["_id"] == i
        for i in (1, 2, 3):
            consumer.acknowledge(group, i, stream="s")
        port, receiver_port = asapo.service.port, asapo.service.receiver_port

        asapo.restart()

        assert (asapo.service.port, asapo.service.receiver_port) == (port, receiver_port)
        # the same client objects carry on: the pointer continues at 5
        data, meta = consumer.get_next(group, meta_only=False, stream="s", ordered=False)
        assert meta["_id"] == 5 and meta["meta"] == {"i": 5}
        assert data.tobytes() == payload(5)  # cache is cold after a restart: file transfer
        with pytest.raises(ac.AsapoWrongInputError):
            consumer.acknowledge(group, 2, stream="s")  # the ack survived
        consumer.acknowledge(group, 4, stream="s")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert list(consumer.get_unacknowledged_messages(group, stream="s")) == [
                5,
                6,
                7,
                8,
                9,
                10,
            ]
        # the producer reconnects by itself and its new messages follow the old ones
        assert send(producer, "s", [11, 12]) == []
        rest = []
        while True:
            try:
                rest.append(
                    consumer.get_next(group, meta_only=True, stream="s", ordered=False)[1]["_id"]
                )
            except ac.AsapoEndOfStreamError:
                break
        assert rest == [6, 7, 8, 9, 10, 11, 12]
        producer.cleanup()


def test_restart_keeps_metadata_datasets_finish_flags_and_pending_resends(tmp_path):
    with running_asapo(tmp_path / "asapo") as asapo:
        producer = asapo.producer("src")
        for part in (1, 2):
            producer.send(1, f"d/1_{part}.bin", payload(part), stream="d", dataset=(part, 2))
        producer.send_stream_meta(json.dumps({"scan": 1}), stream="d")
        producer.send_beamtime_meta(json.dumps({"bt": True}))
        producer.send_stream_finished_flag("d", 1, next_stream="e")
        producer.wait_requests_finished(5000)
        consumer = asapo.consumer("src", timeout_ms=300)
        consumer.set_resend_nacs(True, 100, 1)
        group = consumer.generate_group_id()
        assert consumer.get_next_dataset(group, stream="d", ordered=False)["id"] == 1

        asapo.restart()

        assert consumer.get_stream_meta(stream="d") == {"scan": 1}
        assert consumer.get_beamtime_meta() == {"bt": True}
        info = consumer.get_stream_info("d")
        assert info["finished"] and info["nextStream"] == "e" and info["lastId"] == 1
        # the unacknowledged dataset is still due for its one redelivery
        again = wait_until(lambda: _next_dataset_or_none(consumer, group), timeout=5)
        assert again["id"] == 1 and len(again["content"]) == 2
        with pytest.raises(ac.AsapoStreamFinishedError):
            consumer.get_next_dataset(group, stream="d", ordered=False)
        producer.cleanup()


def _next_dataset_or_none(consumer, group):
    try:
        return consumer.get_next_dataset(group, stream="d", ordered=False)
    except ac.AsapoStreamFinishedError:
        return None


def test_producer_sending_through_a_restart_loses_nothing(tmp_path):
    n = 600
    with running_asapo(tmp_path / "asapo") as asapo:
        producer = asapo.producer("src", timeout_ms=10000)
        assert send(producer, "warmup", [1]) == []
        errors = []
        done = threading.Event()

        def produce():
            for i in range(1, n + 1):
                producer.send(
                    i,
                    f"s/{i}.bin",
                    payload(i),
                    stream="s",
                    callback=lambda _p, err: err and errors.append(err),
                )
            producer.wait_requests_finished(20000)
            done.set()

        sender = threading.Thread(target=produce)
        sender.start()
        store = asapo.service.store
        wait_until(lambda: store.size(("test_bt", "src"), "s") >= n // 5)
        asapo.restart()
        assert store.size(("test_bt", "src"), "s") < n  # the restart did interrupt the stream
        sender.join(30)
        assert done.is_set()
        # a request whose answer was lost in the restart is resent: a warning, not an error
        assert all(isinstance(e, ap.AsapoServerWarning) for e in errors), errors
        consumer = asapo.consumer("src")
        assert consumer.get_current_size(stream="s") == n
        group = consumer.generate_group_id()
        ids = []
        while True:
            try:
                data, meta = consumer.get_next(group, meta_only=False, stream="s", ordered=False)
            except ac.AsapoEndOfStreamError:
                break
            assert data.tobytes() == payload(meta["_id"])
            ids.append(meta["_id"])
        assert sorted(ids) == list(range(1, n + 1))
        producer.cleanup()


def _service_resources() -> tuple[set[str], set[str]]:
    threads = {
        t.name
        for t in threading.enumerate()
        if t.name.startswith("asapo-") or "process_request" in t.name
    }
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return threads, fds


@pytest.mark.parametrize("persistent", [True, False])
def test_stop_releases_threads_sockets_and_files(tmp_path, persistent):
    import socket
    import urllib.request

    _, fds_before = _service_resources()
    service = AsapoService(data_dir=tmp_path / "asapo" if persistent else None).start()
    data_dir = Path(service.data_dir)
    url = f"http://{service.server_name}/asapo-discovery/v0.1/asapo-broker?protocol=v0.7"
    assert urllib.request.urlopen(url, timeout=5).read().decode() == service.server_name
    idle = socket.create_connection(("127.0.0.1", service.receiver_port))  # never sends
    wait_until(lambda: service._servers[0]._conns)  # noqa: SLF001 - the handler is running
    service.stop()
    threads, fds_after = _service_resources()
    assert threads == set()
    assert fds_after - fds_before <= {f for f in fds_after if "socket" in f and _is(idle, f)}
    assert idle.recv(1) == b""  # the service closed its side of the idle connection
    idle.close()
    assert data_dir.exists() is persistent  # a memory-only service removes its folder
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", service.port), timeout=1)


def test_a_connection_whose_handler_starts_during_stop_is_shut_down(tmp_path):
    """A connection accepted just before a stop, its handler thread starting only after the
    live connections were shut down, must not keep the stop waiting for its client."""
    import socket

    service = AsapoService(data_dir=tmp_path / "asapo").start()
    try:
        servers = list(service._servers)  # noqa: SLF001 - the two listening servers
        for server in servers:
            server.close_all()  # what stop() does once the servers stopped accepting
            ours, client = socket.socketpair()
            client.settimeout(5)
            server.track(ours, True)  # the late handler's setup()
            assert client.recv(1) == b""  # shut down at once, not served on
            server.track(ours, False)
            ours.close()
            client.close()
    finally:
        service.stop()


def _is(sock, link: str) -> bool:
    return link == f"socket:[{os.fstat(sock.fileno()).st_ino}]"


def test_clients_while_the_service_is_down(tmp_path):
    with running_asapo(tmp_path / "asapo") as asapo:
        producer = asapo.producer("src", timeout_ms=10000)
        assert send(producer, "s", [1]) == []
        consumer = asapo.consumer("src", timeout_ms=300)
        group = consumer.generate_group_id()
        asapo.stop()
        # what an engine sees during an outage: the consumer fails fast, the producer queues
        with pytest.raises(ac.AsapoUnavailableServiceError):
            consumer.get_next(group, meta_only=True, stream="s", ordered=False)
        errors = []
        producer.send(
            2, "s/2.bin", payload(2), stream="s", callback=lambda _p, err: errors.append(err)
        )
        with pytest.raises(ap.AsapoTimeOutError):
            producer.wait_requests_finished(300)
        asapo.start()
        producer.wait_requests_finished(10000)
        assert errors == [None]
        ids = [
            consumer.get_next(group, meta_only=True, stream="s", ordered=False)[1]["_id"]
            for _ in range(2)
        ]
        assert ids == [1, 2]
        producer.cleanup()
