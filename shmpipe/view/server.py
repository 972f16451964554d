"""The live view's web server: the HTTP API, the WebSocket and the page (Starlette).

Every endpoint reads; none can change the pipeline. A bad parameter is a 400 with a message,
an unknown output a 404, no frame yet a 503.

HTTP API
--------
``GET /api/status``                    run, stream, message_id, frames_in/out, rate, ring, workers
``GET /api/outputs``                   what can be shown: kind, shape, dtype, unit, axis, errors
``GET /api/colormaps``                 the colour maps, 256 RGB triples each
``GET /api/image/{output}.png``        ``width scale cmap binning vmin vmax pmin pmax x0 y0 x1 y1
                                       module`` (raw only); headers X-Stream, X-Message-Id, X-Vmin,
                                       X-Vmax, X-Factor, X-Region
``GET /api/pixel/{output}?x=&y=``      the full-resolution value at one pixel
``GET /api/profile/{output}``          x, y, sigma, unit, x_unit, stream, message_id
``GET /api/trace/{output}?last=N``     message_id, stream, t, values (oldest first)
``WS  /ws``                            send ``{"image": {"name": ..., <image parameters>}}``;
                                       receive binary frames: 4-byte big-endian header length,
                                       a JSON header (stream, message_id, status, profiles,
                                       scalars, image vmin/vmax/region), then the PNG
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from shmpipe.api.kernel import ArraySpec
from shmpipe.view.catalog import RAW, describe, image_of, kinds, profile
from shmpipe.view.colormaps import COLORMAPS
from shmpipe.view.feed import Feed, RateMeter, Snapshot
from shmpipe.view.rawbin import render_parts
from shmpipe.view.render import RenderError, RenderParams, render
from shmpipe.view.rendercache import SLACK, RenderCache
from shmpipe.view.warm import image_dtypes, warm_kernels

log = logging.getLogger("shmpipe.view")
STATIC = Path(__file__).parent / "static"
POLL_S = 0.02
STALE_S = 5.0
MAX_TRACE = 100_000


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ViewOptions:
    """Settings of one view server (from ``[view]`` or the ``shmpipe view`` command)."""

    max_fps: float = 10.0
    image: str = ""
    zmq: str = ""
    stale_s: float = STALE_S


class ViewState:
    """What the server shares between requests: the feed, rates, the latest generation."""

    def __init__(self, feed: Feed, options: ViewOptions) -> None:
        self.feed, self.options = feed, options
        self.specs = feed.outputs()
        self.geometry = getattr(feed, "geometry", None)  # the run's detector layout, if known
        self.kinds = kinds(self.specs)
        self.rates = RateMeter()
        self.rate_in = self.rate_out = 0.0
        self.changed = asyncio.Condition()
        self.generation = -1
        self.last_new = time.monotonic()
        self.started = time.time()
        self.lavue = None
        self.lavue_sent: tuple[str, int] | None = None  # (stream, message id) sent last
        self._header: tuple[Any, dict[str, Any]] = (None, {})
        self.renders = RenderCache(1.0 / options.max_fps if options.max_fps > 0 else 0.0)
        # A stitched 2-D image before a 3-D stack of modules.
        images = sorted(
            (n for n, k in self.kinds.items() if k == "image"),
            key=lambda n: len(self.specs[n].shape),
        )
        self.default_image = options.image or (images[0] if images else RAW)
        stacks = [n for n in images if len(self.specs[n].shape) == 3]
        self.raw_stack = stacks[0] if stacks and not getattr(feed, "part_specs", None) else None
        # What each pushed frame carries besides its image: profiles (with their axes and
        # errors) and scalars.
        shown = [n for n, k in self.kinds.items() if k in ("profile", "trace")]
        extra = [x for n in shown for x in (self.specs[n].axis, self.specs[n].errors)]
        self.frame_names = list(dict.fromkeys(n for n in shown + extra if n in self.specs))

    # -- data ---------------------------------------------------------------------------
    def snapshot(self, names: list[str]) -> Snapshot:
        snap = self.feed.latest(names)
        if snap is None:
            raise ApiError(503, "no frame published yet")
        missing = [n for n in names if n not in snap.arrays]
        if missing:
            # Frames came faster than the copies could be read: rare, and the next try works.
            raise ApiError(503, f"{', '.join(missing)} not copied for the latest frame yet")
        return snap

    def image(self, name: str, module: int | None = None):
        """(stream, message_id, 2-D array) of an image output or of the raw frame."""
        if name == RAW:
            stream, mid, parts = self.raw_parts()
            if module is not None:
                if not 0 <= module < len(parts):
                    raise ApiError(400, f"module must be 0..{len(parts) - 1}, got {module}")
                return stream, mid, np.atleast_2d(parts[module])
            from shmpipe.view.assemble import assemble

            return stream, mid, assemble(parts, self.geometry)
        self._known(name, ("image",))
        if module is not None:
            raise ApiError(400, "module applies to the raw image only")
        snap = self.snapshot([name])
        return snap.stream, snap.message_id, image_of(name, snap.arrays[name])

    def with_image(self, name: str, module: int | None, fn):
        """``(stream, message_id, fn(image))``: in place in shared memory where the feed
        allows it (a 2-D output of a local pipeline), else on a copy."""
        if name != RAW and module is None and hasattr(self.feed, "apply"):
            self._known(name, ("image",))
            if len(self.specs[name].shape) == 2:
                got = self.feed.apply(name, fn)
                if got is None:
                    raise ApiError(503, f"{name} not copied for the latest frame yet")
                return got[0], got[1], got[3]
        stream, mid, image = self.image(name, module)
        return stream, mid, fn(image)

    def render_parts(self, name: str, params: RenderParams):
        """``(stream, message_id, (Rendered, shape))`` of the raw frame or of a stack of
        modules, binned from the modules without assembling the full image (a stack in
        place in shared memory where the feed allows it)."""
        if name == RAW:
            raw = self.feed.raw()
            if raw is not None:
                return raw.stream, raw.message_id, render_parts(raw.parts, params, self.geometry)
            if self.raw_stack is None:
                raise ApiError(503, "no raw frame kept yet (or the source declares no layout)")
            name = self.raw_stack

        def draw(stack):
            return render_parts(list(stack), params, self.geometry)

        if hasattr(self.feed, "apply"):
            got = self.feed.apply(name, draw)
            if got is None:
                raise ApiError(503, f"{name} not copied for the latest frame yet")
            return got[0], got[1], got[3]
        snap = self.snapshot([name])
        return snap.stream, snap.message_id, draw(snap.arrays[name])

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) the image kernels for the dtypes this chain
        shows, before the first client: its first image is then as quick as the next."""
        warm_kernels(image_dtypes(self.specs.values(), self.raw_specs()))

    def is_stack(self, name: str) -> bool:
        """Whether ``name`` is the raw frame or a 3-D image output (a stack of modules)."""
        if name == RAW:
            return True
        self._known(name, ("image",))
        return len(self.specs[name].shape) == 3

    def frame_version(self, name: str):
        """What identifies the frame an image of ``name`` is drawn from, read cheaply."""
        g = self.feed.generation()
        if name != RAW:
            return g
        tap = getattr(self.feed, "tap", None)
        return (g, tap.raw_generation()) if tap is not None else (g, id(self.feed.raw()))

    def raw_specs(self) -> list[ArraySpec] | None:
        parts = getattr(self.feed, "part_specs", None)
        if parts or self.raw_stack is None:
            return parts
        s = self.specs[self.raw_stack]
        return [ArraySpec(f"module_{i:02d}", s.shape[1:], s.dtype) for i in range(s.shape[0])]

    def raw_parts(self) -> tuple[str, int, list[np.ndarray]]:
        """The raw frame's modules; for a compressed source (whose parts are bytes) the
        first 3-D output, the decompressed modules."""
        raw = self.feed.raw()
        if raw is not None:
            return raw.stream, raw.message_id, raw.parts
        if self.raw_stack is None:
            raise ApiError(503, "no raw frame kept yet (or the source declares no layout)")
        snap = self.snapshot([self.raw_stack])
        return snap.stream, snap.message_id, list(snap.arrays[self.raw_stack])

    def _known(self, name: str, allowed: tuple[str, ...]) -> None:
        kind = self.kinds.get(name)
        if kind is None:
            known = ", ".join([RAW, *self.specs])
            raise ApiError(404, f"no output {name!r}; known: {known}")
        if kind not in allowed:
            raise ApiError(400, f"{name!r} is a {kind}, not a {' or '.join(allowed)}")

    def status(self) -> dict[str, Any]:
        c = self.feed.counters()
        snap = self.feed.latest([])
        age = None if snap is None else max(0.0, time.time() - snap.t)
        return {
            "run": self.feed.run_name,
            "stream": None if snap is None else snap.stream,
            "message_id": None if snap is None else snap.message_id,
            "t": None if snap is None else snap.t,
            "age_s": age,
            "stale": age is None or time.monotonic() - self.last_new > self.options.stale_s,
            "frames_in": c.frames_in,
            "frames_out": c.frames_out,
            "errors": c.errors,
            "rate": round(self.rate_out, 2),
            "rate_in": round(self.rate_in, 2),
            "ring_slots": c.ring_slots,
            "ring_used": c.ring_used,
            "workers": c.workers,
            "workers_busy": c.workers_busy,
            **c.extra,
        }

    def frame_header(self, snap: Snapshot) -> dict[str, Any]:
        """Stream, id, profiles and scalars of one frame, made once and shared by every
        client (the caller adds its own parts to a copy)."""
        key = (id(snap), snap.generation, snap.message_id, len(snap.arrays))
        if self._header[0] != key:
            self._header = (key, self._frame_header(snap))
        return dict(self._header[1])

    def _frame_header(self, snap: Snapshot) -> dict[str, Any]:
        have = snap.arrays
        profiles = {
            n: profile(self.specs, have, n)
            for n, k in self.kinds.items()
            if k == "profile" and n in have
        }
        scalars = {n: _num(have[n]) for n, k in self.kinds.items() if k == "trace" and n in have}
        return {
            "stream": snap.stream,
            "message_id": snap.message_id,
            "t": snap.t,
            "profiles": profiles,
            "scalars": scalars,
        }

    # -- the poll loop ------------------------------------------------------------------
    async def poll(self) -> None:
        """Watch the feed for new frames; wake the WebSockets; feed lavue."""
        while True:
            try:
                c = self.feed.counters()
                self.rate_in, self.rate_out = self.rates.add(c.frames_in, c.frames_out)
                g = self.feed.generation()
                if g != self.generation:
                    self.generation = g
                    self.last_new = time.monotonic()
                    if self.lavue is not None:
                        await run_in_threadpool(self._to_lavue)
                    async with self.changed:
                        self.changed.notify_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a view must survive a bad frame
                log.exception("view: polling the feed failed")
            await asyncio.sleep(POLL_S)

    def _to_lavue(self) -> None:
        try:
            stream, mid, image = self.image(self.default_image)
        except ApiError:
            return
        # A new generation need not bring a new image (big copies follow the reader's
        # pace): each frame goes out once.
        if (stream, mid) == self.lavue_sent:
            return
        self.lavue_sent = (stream, mid)
        self.lavue.send(image, f"{self.feed.run_name}/{stream}/{mid}")


def _warm_up(state: ViewState) -> None:
    try:
        state.warm_up()
    except Exception:  # noqa: BLE001 - a slower first image, not a reason to stop
        log.exception("view: warming up the image kernels failed")


def _num(a) -> float | None:
    v = float(np.asarray(a).reshape(-1)[0]) if np.asarray(a).size else math.nan
    return v if math.isfinite(v) else None


def _params(query) -> tuple[RenderParams, int | None]:
    try:
        params = RenderParams.from_query(query)
    except RenderError as exc:
        raise ApiError(400, str(exc)) from None
    return params, _module(query)


def _module(query) -> int | None:
    module = query.get("module")
    if module is None:
        return None
    try:
        return int(module)
    except ValueError:
        raise ApiError(400, f"module must be an integer, got {module!r}") from None


async def rendered(state: ViewState, name: str, query) -> tuple[bytes, dict[str, str]]:
    """PNG and headers of one image request, shared with every identical request for the
    same frame (see ``RenderCache``)."""
    params, module = _params(query)
    return await state.renders.get(
        (name, params, module),
        state.frame_version(name),
        lambda: run_in_threadpool(_render, state, name, params, module),
    )


def _render(
    state: ViewState, name: str, params: RenderParams, module: int | None
) -> tuple[bytes, dict[str, str]]:
    try:
        if module is None and state.is_stack(name):
            stream, mid, (r, shape) = state.render_parts(name, params)
        else:
            stream, mid, (r, shape) = state.with_image(
                name, module, lambda image: (render(image, params), image.shape)
            )
    except RenderError as exc:
        raise ApiError(400, str(exc)) from None
    headers = {
        "X-Stream": stream,
        "X-Message-Id": str(mid),
        "X-Vmin": repr(r.vmin),
        "X-Vmax": repr(r.vmax),
        "X-Factor": str(r.factor),
        "X-Region": ",".join(map(str, r.region)),
        "X-Shape": ",".join(map(str, shape)),
        "Cache-Control": "no-store",
    }
    return r.png(), headers


def create_app(feed: Feed, options: ViewOptions | None = None) -> Starlette:
    """The view's ASGI application for ``feed``."""
    state = ViewState(feed, options or ViewOptions())

    async def status(request: Request):
        return JSONResponse(state.status())

    async def outputs(request: Request):
        return JSONResponse(
            {
                "outputs": describe(state.specs, state.raw_specs()),
                "default_image": state.default_image,
                "history": feed.history_names(),
            }
        )

    async def image(request: Request):
        name = request.path_params["output"]
        if not name.endswith(".png"):
            raise ApiError(404, "images are served as /api/image/<output>.png")
        png, headers = await rendered(state, name[:-4], request.query_params)
        return Response(png, media_type="image/png", headers=headers)

    async def pixel(request: Request):
        name = request.path_params["output"]
        q = request.query_params
        try:
            x, y = int(q["x"]), int(q["y"])
        except (KeyError, ValueError):
            raise ApiError(400, "pixel needs integer x and y") from None
        module = _module(q)

        def at(img):
            inside = 0 <= y < img.shape[0] and 0 <= x < img.shape[1]
            return img.shape, (_num(img[y, x]) if inside else None), inside

        stream, mid, (shape, value, inside) = await run_in_threadpool(
            state.with_image, name, module, at
        )
        if not inside:
            h, w = shape[:2]
            raise ApiError(400, f"pixel ({x}, {y}) is outside the {w} x {h} image")
        return JSONResponse({"x": x, "y": y, "value": value, "stream": stream, "message_id": mid})

    async def profile_(request: Request):
        name = request.path_params["output"]
        state._known(name, ("profile", "axis", "errors"))
        s = state.specs[name]
        snap = state.snapshot([n for n in (name, s.axis, s.errors) if n in state.specs])
        doc = profile(state.specs, snap.arrays, name)
        return JSONResponse({**doc, "stream": snap.stream, "message_id": snap.message_id})

    async def trace(request: Request):
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
        if name not in feed.history_names():
            raise ApiError(400, f"{name!r} is not kept in the history (only small outputs are)")
        h = feed.history(name, last)
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

    async def ws(websocket: WebSocket):
        await websocket.accept()
        wanted: dict[str, Any] = {"image": {"name": state.default_image}}
        sent_gen, sent_at, settings_changed = -1, 0.0, True

        async def reader():
            nonlocal wanted, settings_changed
            while True:
                msg = await websocket.receive_text()
                try:
                    doc = json.loads(msg)
                    if not isinstance(doc, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    await websocket.send_text(json.dumps({"error": f"bad message: {exc}"}))
                    continue
                wanted = {**wanted, **doc}
                settings_changed = True
                async with state.changed:
                    state.changed.notify_all()

        task = asyncio.create_task(reader())
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
                if g != sent_gen or settings_changed:
                    settings_changed = False
                    snap = feed.latest(state.frame_names)
                    if snap is not None:
                        header.update(state.frame_header(snap))
                        want = dict(wanted.get("image") or {})
                        name = str(want.pop("name", state.default_image))
                        try:
                            png, h = await rendered(
                                state, name, {k: str(v) for k, v in want.items()}
                            )
                            header["image"] = {"name": name, **h}
                        except ApiError as exc:
                            header["image_error"] = exc.message
                    sent_gen = g
                raw = json.dumps(header).encode()
                await websocket.send_bytes(struct.pack(">I", len(raw)) + raw + png)
                sent_at = started
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            task.cancel()

    async def api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def not_found(request, exc):
        return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if state.options.zmq:
            from shmpipe.view.lavue import LavuePublisher

            state.lavue = LavuePublisher(state.options.zmq)
        # Not awaited: the status and the page answer at once, before the first image (the
        # pipeline's view loaded its kernels before serving; `shmpipe view` may compile).
        warming = asyncio.create_task(run_in_threadpool(_warm_up, state))
        poller = asyncio.create_task(state.poll())
        try:
            yield
        finally:
            poller.cancel()
            warming.cancel()
            if state.lavue is not None:
                state.lavue.close()

    routes = [
        Route("/", index),
        Route("/api/status", status),
        Route("/api/outputs", outputs),
        Route("/api/colormaps", colormaps),
        Route("/api/image/{output:path}", image),
        Route("/api/pixel/{output:path}", pixel),
        Route("/api/profile/{output:path}", profile_),
        Route("/api/trace/{output:path}", trace),
        WebSocketRoute("/ws", ws),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: api_error, 404: not_found},
        lifespan=lifespan,
    )
    app.state.view = state
    return app
