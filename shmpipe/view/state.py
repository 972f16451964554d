"""The view server's shared state: the feed, the rates, the latest generation, the renders.

``ViewState`` answers what every route needs (images, the raw frame, status, a frame's
header) and raises ``ApiError`` (a status code and a message) for what it cannot answer;
``rendered`` is the one way to a PNG, shared by the image route and the WebSocket.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from shmpipe.api.kernel import ArraySpec
from shmpipe.view.catalog import RAW, image_of, kinds, profile
from shmpipe.view.feed import Feed, RateMeter, Snapshot
from shmpipe.view.rawbin import render_parts
from shmpipe.view.render import RenderError, RenderParams, render
from shmpipe.view.rendercache import RenderCache
from shmpipe.view.warm import image_dtypes, warm_kernels

log = logging.getLogger("shmpipe.view")
POLL_S = 0.02
STALE_S = 5.0


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
        self.geometry = feed.geometry  # the run's detector layout, if known
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
        self.raw_stack = stacks[0] if stacks and not feed.part_specs else None
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
        self.require_kind(name, ("image",))
        if module is not None:
            raise ApiError(400, "module applies to the raw image only")
        snap = self.snapshot([name])
        return snap.stream, snap.message_id, image_of(name, snap.arrays[name])

    def with_image(self, name: str, module: int | None, fn):
        """``(stream, message_id, fn(image))``: in place in shared memory where the feed
        allows it (a 2-D output of a local pipeline), else on a copy."""
        if name != RAW and module is None:
            self.require_kind(name, ("image",))
            if len(self.specs[name].shape) == 2:
                return self._applied(name, fn)
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

        return self._applied(name, lambda stack: render_parts(list(stack), params, self.geometry))

    def _applied(self, name: str, fn):
        """``(stream, message_id, fn(array))`` of one output of the latest frame."""
        got = self.feed.apply(name, fn)
        if got is None:
            if self.feed.generation() == 0:
                raise ApiError(503, "no frame published yet")
            raise ApiError(503, f"{name} not copied for the latest frame yet")
        return got[0], got[1], got[3]

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) the image kernels for the dtypes this chain
        shows, before the first client: its first image is then as quick as the next."""
        warm_kernels(image_dtypes(self.specs.values(), self.raw_specs()))

    def is_stack(self, name: str) -> bool:
        """Whether ``name`` is the raw frame or a 3-D image output (a stack of modules)."""
        if name == RAW:
            return True
        self.require_kind(name, ("image",))
        return len(self.specs[name].shape) == 3

    def frame_version(self, name: str):
        """What identifies the frame an image of ``name`` is drawn from, read cheaply."""
        g = self.feed.generation()
        return g if name != RAW else (g, self.feed.raw_generation())

    def raw_specs(self) -> list[ArraySpec] | None:
        parts = self.feed.part_specs
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

    def require_kind(self, name: str, allowed: tuple[str, ...]) -> None:
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
        scalars = {
            n: finite_or_none(have[n]) for n, k in self.kinds.items() if k == "trace" and n in have
        }
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


def warm_up_quietly(state: ViewState) -> None:
    """``state.warm_up()``, a failure logged (it only makes the first image slower)."""
    try:
        state.warm_up()
    except Exception:  # noqa: BLE001 - a slower first image, not a reason to stop
        log.exception("view: warming up the image kernels failed")


def finite_or_none(a) -> float | None:
    """The first value of ``a`` as a float, None for NaN, inf or nothing (JSON null)."""
    v = float(np.asarray(a).reshape(-1)[0]) if np.asarray(a).size else math.nan
    return v if math.isfinite(v) else None


def _params(query) -> tuple[RenderParams, int | None]:
    try:
        params = RenderParams.from_query(query)
    except RenderError as exc:
        raise ApiError(400, str(exc)) from None
    return params, module_of(query)


def module_of(query) -> int | None:
    """The ``module`` query parameter (None: not given); a 400 when not an integer."""
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
