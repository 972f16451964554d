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

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from shmpipe.view.feed import Feed
from shmpipe.view.routes import ROUTES
from shmpipe.view.state import ApiError, ViewOptions, ViewState, warm_up_quietly

__all__ = ["ApiError", "ViewOptions", "ViewState", "create_app"]


def create_app(feed: Feed, options: ViewOptions | None = None) -> Starlette:
    """The view's ASGI application for ``feed`` (its routes: ``shmpipe.view.routes``)."""
    state = ViewState(feed, options or ViewOptions())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if state.options.zmq:
            from shmpipe.view.lavue import LavuePublisher

            state.lavue = LavuePublisher(state.options.zmq)
        # Not awaited: the status and the page answer at once, before the first image (the
        # pipeline's view loaded its kernels before serving; `shmpipe view` may compile).
        warming = asyncio.create_task(run_in_threadpool(warm_up_quietly, state))
        poller = asyncio.create_task(state.poll())
        try:
            yield
        finally:
            poller.cancel()
            warming.cancel()
            if state.lavue is not None:
                state.lavue.close()

    app = Starlette(
        routes=ROUTES,
        exception_handlers={ApiError: _api_error, 404: _not_found},
        lifespan=lifespan,
    )
    app.state.view = state
    return app


async def _api_error(request, exc: ApiError):
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _not_found(request, exc):
    return JSONResponse({"error": f"no such page: {request.url.path}"}, status_code=404)
