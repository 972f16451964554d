"""Log lines: ``--log-format json`` for log shippers; every line about a frame names it."""

from __future__ import annotations

import json
import logging

from shmpipe.observe.logs import JsonFormatter, TextFormatter
from tests.conftest import run_cli


def test_json_log_lines_about_frames_carry_stream_and_message_id(tmp_path):
    r = run_cli(
        "run",
        "--log-format",
        "json",
        "--progress",
        "off",
        "--frames",
        "8",
        "--set",
        "source.module_shape=[16, 32]",
        "--set",
        'run.on_error="skip"',
        "--set",
        'kernels.picky.kind="tests.plugins:FailOn"',
        "--set",
        "kernels.picky.ids=[2]",
        "--set",
        'kernels.crash.kind="tests.plugins:Crash"',
        "--set",
        "kernels.crash.ids=[5]",
        "--set",
        f'kernels.crash.once_dir="{tmp_path}"',
        timeout=120,
    )
    assert r.returncode == 3, r.stderr
    docs = [json.loads(line) for line in r.stderr.splitlines() if line.startswith("{")]
    lines = r.stderr.splitlines()
    last_json = max(i for i, line in enumerate(lines) if line.startswith("{"))
    summary = [line for line in lines if not line.startswith("{")]
    # Only the summary at the end (its line, then what it adds) is not JSON.
    assert summary == lines[last_json + 1 :] and summary[0].startswith("run "), summary
    for d in docs:
        assert {"time", "level", "process", "pid", "message"} <= set(d)

    def about(text: str) -> list[dict]:
        return [d for d in docs if text in d["message"]]

    # The kernel failure, as the worker and the publisher report it.
    failed = about("bad frame 2 on purpose")
    procs = sorted(d["process"] for d in failed)
    assert len(failed) == 2 and procs[0] == "publisher" and procs[1].startswith("worker"), procs
    # The frame that killed its worker, as the supervisor re-dispatches it.
    redispatched = about("re-dispatching message 5")
    assert len(redispatched) == 1
    for d in [*failed, *redispatched]:
        assert d["stream"] == "scan_0001"
    assert {d["message_id"] for d in failed} == {2}
    assert redispatched[0]["message_id"] == 5
    assert redispatched[0]["process"] == "supervisor"
    # Lines not about a frame carry no frame fields.
    setup = about("kernels set up and compiled")
    assert len(setup) == 1 and "stream" not in setup[0] and "message_id" not in setup[0]


def record(**extra) -> logging.LogRecord:
    rec = logging.LogRecord(
        "shmpipe.worker0", logging.WARNING, __file__, 1, "kernel %s failed", ("x",), None
    )
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_text_format_shows_stream_and_id():
    line = TextFormatter().format(record(stream="scan_0007", message_id=41))
    assert line.endswith("warning worker0 [scan_0007#41]: kernel x failed")
    assert "[" not in TextFormatter().format(record())


def test_json_format_fields():
    doc = json.loads(JsonFormatter().format(record(stream="scan_0007", message_id=41)))
    assert doc["stream"] == "scan_0007" and doc["message_id"] == 41
    assert doc["level"] == "warning" and doc["process"] == "worker0"
    assert doc["message"] == "kernel x failed"


def test_frame_extra_reads_stream_and_id_from_the_slot_header():
    from shmpipe.api.message import Message
    from shmpipe.observe.logs import frame_extra
    from shmpipe.shm.layout import (
        HEADER_LEN,
        MSG_ID,
    )
    from shmpipe.shm.ring import (
        RingGeometry,
        SlotRing,
    )
    from shmpipe.shm.slotio import encode_header

    ring = SlotRing(RingGeometry(2, 4096, 4096, 64, 3))
    try:
        ring.table[1, HEADER_LEN] = encode_header(Message("scan_0009", 17), ring.header(1))
        assert frame_extra(ring, 1) == {"stream": "scan_0009", "message_id": 17}
        # An unreadable header still names the message id from the slot table.
        ring.table[0, HEADER_LEN] = 3
        ring.header(0)[:3] = b"{{{"
        ring.table[0, MSG_ID] = 5
        assert frame_extra(ring, 0) == {"stream": "?", "message_id": 5}
    finally:
        ring.close()
