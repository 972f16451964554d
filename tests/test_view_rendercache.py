"""The view's render cache: one render per frame and parameters, at most max_hz."""

from __future__ import annotations

import asyncio

import pytest

from shmpipe.view.rendercache import RenderCache


class Renderer:
    """Counts renders; each waits for ``release`` so that requests overlap it."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self, value):
        self.calls += 1
        await self.release.wait()
        return value


def test_concurrent_requests_for_one_frame_share_one_render():
    async def main():
        cache, make = RenderCache(min_interval_s=0.0), Renderer()
        waiting = [
            asyncio.ensure_future(cache.get("image", 7, lambda: make(("png", 7))))
            for _ in range(10)
        ]
        await asyncio.sleep(0)  # one turn of the loop: every request reaches the cache
        assert cache.renders == 1 and not any(w.done() for w in waiting)
        make.release.set()
        got = await asyncio.gather(*waiting)
        assert got == [("png", 7)] * 10 and make.calls == 1 == cache.renders
        # The same frame again: no new render; another key or a new frame: one each.
        assert await cache.get("image", 7, lambda: make("again")) == ("png", 7)
        assert await cache.get("other", 7, lambda: make("other")) == "other"
        assert await cache.get("image", 8, lambda: make(("png", 8))) == ("png", 8)
        assert make.calls == 3

    asyncio.run(main())


def test_a_new_frame_is_not_rendered_sooner_than_the_interval():
    async def main():
        cache, make = RenderCache(min_interval_s=3600.0), Renderer()
        make.release.set()
        assert await cache.get("image", 1, lambda: make("first")) == "first"
        assert await cache.get("image", 2, lambda: make("second")) == "first"
        assert make.calls == 1
        cache.min_interval_s = 0.0  # the interval has passed
        assert await cache.get("image", 2, lambda: make("second")) == "second"

    asyncio.run(main())


def test_a_failed_render_is_not_kept_and_old_keys_are_dropped():
    async def main():
        cache = RenderCache(min_interval_s=3600.0, size=2)

        async def fail():
            raise ValueError("no frame yet")

        async def ok(v):
            return v

        with pytest.raises(ValueError, match="no frame"):
            await cache.get("a", 1, fail)
        assert await cache.get("a", 1, lambda: ok("a1")) == "a1"
        await cache.get("b", 1, lambda: ok("b1"))
        await cache.get("c", 1, lambda: ok("c1"))  # "a" is the least recently used: dropped
        assert await cache.get("a", 1, lambda: ok("a2")) == "a2"
        assert await cache.get("c", 1, lambda: ok("c2")) == "c1"

    asyncio.run(main())
