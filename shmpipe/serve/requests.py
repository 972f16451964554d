"""The write requests of the API, checked field by field before anything changes.

A bad request raises :class:`BadRequest` naming the field; nothing is stored until every
field has passed, so a refused request leaves the service as it was.
"""

from __future__ import annotations

from typing import Any

from shmpipe.config import ConfigError
from shmpipe.serve import discovery
from shmpipe.serve.plan import group_id
from shmpipe.serve.scheduler import Scheduler


class BadRequest(ValueError):
    """A request the API refuses with 400; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _text(body: dict[str, Any], field: str, required: bool = True) -> str:
    value = body.get(field, "")
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(field, f"must be a non-empty string, got {value!r}")
    return value


def _check_fields(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            unknown[0], f"unknown field; this request takes {', '.join(sorted(allowed))}"
        )
    return body


def reprocess(scheduler: Scheduler, body: Any) -> int:
    """Queue a reprocessing run (``POST /api/runs``); returns its id.

    Parameters
    ----------
    scheduler
        The service's scheduler (its configuration, store, followed beamtimes).
    body
        ``{"recipe", "beamtime", "data_source", "streams": [...], "set": {...}}``.
    """
    body = _check_fields(body, {"recipe", "beamtime", "data_source", "streams", "set"})
    recipe_name = _text(body, "recipe")
    recipe = scheduler.service.recipe(recipe_name)
    if recipe is None:
        known = ", ".join(r.name for r in scheduler.service.recipes)
        raise BadRequest("recipe", f"no recipe {recipe_name!r} (recipes: {known})")
    beamtime = _text(body, "beamtime")
    token = scheduler.followed().get(beamtime)
    if token is None:
        raise BadRequest("beamtime", f"{beamtime!r} is not followed (POST /api/beamtimes)")
    data_source = _text(body, "data_source")
    if discovery.is_output(data_source, scheduler.outputs):
        raise BadRequest("data_source", f"{data_source!r} holds results of a recipe, not data")
    streams = body.get("streams", [])
    if not isinstance(streams, list) or not all(isinstance(s, str) and s for s in streams):
        raise BadRequest("streams", f"must be a list of stream names, got {streams!r}")
    overrides = body.get("set", {})
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise BadRequest("set", f"must be an object of dotted keys to values, got {overrides!r}")
    try:
        workers = scheduler.base_workers(recipe_name, overrides)
    except ConfigError as exc:
        raise BadRequest(f"set.{exc.key}" if exc.key else "set", exc.message) from None
    if workers > scheduler.service.workers:
        raise BadRequest(
            "set.run.workers",
            f"{workers} workers, the node has {scheduler.service.workers} (serve.max_workers)",
        )
    endpoint = scheduler.service.serve.endpoint
    names = discovery.streams(endpoint, beamtime, data_source, token)
    if names is None:
        raise BadRequest("data_source", f"ASAPO at {endpoint} cannot list its streams now")
    missing = [s for s in streams if s not in names]
    if missing or not names:
        raise BadRequest(
            "streams" if missing else "data_source",
            f"no stream {missing[0]!r} in {beamtime}/{data_source}" if missing
            else f"{beamtime}/{data_source} has no streams",
        )  # fmt: skip
    with scheduler.versions:
        version = scheduler.store.next_version(recipe_name, beamtime, data_source)
        run_id = scheduler.store.add_run(
            recipe=recipe_name,
            beamtime=beamtime,
            data_source=data_source,
            version=version,
            streams=streams,
            overrides=overrides,
            group_id=group_id(recipe_name, version),
            start_stream=streams[0] if streams else names[0],
            workers=workers,
        )
    scheduler.wake.set()
    return run_id


def add_beamtime(scheduler: Scheduler, body: Any) -> str:
    """Follow one more beamtime (``POST /api/beamtimes``); returns its id."""
    body = _check_fields(body, {"id", "token"})
    beamtime = _text(body, "id")
    token = _text(body, "token", required=False)
    scheduler.store.add_beamtime(beamtime, token)
    scheduler.wake.set()
    return beamtime


def stop(scheduler: Scheduler, run_id: int) -> dict[str, Any] | None:
    """Ask run ``run_id`` to stop (drain); None if there is no such run."""
    run = scheduler.store.run(run_id)
    if run is None:
        return None
    if run["state"] in ("queued", "running"):
        scheduler.store.update(run_id, stop_requested=1)
        scheduler.wake.set()
    return scheduler.store.run(run_id)
