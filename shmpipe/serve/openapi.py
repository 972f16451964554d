"""The OpenAPI description of the service's HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

_RUN: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string", "description": "the pipeline's run.name"},
        "recipe": {"type": "string"},
        "beamtime": {"type": "string"},
        "data_source": {"type": "string"},
        "version": {"type": "integer", "description": "0: the recipe's own run; k: -r<k>"},
        "state": {"enum": ["queued", "running", "finished", "failed", "stopped"]},
        "queue_position": {"type": ["integer", "null"]},
        "started": {"type": ["string", "null"], "format": "date-time"},
        "ended": {"type": ["string", "null"], "format": "date-time"},
        "frames_in": {"type": "integer"},
        "frames_out": {"type": "integer"},
        "errors": {"type": "integer"},
        "rate": {"type": "number", "description": "frames/s published, lately"},
        "workers": {"type": "integer"},
        "restarts": {"type": "integer"},
        "exit_code": {"type": ["integer", "null"]},
        "streams": {"type": "array", "items": {"type": "string"}},
        "overrides": {"type": "object"},
        "outputs": {"type": "array", "items": {"type": "string"}},
        "group_id": {"type": "string"},
        "message": {"type": "string"},
        "summary": {"type": "string", "description": "the last pipeline's end-of-run summary"},
        "stop_requested": {"type": "boolean"},
        "pid": {"type": ["integer", "null"], "description": "the pipeline's supervisor"},
        "view": {"type": ["string", "null"], "description": "the run's live view"},
    },
}
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
}
_BEARER = [{"bearer": []}]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_FAILED = {
    "400": _json(_ERROR, "a bad request; field names what is wrong"),
    "401": _json(_ERROR, "no valid Authorization: Bearer TOKEN"),
}
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}]
_REPROCESS = {
    "type": "object",
    "required": ["recipe", "beamtime", "data_source"],
    "properties": {
        "recipe": {"type": "string"},
        "beamtime": {"type": "string"},
        "data_source": {"type": "string"},
        "streams": {
            "type": "array",
            "items": {"type": "string"},
            "description": "empty: all, from the first",
        },
        "set": {"type": "object", "description": 'overrides, e.g. {"kernels.integrate.npt": 500}'},
    },
}
_BEAMTIME = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": {"type": "string"}, "token": {"type": "string"}},
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "shmpipe serve",
        "version": "1",
        "description": "The pipelines of one node: runs started from recipes, reprocessing "
        "into versioned outputs, the node's workers shared by all runs.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Run": _RUN, "Error": _ERROR},
    },
    "paths": {
        "/api/runs": {
            "get": {
                "summary": "every run, oldest first",
                "responses": {"200": _json({"type": "array", "items": _RUN}, "the runs")},
            },
            "post": {
                "summary": "reprocess: a run in a fresh consumer group, outputs versioned -r<k>",
                "security": _BEARER,
                "requestBody": _body(_REPROCESS),
                "responses": {"201": _json(_RUN, "the queued run"), **_FAILED},
            },
        },
        "/api/runs/{id}": {
            "get": {
                "summary": "one run",
                "parameters": _ID,
                "responses": {"200": _json(_RUN, "the run"), "404": _json(_ERROR, "no run")},
            }
        },
        "/api/runs/{id}/stop": {
            "post": {
                "summary": "stop a run: it drains (as SIGTERM) and ends stopped",
                "security": _BEARER,
                "parameters": _ID,
                "responses": {"202": _json(_RUN, "the run, stopping"), **_FAILED},
            }
        },
        "/api/recipes": {
            "get": {"summary": "the recipes", "responses": {"200": {"description": "recipes"}}}
        },
        "/api/beamtimes": {
            "get": {
                "summary": "the followed beamtimes",
                "responses": {"200": {"description": "ids"}},
            },
            "post": {
                "summary": "follow one more beamtime",
                "security": _BEARER,
                "requestBody": _body(_BEAMTIME),
                "responses": {"201": {"description": "followed"}, **_FAILED},
            },
        },
        "/metrics": {
            "get": {
                "summary": "the runs and the node's workers in the Prometheus text format",
                "responses": {"200": {"description": "text/plain; version=0.0.4"}},
            }
        },
        "/api/node": {
            "get": {
                "summary": "workers in use, the node's budget, the queue, and why a followed "
                "beamtime cannot be listed (problems: beamtime -> reason)",
                "responses": {"200": {"description": "the node"}},
            }
        },
    },
}
