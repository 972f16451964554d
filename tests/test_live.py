"""The live view renders without a terminal; off a terminal the output stays plain lines."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import threading

from rich.console import Console

from shmpipe.config import load_config
from shmpipe.observe.live import BARS, LiveFigures, LiveView, render_text, sparkline
from shmpipe.observe.progress import ProgressReporter
from shmpipe.observe.status import ProcessRow
from shmpipe.shm.layout import (
    P_FRAMES,
    P_PID,
    PROC_DISPATCHER,
    PROC_PUBLISHER,
)
from shmpipe.shm.ring import (
    RingGeometry,
    SlotRing,
)


def figures(**kw) -> LiveFigures:
    rows = [
        ProcessRow("dispatcher", 4242, "busy", 120, 0, 0, 0.0, 12.0, 50 * 2**20, 1.0, 120, 0),
        ProcessRow("worker 0", 4243, "idle", 61, 0, 0, 87.5, 95.0, 90 * 2**20, 3.0, 119, 1),
        ProcessRow("worker 1", 4244, "dead", 59, 0, 0, 80.0, None, None, None, 118, 0),
    ]
    base = dict(
        name="beamline-a",
        chain=["decompress", "integrate"],
        elapsed_s=12.0,
        frames_in=120,
        frames_out=118,
        errors=2,
        bytes_in=10**9,
        frames_per_s=9.8,
        mb_per_s=83.0,
        ring_used=5,
        ring_slots=34,
        rows=rows,
        history=[0.0, 5.0, 10.0, 10.0, 2.5],
    )
    return LiveFigures(**(base | kw))


def test_sparkline_scales_to_the_maximum():
    assert sparkline([0, 5, 10]) == BARS[0] + BARS[4] + BARS[7]
    assert sparkline([0, 0]) == BARS[0] * 2  # idle: a flat line, not nothing
    assert sparkline([]) == ""
    assert len(sparkline(list(range(100)), width=40)) == 40
    assert sparkline(list(range(100)), width=40)[-1] == BARS[-1]


def test_render_shows_the_figures_of_each_process():
    text = render_text(figures(), width=100)
    lines = text.splitlines()
    assert lines[0].startswith("beamline-a  decompress → integrate  12 s")
    assert "118 out / 120 in, 2 errors | 9.8 frames/s 83.0 MB/s | ring 5/34" in text
    assert "frames/s " + sparkline([0.0, 5.0, 10.0, 10.0, 2.5]) + " (max 10.0)" in text
    header = next(line for line in lines if line.startswith("role"))
    for col in ("pid", "state", "frames", "busy %", "CPU %", "RSS MiB", "message", "restarts"):
        assert col in header
    w0 = next(line for line in lines if line.startswith("worker 0")).split()
    assert w0[2:] == ["4243", "idle", "61", "87.5", "95", "90", "119", "1"]
    w1 = next(line for line in lines if line.startswith("worker 1")).split()
    assert w1[2:] == ["4244", "dead", "59", "80.0", "-", "-", "118", "0"]
    assert "\x1b[" not in text  # plain text: no colours, no cursor movement
    assert "STALLED" not in text


def test_render_names_a_stall():
    text = render_text(dataclasses.replace(figures(), stalled_s=12.4), width=120)
    assert "STALLED: nothing published for 12 s with frames in flight" in text


def small_ring() -> SlotRing:
    return SlotRing(RingGeometry(4, 4096, 4096, 64, 4))


def test_live_view_redraws_in_place_without_a_thread():
    buf = io.StringIO()
    view = LiveView(Console(file=buf, force_terminal=True, width=100))
    threads = threading.active_count()
    view.update(figures())
    view.update(figures(frames_out=119))
    assert threading.active_count() == threads  # the supervisor must stay single-threaded
    view.stop()
    out = buf.getvalue()
    assert out.count("beamline-a") >= 2  # drawn, redrawn (and drawn once more by stop)
    assert "\x1b[1A" in out or "\x1b[2K" in out  # the second frame replaced the first


def test_progress_on_a_terminal_uses_the_live_view():
    ring = small_ring()
    try:
        ring.procs[PROC_DISPATCHER, P_FRAMES] = 7
        ring.procs[PROC_PUBLISHER, P_FRAMES] = 5
        cfg = load_config(raw={"run": {"progress": "on", "name": "tty"}})
        buf = io.StringIO()
        rep = ProgressReporter(
            ring, cfg, "tty", view=LiveView(Console(file=buf, force_terminal=True, width=100))
        )
        rep.t_last -= 2.0  # as if a second had passed since the last redraw
        rep.tick()
        rep.close()
        assert "5 out / 7 in" in re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    finally:
        ring.close()


def test_progress_off_a_terminal_is_plain_log_lines(caplog, capsys):
    ring = small_ring()
    try:
        ring.procs[PROC_DISPATCHER, P_FRAMES] = 7
        ring.procs[PROC_PUBLISHER, P_FRAMES] = 5
        ring.procs[PROC_DISPATCHER, P_PID] = 0
        cfg = load_config(raw={"run": {"progress": "auto"}})
        rep = ProgressReporter(ring, cfg, "plain", interval=0.0)
        assert rep.view is None  # under pytest stderr is not a terminal
        with caplog.at_level(logging.INFO, logger="shmpipe.progress"):
            rep.tick()
            rep.tick()
        rep.close()
        lines = [r.getMessage() for r in caplog.records if r.name == "shmpipe.progress"]
        assert len(lines) == 2
        assert lines[0].startswith("plain: 5 out / 7 in, 0 errors |")
        assert all("\x1b" not in line and "\r" not in line for line in lines)
        assert "\x1b" not in capsys.readouterr().err
    finally:
        ring.close()


def test_supervisor_log_lines_print_above_the_view_and_children_write_directly():
    from shmpipe.observe.live import _PrintAbove

    root = logging.getLogger("shmpipe")
    real = io.StringIO()
    handler = logging.StreamHandler(real)
    root.addHandler(handler)
    old_level, root.level = root.level, logging.INFO
    try:
        buf = io.StringIO()
        view = LiveView(Console(file=buf, force_terminal=True, width=100))
        # _route_logs swaps handlers writing to stderr; this one writes to `real`, so pose as it.
        handler.stream = __import__("sys").stderr
        view.update(figures())
        assert isinstance(handler.stream, _PrintAbove)
        logging.getLogger("shmpipe.supervisor").warning("worker 1 died")
        view.stop()
        assert "worker 1 died" in buf.getvalue()
        assert not isinstance(handler.stream, _PrintAbove)  # restored
        # In a process forked while the view was shown, lines go to the real stream.
        other = _PrintAbove(Console(file=io.StringIO()), real, pid=-1)
        other.write("from a child\n")
        assert real.getvalue() == "from a child\n"
    finally:
        root.removeHandler(handler)
        root.level = old_level
