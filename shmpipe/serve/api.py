"""The HTTP API (JSON) and the page, as a Starlette application.

Reads are open to loopback clients; every write, and a read from another host, needs
``Authorization: Bearer TOKEN`` with a token of ``[serve] token_file`` (401 without it,
nothing changed). A bad request is 400 with ``{"error", "field"}``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import socket
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route

from shmpipe.serve import metrics, requests
from shmpipe.serve.openapi import OPENAPI
from shmpipe.serve.page import PAGE
from shmpipe.serve.plan import run_name
from shmpipe.serve.scheduler import Scheduler

_LOOPBACK = ("127.", "::1", "localhost")


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds") if t else None


def public_run(run: dict[str, Any], queue: list[int], view_host: str) -> dict[str, Any]:
    """A run as the API shows it."""
    view = None
    if run["view_port"] and run["state"] == "running":
        view = f"http://{view_host}:{run['view_port']}/"
    return {
        "id": run["id"],
        "name": run_name(run["recipe"], run["beamtime"], run["data_source"], run["version"]),
        "recipe": run["recipe"],
        "beamtime": run["beamtime"],
        "data_source": run["data_source"],
        "version": run["version"],
        "state": run["state"],
        "queue_position": queue.index(run["id"]) + 1 if run["id"] in queue else None,
        "started": _iso(run["started"]),
        "ended": _iso(run["ended"]),
        "frames_in": run["frames_in"],
        "frames_out": run["frames_out"],
        "errors": run["errors"],
        "rate": round(run["rate"], 2),
        "workers": run["workers"],
        "restarts": run["restarts"],
        "exit_code": run["exit_code"],
        "streams": run["streams"],
        "overrides": run["overrides"],
        "outputs": run["outputs"],
        "group_id": run["group_id"],
        "message": run["message"],
        "summary": run["summary"],
        "stop_requested": bool(run["stop_requested"]),
        "pid": run["pid"] or None,
        "view": view,
    }


def create_app(scheduler: Scheduler) -> Starlette:
    """The application of one service."""
    service = scheduler.service
    view_host = service.serve.view_host or service.serve.host
    if view_host in ("0.0.0.0", "::"):
        view_host = socket.getfqdn()  # a link to "every address" leads nowhere

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return any(hmac.compare_digest(token.strip(), t) for t in service.tokens)

    def refused(request: Request, write: bool) -> JSONResponse | None:
        client = request.client.host if request.client else ""
        if (write or not client.startswith(_LOOPBACK)) and not authorized(request):
            return JSONResponse(
                {"error": "this needs Authorization: Bearer TOKEN (a token of serve.token_file)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def bad(exc: requests.BadRequest) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)

    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise requests.BadRequest("body", "not valid JSON") from None

    def runs_view() -> list[dict[str, Any]]:
        runs = scheduler.store.runs()
        queue = [r["id"] for r in runs if r["state"] == "queued"]
        return [public_run(r, queue, view_host) for r in runs]

    async def page(request: Request):
        return HTMLResponse(PAGE)  # no data in it: what it shows comes from the API

    async def openapi(request: Request):
        return JSONResponse(OPENAPI)

    async def list_runs(request: Request):
        return refused(request, False) or JSONResponse(runs_view())

    async def get_run(request: Request):
        if (r := refused(request, False)) is not None:
            return r
        found = [r for r in runs_view() if str(r["id"]) == request.path_params["id"]]
        if not found:
            return JSONResponse({"error": "no such run", "field": "id"}, status_code=404)
        return JSONResponse(found[0])

    async def post_run(request: Request):
        if (r := refused(request, True)) is not None:
            return r
        try:
            # It asks ASAPO for the streams: off the event loop, which serves the page meanwhile.
            body = await body_of(request)
            run_id = await run_in_threadpool(requests.reprocess, scheduler, body)
        except requests.BadRequest as exc:
            return bad(exc)
        run = next(r for r in runs_view() if r["id"] == run_id)
        return JSONResponse(run, status_code=201)

    async def stop_run(request: Request):
        if (r := refused(request, True)) is not None:
            return r
        try:
            run_id = int(request.path_params["id"])
        except ValueError:
            return bad(requests.BadRequest("id", "must be a run id (an integer)"))
        if requests.stop(scheduler, run_id) is None:
            return JSONResponse({"error": "no such run", "field": "id"}, status_code=404)
        return JSONResponse(next(r for r in runs_view() if r["id"] == run_id), status_code=202)

    async def list_recipes(request: Request):
        if (r := refused(request, False)) is not None:
            return r
        return JSONResponse(
            [
                {
                    "name": x.name,
                    "config": x.config,
                    "match": {"beamtime": "*", "data_source": "*", **x.match},
                    "data_sources": x.data_sources,
                    "set": x.set,
                }
                for x in service.recipes
            ]
        )

    async def list_beamtimes(request: Request):
        if (r := refused(request, False)) is not None:
            return r
        return JSONResponse(sorted(scheduler.followed()))

    async def post_beamtime(request: Request):
        if (r := refused(request, True)) is not None:
            return r
        try:
            beamtime = requests.add_beamtime(scheduler, await body_of(request))
        except requests.BadRequest as exc:
            return bad(exc)
        return JSONResponse({"id": beamtime, "followed": sorted(scheduler.followed())}, 201)

    async def node(request: Request):
        if (r := refused(request, False)) is not None:
            return r
        runs = runs_view()
        return JSONResponse(
            {
                "max_workers": service.workers,
                "workers_in_use": sum(r["workers"] for r in runs if r["state"] == "running"),
                "queue": [r["id"] for r in runs if r["state"] == "queued"],
                "running": sum(r["state"] == "running" for r in runs),
                "problems": {bt: e for bt, e in scheduler.beamtime_errors.items() if e},
            }
        )

    async def prometheus(request: Request):
        if (r := refused(request, False)) is not None:
            return r
        text = metrics.render(runs_view(), service.workers)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[
            Route("/", page),
            Route("/openapi.json", openapi),
            Route("/api/runs", list_runs, methods=["GET"]),
            Route("/api/runs", post_run, methods=["POST"]),
            Route("/api/runs/{id}", get_run, methods=["GET"]),
            Route("/api/runs/{id}/stop", stop_run, methods=["POST"]),
            Route("/api/recipes", list_recipes, methods=["GET"]),
            Route("/api/beamtimes", list_beamtimes, methods=["GET"]),
            Route("/api/beamtimes", post_beamtime, methods=["POST"]),
            Route("/api/node", node, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )
