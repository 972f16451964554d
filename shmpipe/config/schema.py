"""Configuration: a TOML file, command-line overrides, and validation before anything starts.

Every section is a dataclass (the schema); sources, kernels and sinks bring their own
``Params`` dataclass. Validation turns the merged tables into those dataclasses and reports the
first problem as a ``ConfigError`` naming the key and the file, so that a typo costs a second
at the prompt, not a started pipeline.

::

    [run]                          # RunSection (sections.py)
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
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shmpipe.api.detector import RunDetector
from shmpipe.api.kernel import Kernel
from shmpipe.api.params import ParamError
from shmpipe.api.registry import PluginLookupError, resolve
from shmpipe.api.sink import Sink
from shmpipe.api.source import Source
from shmpipe.config.detector import DetectorDeclarationError, DetectorSection, run_detector
from shmpipe.config.sections import (
    DEFAULT_KERNELS,
    DEFAULT_SINKS,
    DEFAULT_SOURCE,
    PLUGIN_SECTIONS,
    SECTIONS,
    MetricsSection,
    RingSection,
    RunSection,
    TangoSection,
    ViewSection,
)
from shmpipe.config.toml_text import toml_value  # noqa: F401 - importable from here too

# Plug-in tables validated in modules of their own, which import this one (not the reverse):
# shmpipe.config.reducers registers "reducers" when shmpipe.config is imported.
TABLE_VALIDATORS: dict[str, typing.Callable[..., list[PluginSpec]]] = {}


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
class PluginSpec:
    """One configured source, kernel or sink: its class and validated parameters."""

    kind: str
    cls: type
    params: Any
    name: str = ""
    notes: list[str] = field(default_factory=list)
    """What loading decided for the user (a file's keys replaced from the command line)."""

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
    detector_section: DetectorSection = field(default_factory=DetectorSection)
    detector: RunDetector | None = None  # resolved from [detector] or a deprecated key
    reducers: list[PluginSpec] = field(default_factory=list)

    def effective(self) -> dict[str, Any]:
        """The configuration with every default filled in, as TOML-shaped dicts."""
        # [detector] only when declared: configurations without one keep their hashes.
        detector = {"detector": dataclasses.asdict(self.detector_section)}
        doc = {
            "run": dataclasses.asdict(self.run),
            **(detector if self.detector_section.declared() else {}),
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

    @property
    def notes(self) -> list[str]:
        """What loading decided that the user should hear of (logged when a run starts)."""
        return [n for spec in (self.source, *self.kernels, *self.sinks) for n in spec.notes]

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
        except ParamError as exc:
            key = f"{prefix}.{exc.key}" if prefix else exc.key
            raise ConfigError(exc.message, key, file) from exc
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


TOML_OPENERS = ('"', "'", "[", "{")
"""A command-line value starting with one of these is TOML (a string, an array, a table)."""


def parse_value(text: str) -> Any:
    """A command-line value: TOML syntax if it parses (numbers, booleans, lists), else a string.

    Only a bare word falls back to a string: a value that opens a TOML string, array or
    table (``TOML_OPENERS``) and does not parse is refused with the syntax error, so that
    ``"out_{stream}.h5`` (a closing quote lost to the shell) never names a file.

    Raises
    ------
    ValueError
        For a value that starts as TOML and is not valid TOML.
    """
    prefix = "v = "
    try:
        return tomllib.loads(f"{prefix}{text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if not text.lstrip().startswith(TOML_OPENERS):
            return text
        # tomllib counts columns on the line it was given: count them in the value instead.
        where = re.sub(
            r"\(at line 1, column (\d+)\)",
            lambda m: f"(at character {int(m.group(1)) - len(prefix)} of the value)",
            str(exc),
        ).replace("(at end of document)", "(at the end of the value)")
        raise ValueError(
            f"not valid TOML: {where}; a value starting with {text.lstrip()[0]} is read as TOML "
            f"(for a string, quote it whole: '\"...\"')"
        ) from None


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
        node[int(last)] = _override_value(text, key)
    elif not isinstance(node, dict):
        raise ConfigError("cannot set a key inside a value that is not a table", key)
    else:
        node[last] = _override_value(text, key)


def _override_value(text: str, key: str) -> Any:
    try:
        return parse_value(text)
    except ValueError as exc:
        raise ConfigError(str(exc), key) from None


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
    notes = _settle_replacements(cls.Params, table, key, given)
    params = build_dataclass(cls.Params, table, key, file)
    return PluginSpec(kind=kind, cls=cls, params=params, name=name, notes=notes)


def _settle_replacements(
    params_cls: type, table: dict[str, Any], key: str, given: typing.Collection[str]
) -> list[str]:
    """Drop the file's keys that a key given on the command line replaces; say which.

    ``Params.REPLACES`` maps a key to those it stands in for (``{"poni": ("dist", ...)}``:
    a PONI file gives the whole geometry), so that ``--set kernels.integrate.poni=...``
    works with a file that gives the geometry key by key. Keys also given on the command
    line are kept (and left for the plug-in to judge).
    """
    notes = []
    for trigger, replaced in getattr(params_cls, "REPLACES", {}).items():
        if f"{key}.{trigger}" not in given:
            continue
        dropped = [k for k in replaced if k in table and f"{key}.{k}" not in given]
        for k in dropped:
            del table[k]
        if dropped:
            notes.append(
                f"{key}.{trigger} from the command line replaces the file's {', '.join(dropped)}"
            )
    return notes


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
    try:
        detector = run_detector(sections["detector"], kernels, ktables, sections["view"].geometry)
    except DetectorDeclarationError as exc:
        raise ConfigError(exc.message, exc.key, file) from None
    return PipelineConfig(
        path=file,
        run=sections["run"],
        ring=sections["ring"],
        metrics=sections["metrics"],
        tango=sections["tango"],
        view=sections["view"],
        source=source,
        kernels=kernels,
        sinks=sinks,
        detector_section=sections["detector"],
        detector=detector,
        reducers=reducers,
    )
