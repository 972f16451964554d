"""The live view's page in a real browser (Debian's headless Chromium driven by playwright)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import REPO
from tests.view_helpers import RunningView

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        "chromium is not installed (apt-get install chromium; CI installs it, see README)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

CANVAS_NOT_BLANK = """(id) => {
  const c = document.getElementById(id);
  if (!c || c.width < 2 || c.height < 2) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const seen = new Set();
  for (let i = 0; i < d.length; i += 4 * 7) seen.add(d[i] * 65536 + d[i + 1] * 256 + d[i + 2]);
  return seen.size > 8;
}"""


def open_live_view(p, url: str, errors: list[str]):
    """The live view's page at ``url`` in a new headless Chromium, once it shows a frame;
    page errors are appended to ``errors``. Returns (browser, page)."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/")
    page.wait_for_function(
        "document.getElementById('img').dataset.mid !== undefined", timeout=30000
    )
    return browser, page


def test_the_page_shows_image_profile_traces_and_advancing_message_ids(tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    rv = RunningView(tmp_path, "view-browser", rate=10.0)
    errors: list[str] = []
    try:
        with sync_api.sync_playwright() as p:
            browser, page = open_live_view(p, rv.url, errors)
            for canvas in ("img", "profile", "raw", "trace", "cb"):
                page.wait_for_function(CANVAS_NOT_BLANK, arg=canvas, timeout=30000)
            first = int(page.inner_text("#s-mid"))
            page.wait_for_function(
                f"Number(document.getElementById('s-mid').textContent) > {first + 2}",
                timeout=30000,
            )
            shown = int(page.get_attribute("#img", "data-mid"))
            assert shown >= first
            assert "scan_0001" in page.inner_text("#img-title")
            assert "Intensity (integrate.intensity)" in page.inner_text("#prof-title")
            assert page.inner_text("#s-run") == "view-browser"
            page.screenshot(path=str(shots / "live-view.png"), full_page=True)

            # Pause freezes what is displayed; the status line keeps counting.
            page.click("#pause")
            frozen = page.get_attribute("#img", "data-mid")
            mid_now = int(page.inner_text("#s-mid"))
            page.wait_for_function(
                f"Number(document.getElementById('s-mid').textContent) > {mid_now + 2}",
                timeout=30000,
            )
            assert page.get_attribute("#img", "data-mid") == frozen
            page.click("#pause")

            # Zoom by dragging a rectangle: the title names the full-resolution region.
            box = page.locator("#img").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6)
            page.mouse.up()
            page.wait_for_function(
                "document.getElementById('img-title').textContent.includes('zoom')", timeout=30000
            )
            page.wait_for_function(
                "document.getElementById('img-cursor').textContent.includes('x ')", timeout=30000
            )
            page.screenshot(path=str(shots / "live-view-zoom.png"), full_page=True)
            browser.close()
    finally:
        stderr = rv.stop()
    assert not errors, errors
    assert rv.proc.returncode == rv.clean_exit, stderr
    keep = os.environ.get("SHMPIPE_SCREENSHOTS")
    if keep:  # docs/img is refreshed from here: SHMPIPE_SCREENSHOTS=docs/img pytest ...
        for f in shots.iterdir():
            shutil.copy(f, REPO / keep / f.name)
