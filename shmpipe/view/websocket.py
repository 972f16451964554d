"""The view's WebSocket: each new frame pushed to a browser, at most ``view.max_hz`` a second.

A client sends ``{"image": {"name": ..., <image parameters>}}`` at any time; it receives, for
each new frame and once a second otherwise, a binary message: a 4-byte big-endian header
length, a JSON header (status, stream, message_id, profiles, scalars, image), then the PNG.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from shmpipe.view.rendercache import SLACK
from shmpipe.view.state import ApiError, ViewState, rendered


@dataclass
class ClientWants:
    """What one client asked for, and whether it changed since the last push."""

    wanted: dict[str, Any] = field(default_factory=dict)
    changed: bool = True


async def push_frames(websocket: WebSocket) -> None:
    """The ``/ws`` route: read the client's requests, push frames until it leaves."""
    state: ViewState = websocket.app.state.view
    await websocket.accept()
    client = ClientWants({"image": {"name": state.default_image}})
    task = asyncio.create_task(_read_requests(websocket, state, client))
    sent_gen, sent_at = -1, 0.0
    try:
        while not task.done():
            async with state.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.changed.wait(), timeout=1.0)
            # Paced from the start of the last message, not its end, with the render
            # cache's slack: neither the render's time nor a frame's lateness is added
            # to the next one's (10 images/s from a 10 Hz source, not 8).
            wait = sent_at + SLACK / state.options.max_fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            started = time.monotonic()
            g = state.generation
            header: dict[str, Any] = {"status": state.status()}
            png = b""
            if g != sent_gen or client.changed:
                client.changed = False
                png = await _frame(state, client.wanted, header)
                sent_gen = g
            raw = json.dumps(header).encode()
            await websocket.send_bytes(struct.pack(">I", len(raw)) + raw + png)
            sent_at = started
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        task.cancel()


async def _read_requests(websocket: WebSocket, state: ViewState, client: ClientWants) -> None:
    """Merge each JSON object the client sends into what it wants; answer a bad one."""
    while True:
        msg = await websocket.receive_text()
        try:
            doc = json.loads(msg)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            await websocket.send_text(json.dumps({"error": f"bad message: {exc}"}))
            continue
        client.wanted = {**client.wanted, **doc}
        client.changed = True
        async with state.changed:
            state.changed.notify_all()


async def _frame(state: ViewState, wanted: dict[str, Any], header: dict[str, Any]) -> bytes:
    """Add the latest frame's header to ``header``; return its image's PNG (or b"")."""
    snap = state.feed.latest(state.frame_names)
    if snap is None:
        return b""
    header.update(state.frame_header(snap))
    want = dict(wanted.get("image") or {})
    name = str(want.pop("name", state.default_image))
    try:
        png, h = await rendered(state, name, {k: str(v) for k, v in want.items()})
    except ApiError as exc:
        header["image_error"] = exc.message
        return b""
    header["image"] = {"name": name, **h}
    return png
