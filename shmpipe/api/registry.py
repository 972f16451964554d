"""Finding sources, kernels, reducers and sinks by name: built-ins, entry points, dotted paths."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from importlib.metadata import entry_points

BUILTINS: dict[str, dict[str, str]] = {
    "shmpipe.kernels": {
        "null": "shmpipe.plugins.kernels:NullKernel",
        "checksum": "shmpipe.plugins.kernels:ChecksumKernel",
    },
    "shmpipe.sources": {
        "sim": "shmpipe.plugins.sources.sim:SimSource",
        "files": "shmpipe.plugins.sources.files:FileSource",
        "asapo": "shmpipe.plugins.sources.asapo:AsapoSource",
    },
    "shmpipe.reducers": {
        "mean": "shmpipe.plugins.reducers:MeanReducer",
        "sum": "shmpipe.plugins.reducers:SumReducer",
        "map": "shmpipe.plugins.scanmap:MapReducer",
        "histogram": "shmpipe.plugins.reducers:HistogramReducer",
    },
    "shmpipe.sinks": {
        "null": "shmpipe.plugins.sinks.null:NullSink",
        "hdf5": "shmpipe.plugins.sinks.hdf5:HDF5Sink",
        "asapo": "shmpipe.plugins.sinks.asapo:AsapoSink",
    },
}


class PluginLookupError(LookupError):
    """A name that names no plug-in of the wanted kind."""


def load_dotted(path: str) -> object:
    module_name, _, attr = path.partition(":")
    if not attr:
        raise PluginLookupError(f"{path!r} is not of the form package.module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PluginLookupError(_not_found(module_name, path, exc.name)) from exc
        raise PluginLookupError(f"cannot import {module_name!r} for {path!r}: {exc}") from exc
    except ImportError as exc:
        raise PluginLookupError(f"cannot import {module_name!r} for {path!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PluginLookupError(f"module {module_name!r} has no {attr!r}") from None


def _not_found(module_name: str, path: str, missing: str) -> str:
    """Where Python looked for a plug-in's module, and how to make it look where it is."""
    looked = [d or os.getcwd() for d in sys.path if not d.endswith((".zip", "lib-dynload"))]
    top = missing.split(".")[0]
    here = [c for c in (f"{top}.py", top) if os.path.exists(c)]
    hint = (
        f"{here[0]} is in the current directory, which the shmpipe command does not search: "
        f"run PYTHONPATH=. shmpipe ..."
        if here
        else "put the directory that holds it on PYTHONPATH (PYTHONPATH=/path/to/dir shmpipe "
        "...), or install its package"
    )
    return (
        f"cannot import {module_name!r} for {path!r}: no module named {missing!r} "
        f"(Python looked in: {', '.join(looked)}); {hint}"
    )


def known_names(group: str) -> list[str]:
    return sorted(set(BUILTINS.get(group, {})) | {ep.name for ep in entry_points(group=group)})


def resolve(group: str, kind: str, base: type) -> type:
    """Return the class named ``kind`` in ``group`` (a subclass of ``base``)."""
    if ":" in kind:
        cls = load_dotted(kind)
    elif kind in BUILTINS.get(group, {}):
        cls = load_dotted(BUILTINS[group][kind])
    else:
        found = [ep for ep in entry_points(group=group) if ep.name == kind]
        if not found:
            close = difflib.get_close_matches(kind, known_names(group), n=1, cutoff=0.6)
            raise PluginLookupError(
                f"unknown {group.split('.')[-1][:-1]} {kind!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + "; known: "
                f"{', '.join(known_names(group))}, or package.module:ClassName"
            )
        cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginLookupError(f"{kind!r} is not a {base.__module__}.{base.__name__} subclass")
    return cls
