"""Configuration: a TOML file, command-line overrides, and validation before anything starts.

Every section is a dataclass (the schema); sources, kernels and sinks bring their own
``Params`` dataclass. Validation turns the merged tables into those dataclasses and reports the
first problem as a ``ConfigError`` naming the key and the file, so that a typo costs a second
at the prompt, not a started pipeline.

::

    [run]                          # RunSection
    workers = 16
    [ring]                         # RingSection
    slots = 0                      # 0: 2 x workers + 2 (more when slots are small)
    [source]
    kind = "sim"                   # + the source's parameters
    [kernels.integrate]            # one table per kernel, chained in file order
    kind = "azimuthal_integrate"   # + the kernel's parameters
    [reducers.avg]                 # across frames, in the publisher (shmpipe.reduce)
    kind = "mean"                  # + input, every and the reducer's parameters
    [[sinks]]
    kind = "hdf5"                  # + the sink's parameters
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shmpipe.api.kernel import Kernel
from shmpipe.api.registry import PluginLookupError, resolve
from shmpipe.api.sink import Sink
from shmpipe.api.source import Source


class ConfigError(ValueError):
    """A configuration mistake; ``str()`` names the file and the key."""

    def __init__(self, message: str, key: str = "", file: str | None = None) -> None:
        self.key, self.file, self.message = key, file, message
        where = f"{file or '<command line>'}: " + (f"{key}: " if key else "")
        super().__init__(where + message)

    def __reduce__(self):
        # Rebuilt from its parts, not from str(self): an error raised in a child process
        # (a benchmark's, a spawned worker's) keeps one "file: key:" prefix, not two.
        return type(self), (self.message, self.key, self.file)


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass
class RunSection:
    """How the pipeline runs."""

    name: str = ""
    """Run name, used by ``shmpipe status``; empty: ``run-<pid>``."""
    workers: int = 2
    """Worker processes (the parallelism; one per core is the usual choice)."""
    ordered: bool = True
    """Publish in message order (bounded reorder window) instead of completion order."""
    on_error: Literal["fail", "skip"] = "fail"
    """A kernel exception stops the run (fail) or becomes an error record (skip)."""
    max_attempts: int = 3
    """A frame that killed this many workers is quarantined as an error record."""
    watchdog: bool = True
    """Kill and replace a worker stuck on one frame (or stopped) for longer than the limit,
    and retry its frames; false: never."""
    watchdog_s: float = 0.0
    """A fixed limit on one frame; 0: adaptive, max(watchdog_floor_s, watchdog_factor x the
    chain's measured p99 time per frame)."""
    watchdog_floor_s: float = 10.0
    """The adaptive limit is never below this (start-up, first frames, no measurement yet)."""
    watchdog_factor: float = 20.0
    """The adaptive limit in multiples of the chain's p99 time per frame."""
    stall_s: float = 5.0
    """Log a stall (who holds which message) when nothing was published for this long, and
    never less than 5 x the chain's p99, with frames in flight; 0: never."""
    kernel_threads: int = 1
    """Numba threads each kernel may use inside one worker."""
    max_restarts: int = 100
    """Worker restarts allowed in one run before it stops with an error."""
    cache_dir: str = ""
    """Directory for kernel tables (CSR, LUT); empty: ~/.cache/shmpipe."""
    progress: Literal["auto", "on", "off"] = "auto"
    """Live progress line: on a terminal (auto), always, or never."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text or as JSON objects (for log shippers)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe log level printed."""
    commit_every: int = 64
    """Commit sinks (then acknowledge) at least every this many records."""
    commit_interval_s: float = 0.5
    """... and at least this often while records arrive."""
    drain_timeout_s: float = 60.0
    """On Ctrl-C/SIGTERM, how long frames in flight may take to finish before a hard stop."""
    setup_timeout_s: float = 600.0
    """Longest the start-up checks and the kernels' set-up may take before the run refuses
    to start; 0: no limit."""
    reducer_state: str = "shmpipe_reducers.ckpt"
    """Checkpoint of the reducers' state and the message ids it includes (``{run}`` is
    replaced; two files, this one and ``.1``, written in turn before every acknowledgement);
    a run continues it when its sinks do (``mode = "resume"``), refuses it under ``"new"``,
    starts afresh under ``"overwrite"``. Written only when the run has ``[reducers.*]``."""


@dataclass
class RingSection:
    """The shared-memory rings."""

    slots: int = 0
    """Slots in each ring; 0: 2 x workers + 2, or more small slots (up to 256 within
    64 MiB) so that small messages travel in batches."""
    slot_bytes: int = 0
    """Payload bytes per input slot; 0: what the source declares."""
    header_bytes: int = 65536
    """Bytes per slot for the message's header: its metadata and part layout (pickled)."""


@dataclass
class MetricsSection:
    """Prometheus metrics."""

    port: int = 0
    """Serve metrics on this port; 0: off."""
    host: str = "127.0.0.1"
    """Address the metrics endpoint listens on."""


@dataclass
class TangoSection:
    """The Tango device (needs ``pip install 'shmpipe[tango]'``)."""

    device: str = ""
    """Serve a Tango device of this name (``domain/family/member``); empty: none."""
    nodb: bool = False
    """Run without a Tango database (clients use ``tango://host:port/<device>#dbase=no``)."""
    port: int = 0
    """TCP port of the device server; needed with nodb, 0 otherwise: any free port."""
    instance: str = "shmpipe"
    """Server instance name (the Tango database knows the device as ShmpipeDS/<instance>)."""
    event_hz: float = 10.0
    """Most change events per second per attribute."""
    roi_output: str = ""
    """The output GetRoiForFrame and RoIs refer to; empty: the first ``*.roi_sums``."""
    profile: str = ""
    """The output shown as LatestProfile; empty: the first 1-D output with an axis."""
    hit_output: str = ""
    """The output HitRate counts a frame a hit by; empty: the first ``*.count_above``."""
    hit_min: float = 1.0
    """A frame is a hit when its hit_output is at least this."""
    hit_window: int = 100
    """HitRate is the fraction of hits among this many latest frames."""


@dataclass
class ViewSection:
    """The preview tap and the live web view."""

    port: int = 0
    """Serve the live web view on this port; 0: off (``shmpipe view RUN`` can still attach)."""
    host: str = "127.0.0.1"
    """Address the view listens on; the default admits this machine only."""
    max_hz: float = 10.0
    """Most copies per second of the full outputs and the raw frame into the preview tap; a
    copy of 1 MiB or more also waits until a reader has taken the last one (at most 1 s)."""
    history: int = 100000
    """Frames whose small outputs (scalars, short vectors) the preview tap keeps."""
    zmq: str = ""
    """Also publish the displayed image for lavue on this ZeroMQ address (``tcp://*:5555``)."""
    image: str = ""
    """Output shown as the image by default (and sent to lavue); empty: the first 2-D one."""
    tap: bool = True
    """Keep the preview tap (for views and the Tango device); false: none at all."""
    nice: int = 19
    """Niceness added to the view process started with the run (0..19): when the cores are
    busy it yields them to the workers and shows fewer images instead (lower: more images on
    busy cores, at some of the workers' throughput)."""
    geometry: str = ""
    """Detector geometry file the raw frame is assembled with; empty: the ``geometry`` of
    the first kernel that has one, else the built-in layout (LAMBDA 9M for its 12 modules)."""


SECTIONS: dict[str, type] = {
    "run": RunSection,
    "ring": RingSection,
    "metrics": MetricsSection,
    "tango": TangoSection,
    "view": ViewSection,
}
PLUGIN_SECTIONS = ("source", "kernels", "reducers", "sinks")
DEFAULT_SOURCE = {"kind": "sim"}
DEFAULT_KERNELS = {"checksum": {"kind": "checksum"}}
DEFAULT_SINKS = [{"kind": "null"}]
# Plug-in tables validated in modules of their own, which import this one (not the reverse):
# shmpipe.config.reducers registers "reducers" when shmpipe.config is imported.
TABLE_VALIDATORS: dict[str, typing.Callable[..., list[PluginSpec]]] = {}


@dataclass
class PluginSpec:
    """One configured source, kernel or sink: its class and validated parameters."""

    kind: str
    cls: type
    params: Any
    name: str = ""

    def table(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self.params)}


@dataclass
class PipelineConfig:
    """The validated configuration of one run."""

    path: str | None
    run: RunSection
    ring: RingSection
    metrics: MetricsSection
    source: PluginSpec
    kernels: list[PluginSpec]
    sinks: list[PluginSpec]
    tango: TangoSection = field(default_factory=TangoSection)
    view: ViewSection = field(default_factory=ViewSection)
    reducers: list[PluginSpec] = field(default_factory=list)

    def effective(self) -> dict[str, Any]:
        """The configuration with every default filled in, as TOML-shaped dicts."""
        doc = {
            "run": dataclasses.asdict(self.run),
            "ring": dataclasses.asdict(self.ring),
            "metrics": dataclasses.asdict(self.metrics),
            "tango": dataclasses.asdict(self.tango),
            "view": dataclasses.asdict(self.view),
            "source": self.source.table(),
            "kernels": {k.name: k.table() for k in self.kernels},
            "sinks": [s.table() for s in self.sinks],
        }
        if self.reducers:  # only then: the digest of a run without reducers stays as it was
            doc["reducers"] = {r.name: r.table() for r in self.reducers}
        return doc

    def digest(self) -> str:
        """A short hash of the effective configuration, for lineage."""
        raw = json.dumps(self.effective(), sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def source_instance(self) -> Source:
        return self.source.cls(self.source.params, run_name=self.run.name)

    def sink_instances(self) -> list[Sink]:
        return [s.cls(s.params) for s in self.sinks]

    def kernel_instances(self) -> list[Kernel]:
        return [k.cls(k.name, k.params) for k in self.kernels]


# -- type checking of TOML values against dataclass fields ---------------------------------
def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return "none" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str, file: str | None) -> Any:
    """Check ``value`` against the type hint ``tp``; return it (ints widen to float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"must be {type_name(tp)}, got {value!r}", key, file)
    if origin in (types.UnionType, typing.Union):
        for a in args:
            try:
                return coerce(value, a, key, file)
            except ConfigError:
                continue
        raise ConfigError(f"must be {type_name(tp)}, got {value!r}", key, file)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"must be empty, got {value!r}", key, file)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, list | tuple):
            item = args[0] if args else Any
            out = [coerce(v, item, f"{key}[{i}]", file) for i, v in enumerate(value)]
            return tuple(out) if (origin or tp) is tuple else out
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"must be {type_name(tp)}, got {value!r} ({type(value).__name__})", key, file)


def build_dataclass(cls: type, table: dict[str, Any], prefix: str, file: str | None) -> Any:
    """Instantiate the dataclass ``cls`` from a TOML table, naming any bad key."""
    if not isinstance(table, dict):
        raise ConfigError(f"must be a table, got {table!r}", prefix, file)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise ConfigError(
                f"unknown key{did_you_mean(key, fields)}; {prefix or 'this table'} takes: "
                f"{', '.join(fields) or 'nothing'}",
                f"{prefix}.{key}" if prefix else key,
                file,
            )
    values = {k: coerce(v, hints[k], f"{prefix}.{k}", file) for k, v in table.items()}
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), prefix, file) from exc
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:
            raise ConfigError(str(exc), prefix, file) from exc
    return obj


# -- loading, overriding, validating --------------------------------------------------------
def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("no such configuration file", "", str(path))
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", "", str(path)) from exc


def parse_value(text: str) -> Any:
    """A command-line value: TOML syntax if it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set dotted.key=value`` to the raw tables (list items by index)."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set takes KEY=VALUE, got {assignment!r}", key)
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"no item {part} in this list", ".".join(parts[: i + 1]))
            node = node[int(part)]
            continue
        if part not in node:
            node[part] = [] if part == "sinks" and nxt.isdigit() else {}
        node = node[part]
        if part == "sinks" and isinstance(node, list) and nxt.isdigit() and int(nxt) == len(node):
            node.append({})
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"no item {last} in this list", key)
        node[int(last)] = parse_value(text)
    elif not isinstance(node, dict):
        raise ConfigError("cannot set a key inside a value that is not a table", key)
    else:
        node[last] = parse_value(text)


def _plugin(
    group: str,
    base: type,
    table: Any,
    key: str,
    file: str | None,
    name: str = "",
    given: typing.Collection[str] = (),
):
    if not isinstance(table, dict):
        raise ConfigError(f"must be a table, got {table!r}", key, file)
    table = dict(table)
    kind = table.pop("kind", name)
    if not isinstance(kind, str) or not kind:
        raise ConfigError('needs kind = "..."', f"{key}.kind", file)
    try:
        cls = resolve(group, kind, base)
    except PluginLookupError as exc:
        raise ConfigError(str(exc), f"{key}.kind", file) from exc
    _settle_aliases(cls.Params, table, key, given)
    params = build_dataclass(cls.Params, table, key, file)
    return PluginSpec(kind=kind, cls=cls, params=params, name=name)


def _settle_aliases(
    params_cls: type, table: dict[str, Any], key: str, given: typing.Collection[str]
) -> None:
    """Drop the file's value of a key whose alias (or canonical name) the command line set.

    ``Params.ALIASES`` maps an alias to its key (``{"bins": "npt"}``). A value given on the
    command line wins over the file under either name; two values from the same place are
    left for the plug-in to judge.
    """
    for alias, canonical in getattr(params_cls, "ALIASES", {}).items():
        if alias not in table or canonical not in table:
            continue
        alias_given, canonical_given = f"{key}.{alias}" in given, f"{key}.{canonical}" in given
        if alias_given and not canonical_given:
            del table[canonical]
        elif canonical_given and not alias_given:
            del table[alias]


def _has_key(tables: Any, dotted: str) -> bool:
    node = tables
    for part in dotted.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def _blame(exc: ConfigError, file_tables: dict[str, Any], given: dict[str, str]) -> ConfigError:
    """Name the command line as the origin of a mistake made there rather than the file.

    It is the command line's when the key in error is one it set (or lies inside one), or is
    a table it brought in that the file does not have (a misspelt section, say).
    """
    key = exc.key.split("[")[0]
    for set_key, label in given.items():
        brought_in = set_key.startswith(key + ".") and not _has_key(file_tables, key)
        if set_key == key or key.startswith(set_key + ".") or brought_in:
            return ConfigError(exc.message, exc.key, f"command line ({label})")
    return exc


def load_config(
    path: str | Path | None = None,
    overrides: list[str] = (),  # type: ignore[assignment]
    raw: dict[str, Any] | None = None,
    labels: list[str] | None = None,
) -> PipelineConfig:
    """Read, override and validate a configuration.

    Parameters
    ----------
    path : str or Path, optional
        A TOML file; None for the defaults (simulated detector, checksum, null sink).
    overrides : list of str
        ``dotted.key=value`` assignments applied after the file, in order.
    raw : dict, optional
        Tables to use instead of reading ``path`` (``path`` then only names them in errors).
    labels : list of str, optional
        How each override was given (``--workers 64``), to name it in an error; default
        ``--set <override>``.

    Raises
    ------
    ConfigError
        Naming the file and the key of the first problem found.
    """
    file = str(path) if path is not None else None
    if raw is None:
        raw = read_toml(path) if path is not None else {}
    file_tables = raw
    raw = copy.deepcopy(raw)
    labels = list(labels or [])
    given: dict[str, str] = {}
    for i, assignment in enumerate(overrides):
        label = labels[i] if i < len(labels) else f"--set {assignment}"
        try:
            apply_override(raw, assignment)
        except ConfigError as exc:
            raise ConfigError(exc.message, exc.key, f"command line ({label})") from None
        given[assignment.partition("=")[0].strip()] = label
    try:
        return _validate(raw, file, given)
    except ConfigError as exc:
        raise _blame(exc, file_tables, given) from None


def _validate(raw: dict[str, Any], file: str | None, given: dict[str, str]) -> PipelineConfig:
    known = [*SECTIONS, *PLUGIN_SECTIONS]
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"unknown section{did_you_mean(key, known)}; known: {', '.join(known)}", key, file
            )
    sections = {
        name: build_dataclass(cls, raw.get(name, {}), name, file) for name, cls in SECTIONS.items()
    }
    run: RunSection = sections["run"]
    if run.workers < 1:
        raise ConfigError("must be at least 1", "run.workers", file)
    if run.max_attempts < 1:
        raise ConfigError("must be at least 1", "run.max_attempts", file)
    for key in ("watchdog_s", "watchdog_floor_s", "watchdog_factor", "stall_s"):
        if getattr(run, key) < 0:
            raise ConfigError("must be 0 or more", f"run.{key}", file)
    src_table = raw.get("source", DEFAULT_SOURCE)
    if isinstance(src_table, dict) and "kind" not in src_table:
        src_table = {**DEFAULT_SOURCE, **src_table}
    source = _plugin("shmpipe.sources", Source, src_table, "source", file, given=given)
    ktables = raw.get("kernels", DEFAULT_KERNELS)
    if not isinstance(ktables, dict):
        raise ConfigError("must be tables [kernels.<name>]", "kernels", file)
    kernels = [
        _plugin("shmpipe.kernels", Kernel, t, f"kernels.{n}", file, name=n, given=given)
        for n, t in ktables.items()
    ]
    from shmpipe.shm.layout import (
        MAX_KERNELS,
    )

    if len(kernels) > MAX_KERNELS:
        raise ConfigError(f"at most {MAX_KERNELS} kernels in one chain", "kernels", file)
    stables = raw.get("sinks", DEFAULT_SINKS)
    if isinstance(stables, dict):
        stables = [stables]
    if not isinstance(stables, list):
        raise ConfigError("must be an array of tables [[sinks]]", "sinks", file)
    sinks = [
        _plugin("shmpipe.sinks", Sink, t, f"sinks.{i}", file, given=given)
        for i, t in enumerate(stables)
    ]
    reducers = TABLE_VALIDATORS["reducers"](raw.get("reducers", {}), kernels, file, given)
    if sections["tango"].device and not sections["view"].tap:
        raise ConfigError(
            "the Tango device reads the preview tap: set view.tap = true", "tango.device", file
        )
    return PipelineConfig(
        path=file,
        run=run,
        ring=sections["ring"],
        metrics=sections["metrics"],
        tango=_checked_tango(sections["tango"], file),
        view=_checked_view(sections["view"], file),
        source=source,
        kernels=kernels,
        sinks=sinks,
        reducers=reducers,
    )


def _checked_tango(tango: TangoSection, file: str | None) -> TangoSection:
    import re

    if tango.device and not re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+){2}", tango.device):
        raise ConfigError(
            f"must be a Tango device name domain/family/member, got {tango.device!r}",
            "tango.device",
            file,
        )
    if not 0 <= tango.port <= 65535:
        raise ConfigError(f"must be a TCP port, got {tango.port}", "tango.port", file)
    if tango.device and tango.nodb and not tango.port:
        raise ConfigError("without a database (nodb) the device needs a port", "tango.port", file)
    if not tango.event_hz > 0:
        raise ConfigError(f"must be more than 0, got {tango.event_hz}", "tango.event_hz", file)
    if tango.hit_window < 1:
        raise ConfigError(f"must be at least 1, got {tango.hit_window}", "tango.hit_window", file)
    if tango.device:
        try:
            import tango as pytango  # noqa: F401 - only whether it imports
        except ImportError as exc:
            raise ConfigError(
                f"a Tango device needs pytango, which is not installed ({exc}); "
                "pip install 'shmpipe[tango]'",
                "tango.device",
                file,
            ) from None
    return tango


def _checked_view(view: ViewSection, file: str | None) -> ViewSection:
    if not 0 <= view.port <= 65535:
        raise ConfigError(f"must be a TCP port (0 for none), got {view.port}", "view.port", file)
    if not view.max_hz > 0:
        raise ConfigError(f"must be more than 0, got {view.max_hz}", "view.max_hz", file)
    if view.history < 1:
        raise ConfigError(f"must be at least 1, got {view.history}", "view.history", file)
    if not 0 <= view.nice <= 19:
        raise ConfigError(f"must be 0..19, got {view.nice}", "view.nice", file)
    if view.zmq and not view.zmq.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(
            f"must be a ZeroMQ address such as tcp://*:5555, got {view.zmq!r}", "view.zmq", file
        )
    if (view.port or view.zmq) and not view.tap:
        raise ConfigError("a view needs the preview tap (view.tap = true)", "view.tap", file)
    if view.geometry:
        from native_kernels.geometry import load_geometry

        try:
            load_geometry(view.geometry)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            text = str(exc) if view.geometry in str(exc) else f"{view.geometry}: {exc}"
            raise ConfigError(text, "view.geometry", file) from None
    return view


# -- TOML output for `shmpipe config show` --------------------------------------------------
def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if v is None:
        return '""'
    return json.dumps(str(v))


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def to_toml(doc: dict[str, Any]) -> str:
    """Render the effective configuration as TOML (readable back by ``load_config``)."""
    out: list[str] = []
    for section in ("run", "ring", "metrics", "view", "tango", "source"):
        if section not in doc:
            continue  # a configuration recorded before the section existed
        out.append(f"[{section}]")
        out += [
            f"{_toml_key(k)} = {toml_value(v)}" for k, v in doc[section].items() if v is not None
        ]
        out.append("")
    for name, table in doc["kernels"].items():
        out.append(f"[kernels.{_toml_key(name)}]")
        out += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    for name, table in doc.get("reducers", {}).items():
        out.append(f"[reducers.{_toml_key(name)}]")
        out += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    for table in doc["sinks"]:
        out.append("[[sinks]]")
        out += [f"{_toml_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    return "\n".join(out)
