"""The service's page in a real browser (headless Chromium driven by playwright): the runs
with their live views one click away, and the reprocessing form."""

from __future__ import annotations

from shmpipe.asapo.process import AsapoProcess
from tests.serve_helpers import TOKEN, Serve, service_toml
from tests.test_serve import recipe, send

# The same Chromium and flags as the live view's browser test (skipped where it is missing).
from tests.test_view_browser import CHROMIUM, FLAGS, sync_api  # noqa: E402
from tests.view_helpers import free_port


def row_state(run_id: int) -> str:
    """A JavaScript expression: the state shown in the row of run ``run_id`` ('' if none)."""
    return f"(document.querySelector('#runs tr[data-id=\"{run_id}\"] .state')?.textContent || '')"


def test_page_lists_runs_links_live_views_and_reprocesses(tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    errors: list[str] = []
    with AsapoProcess(tmp_path / "asapo-data") as asapo:
        extra = f"view_port = {free_port()}"
        cfg = service_toml(tmp_path, asapo.server_name, [recipe(tmp_path, asapo)], extra=extra)
        serve = Serve(cfg).start()
        try:
            send(asapo, "det1", 4)
            with sync_api.sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 700})
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(serve.url + "/")
                page.wait_for_function(f"{row_state(1)}.startsWith('running')", timeout=60000)
                page.wait_for_selector('#runs tr[data-id="1"] a', timeout=30000)
                link = page.get_attribute('#runs tr[data-id="1"] a', "href")
                assert link == serve.run(1)["view"]
                page.wait_for_function(
                    "document.querySelector('#runs tr[data-id=\"1\"] td.num').textContent === '4'",
                    timeout=60000,
                )
                # One click away: the link opens the run's live view.
                with page.expect_popup() as popup:
                    page.click('#runs tr[data-id="1"] a')
                view = popup.value
                view.wait_for_load_state()
                assert view.url == link
                assert view.title(), "the live view page did not load"
                view.close()
                # The form refuses a request without the token, and queues one with it.
                page.fill("#data_source", "det1")
                page.fill("#set", "kernels.integrate.npt = 500")
                page.fill("#token", "")
                page.click("button[type=submit]")
                page.wait_for_function(
                    "document.getElementById('result').textContent.includes('Bearer')",
                    timeout=10000,
                )
                assert len(serve.runs()) == 1
                page.fill("#token", TOKEN)
                page.click("button[type=submit]")
                page.wait_for_function(
                    "document.getElementById('result').textContent.includes('version 1')",
                    timeout=10000,
                )
                page.wait_for_function(f"{row_state(2)} !== ''", timeout=10000)
                page.wait_for_function(f"{row_state(2)} === 'finished'", timeout=90000)
                assert serve.run(2)["overrides"] == {"kernels.integrate.npt": 500}
                assert serve.run(2)["frames_out"] == 4
                page.screenshot(path=str(shots / "service.png"), full_page=True)
                browser.close()
        finally:
            assert serve.stop() == 0, serve.output()
    assert not errors, errors
