"""The service configuration: ``[serve]``, its followed beamtimes and ``[[recipes]]``.

Every mistake is a :class:`~shmpipe.config.ConfigError` naming the key and the file, found by
:func:`load_service_config` before anything starts (``shmpipe.serve.check`` then loads each
recipe's pipeline configuration with the overrides the service would give it).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmpipe.config import ConfigError, build_dataclass, read_toml
from shmpipe.config.schema import toml_value


@dataclass
class ServeSection:
    """``[serve]``: the service itself."""

    port: int = 8090
    """HTTP port of the API and the page; 0: any free port (printed at start)."""
    host: str = "127.0.0.1"
    """Listen address; reads are open to loopback clients only, writes always need a token."""
    state: str = "serve.sqlite"
    """SQLite file holding runs, versions, outputs and added beamtimes (relative: to this
    file's folder). The run logs go to the folder beside it, ``<state>.runs``."""
    token_file: str = "serve.tokens"
    """One token a line; every write (and a read from another host) needs one of them."""
    max_workers: int = 0
    """Workers all runs together may use; 0: cores - 2, at least 1."""
    endpoint: str = "localhost:8400"
    """The ASAPO endpoint of every followed beamtime (host:port)."""
    beamtimes: list[dict[str, Any]] = field(default_factory=list)
    """Beamtimes to follow: ``{ id = "bt1", token = "..." }`` or ``{ id = "bt1", token_file =
    "bt1.token" }``; more are added at run time with POST /api/beamtimes."""
    output_dir: str = "."
    """Working folder of the pipelines: relative output paths of recipes land here."""
    poll_s: float = 2.0
    """How often to look for new data sources in the followed beamtimes."""
    restart_backoff_s: float = 1.0
    """First wait before restarting a pipeline that died; doubled each time, up to 60 s."""
    max_restarts: int = 10
    """A pipeline that dies is started again at most this many times in a row (a death after
    published frames counts anew); then its run ends failed."""
    view_port: int = 0
    """First port of the runs' live views (one port each, upwards); 0: no live views."""
    view_host: str = ""
    """Host name in the live-view links; empty: the listen address (this machine's name when
    that is every address, 0.0.0.0)."""

    def validate(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535")
        if self.max_workers < 0:
            raise ValueError("max_workers must be >= 0 (0: cores - 2)")
        if self.poll_s <= 0:
            raise ValueError("poll_s must be > 0")


@dataclass
class Recipe:
    """``[[recipes]]``: which pipeline runs on which data."""

    name: str = ""
    """Recipe name, unique; part of each run's name, consumer group and outputs."""
    config: str = ""
    """The pipeline TOML (relative: to the service file's folder). Its ASAPO source's endpoint,
    beamtime, data source and token come from the service."""
    match: dict[str, str] = field(default_factory=dict)
    """Glob patterns on ``beamtime`` and ``data_source`` (missing: ``*``)."""
    data_sources: list[str] = field(default_factory=list)
    """Data sources to look at where ASAPO cannot list them."""
    set: dict[str, Any] = field(default_factory=dict)
    """Overrides, as ``--set``: ``{ "run.workers" = 1 }``."""

    def validate(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"name must be letters, digits, - or _ (got {self.name!r})")
        if not self.config:
            raise ValueError("config must name a pipeline TOML file")
        unknown = set(self.match) - {"beamtime", "data_source"}
        if unknown:
            raise ValueError(f"match takes beamtime and data_source, not {sorted(unknown)}")

    def matches(self, beamtime: str, data_source: str) -> bool:
        """Whether this recipe runs on ``data_source`` of ``beamtime``."""
        return fnmatch.fnmatchcase(beamtime, self.match.get("beamtime", "*")) and (
            fnmatch.fnmatchcase(data_source, self.match.get("data_source", "*"))
        )


@dataclass
class ServiceConfig:
    """The validated service configuration, paths made absolute."""

    path: str
    serve: ServeSection
    recipes: list[Recipe]
    tokens: list[str]
    beamtimes: dict[str, str]
    """Followed beamtimes of the file: id -> ASAPO token."""

    @property
    def workers(self) -> int:
        """The node's worker budget (``max_workers``, or cores - 2, at least 1)."""
        return self.serve.max_workers or max(1, (os.cpu_count() or 1) - 2)

    @property
    def state_path(self) -> Path:
        return Path(self.serve.state)

    @property
    def run_dir(self) -> Path:
        """Where the runs' logs and exit files go."""
        return Path(self.serve.state + ".runs")

    def recipe(self, name: str) -> Recipe | None:
        return next((r for r in self.recipes if r.name == name), None)


def overrides_of(table: dict[str, Any]) -> list[str]:
    """``--set`` assignments (``key=value``, TOML values) from a table of dotted keys."""
    return [f"{key}={toml_value(value)}" for key, value in table.items()]


def _read_tokens(path: Path, key: str, file: str) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", key, file) from None
    tokens = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
    if not tokens:
        raise ConfigError(f"{path} holds no token (one a line)", key, file)
    return tokens


def beamtime_entry(entry: Any, key: str, file: str, base: Path) -> tuple[str, str]:
    """``(id, token)`` of one ``beamtimes`` item: ``{id, token}`` or ``{id, token_file}``."""
    if not isinstance(entry, dict):
        raise ConfigError(f"must be a table {{ id = ..., token = ... }}, got {entry!r}", key, file)
    unknown = set(entry) - {"id", "token", "token_file"}
    if unknown:
        raise ConfigError(
            f"unknown key {sorted(unknown)[0]!r}; takes id, token, token_file", key, file
        )
    bt = entry.get("id")
    if not isinstance(bt, str) or not bt:
        raise ConfigError('needs id = "<beamtime>"', f"{key}.id", file)
    if "token_file" in entry:
        return bt, _read_tokens(base / str(entry["token_file"]), f"{key}.token_file", file)[0]
    token = entry.get("token", "")
    if not isinstance(token, str):
        raise ConfigError(f"must be a string, got {token!r}", f"{key}.token", file)
    return bt, token


def load_service_config(path: str | Path) -> ServiceConfig:
    """Read and validate a service TOML file.

    Parameters
    ----------
    path
        The service configuration.

    Raises
    ------
    ConfigError
        Naming the file and the key of the first problem found.
    """
    file = str(path)
    raw = read_toml(path)
    base = Path(path).resolve().parent
    unknown = set(raw) - {"serve", "recipes"}
    if unknown:
        raise ConfigError("unknown section; known: serve, recipes", sorted(unknown)[0], file)
    serve = build_dataclass(ServeSection, raw.get("serve", {}), "serve", file)
    serve.state = str(base / serve.state)
    serve.output_dir = str(base / serve.output_dir)
    tokens = _read_tokens(base / serve.token_file, "serve.token_file", file)
    beamtimes = dict(
        beamtime_entry(e, f"serve.beamtimes[{i}]", file, base)
        for i, e in enumerate(serve.beamtimes)
    )
    tables = raw.get("recipes", [])
    if not isinstance(tables, list):
        raise ConfigError("must be [[recipes]] tables", "recipes", file)
    recipes: list[Recipe] = []
    for i, table in enumerate(tables):
        recipe = build_dataclass(Recipe, table, f"recipes[{i}]", file)
        if any(r.name == recipe.name for r in recipes):
            raise ConfigError(f"a second recipe named {recipe.name!r}", f"recipes[{i}].name", file)
        recipe.config = str(base / recipe.config)
        if not Path(recipe.config).is_file():
            raise ConfigError(f"no such file {recipe.config}", f"recipes[{i}].config", file)
        recipes.append(recipe)
    return ServiceConfig(file, serve, recipes, tokens, beamtimes)


def reference() -> str:
    """The keys of the service file as Markdown tables (docs/service.md quotes them)."""
    import dataclasses
    import json

    from shmpipe.config.reference import attribute_docs

    out = []
    for cls, title in ((ServeSection, "[serve]"), (Recipe, "[[recipes]]")):
        out += [f"| `{title}` key | default | what |", "|---|---|---|"]
        docs = attribute_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = " ".join(docs.get(f.name, "").split())
            out.append(f"| `{f.name}` | `{json.dumps(default)}` | {text} |")
        out.append("")
    return "\n".join(out)
