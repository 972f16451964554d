"""The view's HTTP routes: one small function per endpoint (the API is listed in
``shmpipe.view.server``). Each reads the shared ``ViewState`` from ``request.app.state.view``
and raises ``ApiError`` for what it cannot answer (a 400, 404 or 503 with a message).

Adding an endpoint: a function here, a ``Route`` in ``ROUTES``, a row in docs/live-view.md and
a case in tests/test_view_api.py (see docs/contributing.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from shmpipe.view.catalog import describe, profile
from shmpipe.view.colormaps import COLORMAPS
from shmpipe.view.state import ApiError, ViewState, finite_or_none, module_of, rendered
from shmpipe.view.websocket import push_frames

STATIC = Path(__file__).parent / "static"
MAX_TRACE = 100_000


def _state(request: Request) -> ViewState:
    return request.app.state.view


async def status(request: Request):
    state = _state(request)
    return JSONResponse(state.status())


async def outputs(request: Request):
    state = _state(request)
    return JSONResponse(
        {
            "outputs": describe(state.specs, state.raw_specs()),
            "default_image": state.default_image,
            "history": state.feed.history_names(),
        }
    )


async def image(request: Request):
    state = _state(request)
    name = request.path_params["output"]
    if not name.endswith(".png"):
        raise ApiError(404, "images are served as /api/image/<output>.png")
    png, headers = await rendered(state, name[:-4], request.query_params)
    return Response(png, media_type="image/png", headers=headers)


async def pixel(request: Request):
    state = _state(request)
    name = request.path_params["output"]
    q = request.query_params
    try:
        x, y = int(q["x"]), int(q["y"])
    except (KeyError, ValueError):
        raise ApiError(400, "pixel needs integer x and y") from None
    module = module_of(q)

    def at(img):
        inside = 0 <= y < img.shape[0] and 0 <= x < img.shape[1]
        return img.shape, (finite_or_none(img[y, x]) if inside else None), inside

    stream, mid, (shape, value, inside) = await run_in_threadpool(
        state.with_image, name, module, at
    )
    if not inside:
        h, w = shape[:2]
        raise ApiError(400, f"pixel ({x}, {y}) is outside the {w} x {h} image")
    return JSONResponse({"x": x, "y": y, "value": value, "stream": stream, "message_id": mid})


async def profile_(request: Request):
    state = _state(request)
    name = request.path_params["output"]
    state.require_kind(name, ("profile", "axis", "errors"))
    s = state.specs[name]
    snap = state.snapshot([n for n in (name, s.axis, s.errors) if n in state.specs])
    doc = profile(state.specs, snap.arrays, name)
    return JSONResponse({**doc, "stream": snap.stream, "message_id": snap.message_id})


async def trace(request: Request):
    state = _state(request)
    name = request.path_params["output"]
    text = request.query_params.get("last", "1000")
    try:
        last = int(text)
    except ValueError:
        raise ApiError(400, f"last must be an integer, got {text!r}") from None
    if not 1 <= last <= MAX_TRACE:
        raise ApiError(400, f"last must be 1..{MAX_TRACE}, got {last}")
    if name not in state.specs:
        raise ApiError(404, f"no output {name!r}")
    if name not in state.feed.history_names():
        raise ApiError(400, f"{name!r} is not kept in the history (only small outputs are)")
    h = state.feed.history(name, last)
    values = h.values.astype(np.float64)
    return JSONResponse(
        {
            "name": name,
            "unit": state.specs[name].unit,
            "message_id": h.message_id.tolist(),
            "stream": h.stream,
            "t": h.t.tolist(),
            "version": h.version.tolist(),
            "values": [
                v if isinstance(v, list) else (v if math.isfinite(v) else None)
                for v in values.tolist()
            ],
        }
    )


async def colormaps(request: Request):
    return JSONResponse({k: v.tolist() for k, v in COLORMAPS.items()})


async def index(request: Request):
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


ROUTES = [
    Route("/", index),
    Route("/api/status", status),
    Route("/api/outputs", outputs),
    Route("/api/colormaps", colormaps),
    Route("/api/image/{output:path}", image),
    Route("/api/pixel/{output:path}", pixel),
    Route("/api/profile/{output:path}", profile_),
    Route("/api/trace/{output:path}", trace),
    WebSocketRoute("/ws", push_frames),
    Mount("/static", StaticFiles(directory=STATIC), name="static"),
]
