"""The live terminal view: totals, a sparkline of frames/s, and a row per process (rich).

Rendering is a pure function of a ``LiveFigures`` snapshot (``render``), so it is tested by
rendering to a string. ``LiveView`` draws it in place on a terminal with ``rich.live.Live``
under two constraints of the engine: no refresh thread (the supervisor forks workers at any
time, and must not have threads when it does: ``auto_refresh=False``, the supervisor's loop
redraws), and no redirection of ``sys.stdout``/``sys.stderr`` (forked children would inherit
the proxy and draw from their own copies of the view).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from shmpipe.observe.status import ProcessRow
from shmpipe.shm.streams import StreamCounts

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 40) -> str:
    """The last ``width`` values as a line of block characters, scaled to their maximum.

    Zero is the lowest bar, so an idle pipeline reads as a flat line rather than nothing.
    """
    vals = [max(0.0, float(v)) for v in values[-width:]]
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return BARS[0] * len(vals)
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] for v in vals)


@dataclass
class LiveFigures:
    """Everything one frame of the live view shows."""

    name: str
    chain: list[str]
    elapsed_s: float
    frames_in: int
    frames_out: int
    errors: int
    bytes_in: int
    frames_per_s: float
    mb_per_s: float
    ring_used: int
    ring_slots: int
    rows: list[ProcessRow] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    streams: list[StreamCounts] = field(default_factory=list)
    stalled_s: float = 0.0
    """How long nothing has been published with frames in flight (0: not stalled)."""


def _mib(n: int | None) -> str:
    return f"{n / 2**20:.0f}" if n is not None else "-"


def render(f: LiveFigures) -> RenderableType:
    """The live view of one snapshot as a rich renderable."""
    head = Text.assemble(
        (f"{f.name}", "bold"),
        f"  {' → '.join(f.chain)}  {f.elapsed_s:.0f} s\n",
        (f"{f.frames_out}", "bold green"),
        f" out / {f.frames_in} in, ",
        (f"{f.errors} errors", "bold red" if f.errors else ""),
        f" | {f.frames_per_s:.1f} frames/s {f.mb_per_s:.1f} MB/s"
        f" | ring {f.ring_used}/{f.ring_slots}\n",
        "frames/s ",
        (sparkline(f.history), "cyan"),
        f" (max {max(f.history, default=0.0):.1f})",
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col, justify in (
        ("role", "left"),
        ("pid", "right"),
        ("state", "left"),
        ("frames", "right"),
        ("busy %", "right"),
        ("CPU %", "right"),
        ("RSS MiB", "right"),
        ("message", "right"),
        ("restarts", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in f.rows:
        state_style = {"busy": "green", "dead": "red", "starting": "yellow"}.get(r.state, "")
        table.add_row(
            r.role,
            str(r.pid),
            Text(r.state, style=state_style),
            str(r.frames),
            f"{r.busy_pct:.1f}",
            f"{r.cpu_pct:.0f}" if r.cpu_pct is not None else "-",
            _mib(r.rss),
            str(r.message),
            str(r.restarts),
        )
    parts: list[RenderableType] = [head, table]
    if f.stalled_s:
        parts.append(
            Text(
                f"STALLED: nothing published for {f.stalled_s:.0f} s with frames in flight "
                "(the log names who holds which message)",
                style="bold red",
            )
        )
    if f.streams:
        st = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("stream", "in", "out", "errors"):
            st.add_column(col, justify="left" if col == "stream" else "right")
        for s in f.streams[-5:]:  # the most recent streams
            st.add_row(s.stream, str(s.frames_in), str(s.frames_out), str(s.errors))
        parts.append(st)
    return Group(*parts)


def render_text(f: LiveFigures, width: int = 100) -> str:
    """The live view as plain text (no colours, no cursor movement), e.g. for tests."""
    buf = io.StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(render(f))
    return buf.getvalue()


class _PrintAbove:
    """A stream for the supervisor's log handler while the view is shown: lines go through the
    view's console, which prints them above the view instead of tearing it.

    A process forked later inherits this object; there it writes straight to the real stream
    (its own copy of the view must never draw).
    """

    def __init__(self, console: Console, stream, pid: int) -> None:
        self.console, self.stream, self.pid = console, stream, pid

    def write(self, text: str) -> int:
        if os.getpid() != self.pid:
            return self.stream.write(text)
        self.console.print(Text(text.rstrip("\n")), soft_wrap=True, highlight=False)
        return len(text)

    def flush(self) -> None:
        if os.getpid() != self.pid:
            self.stream.flush()


class LiveView:
    """Draws ``render(figures)`` in place on a terminal; redrawn by the caller, no thread.

    Parameters
    ----------
    console : rich.console.Console, optional
        Where to draw; default: standard error (standard output stays for results).
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._live: Live | None = None
        self._last = 0.0
        self._swapped: list[tuple[logging.StreamHandler, object]] = []

    def _route_logs(self) -> None:
        """Let the supervisor's log lines print above the view (children keep theirs)."""
        for h in logging.getLogger("shmpipe").handlers:
            if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.__stderr__):
                old = h.setStream(_PrintAbove(self.console, h.stream, os.getpid()))
                self._swapped.append((h, old))

    def _restore_logs(self) -> None:
        for h, old in self._swapped:
            h.setStream(old)
        self._swapped.clear()

    def update(self, figures: LiveFigures) -> None:
        """Redraw with new figures (starts the view on the first call)."""
        if self._live is None:
            self._live = Live(
                render(figures),
                console=self.console,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=False,
            )
            self._live.start(refresh=True)
            self._route_logs()
        else:
            self._live.update(render(figures), refresh=True)
        self._last = time.monotonic()

    def stop(self) -> None:
        """Leave the last view on the screen and give the cursor back."""
        if self._live is not None:
            self._restore_logs()
            self._live.stop()
            self._live = None
