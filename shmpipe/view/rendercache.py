"""One render per (frame, output, parameters), shared by every WebSocket client and request.

Ten browsers watching the same image cost one render per frame, not ten; and however many
ask, one image with one set of parameters is rendered at most once per ``min_interval_s``
(the view's ``max_hz``; less ``SLACK``): a request that comes sooner gets the last render,
even if a newer frame has arrived. Requests that arrive while a render runs wait for that
render.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

# A request up to a fifth of the interval early still gets a new render: the frames of a
# source at max_hz come a little early or late, and each should be shown.
SLACK = 0.8


@dataclass
class _Entry:
    version: Hashable
    started: float
    task: asyncio.Future


class RenderCache:
    """Renders by key, reused while the frame is unchanged or the last one is recent.

    Parameters
    ----------
    min_interval_s : float
        Shortest time between two renders of one key.
    size : int
        Keys remembered (least recently used ones are dropped).
    """

    def __init__(self, min_interval_s: float, size: int = 32) -> None:
        self.min_interval_s, self.size = min_interval_s, size
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self.renders = 0  # renders started (for tests and the benchmark)

    async def get(
        self, key: Hashable, version: Hashable, make: Callable[[], Awaitable[Any]]
    ) -> Any:
        """The render of ``key`` for frame ``version``: a shared one where allowed (see
        the module docstring), else ``await make()``. A failed render is not kept."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and not _failed(entry.task):
            if entry.version == version or now - entry.started < SLACK * self.min_interval_s:
                self._entries.move_to_end(key)
                return await asyncio.shield(entry.task)
        entry = _Entry(version, now, asyncio.ensure_future(make()))
        self.renders += 1
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        try:
            return await asyncio.shield(entry.task)
        except Exception:
            if self._entries.get(key) is entry:
                del self._entries[key]
            raise


def _failed(task: asyncio.Future) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
