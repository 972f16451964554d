"""Smaller client features, and the command-line service in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import asapo_consumer as ac
import pytest

from shmpipe.asapo.testing import running_asapo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def asapo():
    with running_asapo() as endpoint:  # memory-only: nothing to keep
        yield endpoint


@pytest.fixture(scope="module")
def producer(asapo):
    prod = asapo.producer("feat")
    yield prod
    prod.cleanup()


def _send(producer, stream, ids):
    errors = []
    for i in ids:
        producer.send(
            i,
            f"{stream}/{i}",
            f"data{i}".encode(),
            stream=stream,
            callback=lambda _p, err: err and errors.append(err),
        )
    producer.wait_requests_finished(5000)
    assert errors == []


def test_missing_stream_is_end_of_stream(asapo):
    consumer = asapo.consumer("feat", timeout_ms=200)
    with pytest.raises(ac.AsapoEndOfStreamError) as end:
        consumer.get_next(
            consumer.generate_group_id(), meta_only=True, stream="never", ordered=False
        )
    assert end.value.id_max == 0
    assert consumer.get_current_size(stream="never") == 0


def test_auto_id_numbers_messages_in_arrival_order(asapo, producer):
    answers = []
    for name in ("a", "b", "c"):
        producer.send(
            0,
            f"auto/{name}",
            name.encode(),
            stream="auto",
            auto_id=True,
            callback=lambda payload, err: answers.append((payload, err)),
        )
    producer.wait_requests_finished(5000)
    assert [err for _, err in answers] == [None] * 3
    assert sorted(json.loads(p["server_response"])["id"] for p, _ in answers) == [1, 2, 3]
    consumer = asapo.consumer("feat")
    names = [consumer.get_by_id(i, meta_only=True, stream="auto")[1]["name"] for i in (1, 2, 3)]
    assert sorted(names) == ["auto/a", "auto/b", "auto/c"]


def test_grouped_get_last_gives_each_newest_message_once(asapo, producer):
    _send(producer, "glast", [1, 2])
    consumer = asapo.consumer("feat", timeout_ms=200)
    group = consumer.generate_group_id()
    assert consumer.get_last(meta_only=True, stream="glast", group_id=group)[1]["_id"] == 2
    with pytest.raises(ac.AsapoEndOfStreamError):
        consumer.get_last(meta_only=True, stream="glast", group_id=group)
    _send(producer, "glast", [3])
    assert consumer.get_last(meta_only=True, stream="glast", group_id=group)[1]["_id"] == 3
    # without a group, get_last always answers the newest
    assert consumer.get_last(meta_only=True, stream="glast")[1]["_id"] == 3
    assert consumer.get_last(meta_only=True, stream="glast")[1]["_id"] == 3


def test_lastread_marker_moves_the_group_pointer(asapo, producer):
    _send(producer, "marker", range(1, 6))
    consumer = asapo.consumer("feat")
    group = consumer.generate_group_id()
    with warnings.catch_warnings():  # deprecated in 25.3, exercised on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        consumer.set_lastread_marker(group, 3, stream="marker")
        assert (
            consumer.get_next(group, meta_only=True, stream="marker", ordered=False)[1]["_id"] == 4
        )
        consumer.reset_lastread_marker(group, stream="marker")
    assert consumer.get_next(group, meta_only=True, stream="marker", ordered=False)[1]["_id"] == 1


def test_send_file_and_persist_stream(asapo, producer, tmp_path):
    local = tmp_path / "frame.bin"
    local.write_bytes(b"\x01\x02\x03" * 1000)
    producer.send_file(1, str(local), "files/frame.bin", stream="files")
    producer.wait_requests_finished(5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        producer.set_stream_persistent("files")
    consumer = asapo.consumer("feat")
    data, meta = consumer.get_by_id(1, meta_only=False, stream="files")
    assert data.tobytes() == local.read_bytes() and meta["size"] == 3000
    assert (asapo.beamtime_dir() / "files" / "frame.bin").read_bytes() == local.read_bytes()


def test_file_names_cannot_escape_the_data_folder(asapo, producer):
    errors = []
    for i, name in enumerate(["../escape.bin", ".asapo/state.sqlite"], start=1):
        producer.send(i, name, b"x", stream="evil", callback=lambda _p, err: errors.append(err))
    producer.wait_requests_finished(5000)
    assert len(errors) == 2 and all(err is not None for err in errors)
    assert not (asapo.data_dir.parent / "escape.bin").exists()
    assert asapo.consumer("feat").get_current_size(stream="evil") == 0


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_service_process_serves_and_persists_across_stop_or_crash(tmp_path, crash):
    data_dir = tmp_path / "proc"
    with running_asapo(data_dir, in_process=False) as asapo:
        pid = asapo.service.pid
        producer = asapo.producer("cli")
        _send(producer, "s", [1, 2, 3])
        consumer = asapo.consumer("cli", has_filesystem=True)
        group = consumer.generate_group_id()
        assert consumer.get_next(group, meta_only=True, stream="s", ordered=False)[1]["_id"] == 1
        consumer.acknowledge(group, 1, stream="s")
        port = asapo.service.port
        if crash:  # what the clients were told is done must still be on disk
            asapo.kill()
        else:
            asapo.stop()
            assert not (data_dir / ".asapo" / "state.sqlite-wal").exists()  # closed cleanly
        asapo.start()
        assert asapo.service.pid != pid and asapo.service.port == port
        data, meta = consumer.get_next(group, meta_only=False, stream="s", ordered=False)
        assert meta["_id"] == 2 and data.tobytes() == b"data2"
        with pytest.raises(ac.AsapoWrongInputError):
            consumer.acknowledge(group, 1, stream="s")  # the ack survived
        _send(producer, "s", [4])  # the producer reconnects by itself
        assert consumer.get_current_size(stream="s") == 4
    assert not asapo.service.running


def test_command_line_rejects_a_taken_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        done = subprocess.run(
            [sys.executable, "-m", "shmpipe.asapo", "--port", str(port)],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
    assert done.returncode == 1 and "cannot start the service" in done.stderr
