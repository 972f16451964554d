"""The ``[detector]`` section: a run's detector, declared once and resolved once.

Kernels, the live view and the Tango device take the run's detector from here (kernels through
``SetupContext.detector``). The older ways of naming a layout, a kernel's ``geometry`` /
``missing_modules`` and ``view.geometry``, are deprecated aliases: they map into the run's
detector with a warning in the log, and one that disagrees with it (or with another alias) is
a configuration error naming both keys.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shmpipe.api.detector import RunDetector

log = logging.getLogger("shmpipe.config")

# The kernel parameters that used to name the detector, now aliases of [detector].
KERNEL_KEYS = ("geometry", "missing_modules")


@dataclass
class DetectorSection:
    """The run's detector, declared once for every kernel, the live view and the Tango
    device: one of ``geometry``, ``poni`` or ``master``. Unset: a kernel's ``geometry`` key
    (deprecated) declares it, else the source's own layout (the simulated detector's), else
    each kernel takes its default (LAMBDA 9M, or the integrator's PONI detector)."""

    geometry: str = ""
    """"lambda9m", a detector name (Eiger2_4M, Pilatus1M, ...; see docs/detectors.md) or a
    .toml/.json geometry file."""
    poni: str = ""
    """A pyFAI PONI file: the detector it names (the calibration stays the integrator's)."""
    master: str = ""
    """A DECTRIS *_master.h5: its frame as one module, of its pixel size."""
    missing_modules: list[int] = field(default_factory=list)
    """Indices of modules not installed (no part arrives for them)."""

    def declared(self) -> list[str]:
        """The keys among geometry, poni and master that are set."""
        return [k for k in ("geometry", "poni", "master") if getattr(self, k)]


class DetectorDeclarationError(ValueError):
    """A detector declaration that cannot be used: ``message`` about the key ``key`` (the
    schema reports it as a ConfigError naming the file)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.message, self.key = message, key


def _absent(geometry) -> set[int]:
    return {i for i, m in enumerate(geometry.modules) if not m.present}


def _declared_by_section(section: DetectorSection) -> RunDetector | None:
    from native_kernels.declared import declared_geometry

    keys = section.declared()
    if not keys:
        if section.missing_modules:
            raise DetectorDeclarationError(
                "needs the detector itself: geometry, poni or master",
                "detector.missing_modules",
            )
        return None
    if len(keys) > 1:
        raise DetectorDeclarationError(
            f"give one of geometry, poni or master, not {' and '.join(keys)}", f"detector.{keys[1]}"
        )
    key = keys[0]
    value = getattr(section, key)
    try:
        geo = declared_geometry(**{key: value}, missing_modules=section.missing_modules)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        text = str(exc) if str(value) in str(exc) else f"{value}: {exc}"
        raise DetectorDeclarationError(text, f"detector.{key}") from None
    return RunDetector(geo, f"detector.{key} = {value!r}")


def _defaults(params_cls: type) -> dict[str, Any]:
    return {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(params_cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def _aliases(kernels: Sequence[Any], ktables: dict, view_geometry: str):
    """(key, value, layout, missing modules) of each deprecated key that is set; the layout
    is "" for an integrator's ``missing_modules`` alone (its PONI's detector)."""
    found = []
    for k in kernels:
        table = ktables.get(k.name, {})
        if not all(hasattr(k.params, key) for key in KERNEL_KEYS):
            continue
        # A default written out (``shmpipe config show`` writes every key) declares nothing.
        defaults = _defaults(type(k.params))
        given = [key for key in KERNEL_KEYS if key in table and table[key] != defaults[key]]
        if not given:
            continue
        g, missing = str(k.params.geometry or ""), list(k.params.missing_modules)
        key = f"kernels.{k.name}.{given[0]}"
        found.append((key, table[given[0]], g, missing))
    if view_geometry:
        found.append(("view.geometry", view_geometry, view_geometry, []))
    return found


def run_detector(
    section: DetectorSection,
    kernels: Sequence[Any],
    ktables: dict,
    view_geometry: str,
) -> RunDetector | None:
    """The run's detector: ``[detector]``, else the first deprecated key that names one.

    Parameters
    ----------
    section : DetectorSection
    kernels : sequence of PluginSpec
        The configured kernels (``name``, validated ``params``).
    ktables : dict
        Their tables as given, to tell a key set from a default.
    view_geometry : str
        ``view.geometry``, also a deprecated alias.

    Raises
    ------
    DetectorDeclarationError
        A declaration that cannot be used, or a deprecated key that disagrees with the run's
        detector (the message names both keys).
    """
    from native_kernels.declared import named_layout

    run = _declared_by_section(section)
    for key, value, layout, missing in _aliases(kernels, ktables, view_geometry):
        log.warning(
            "%s = %r is deprecated: declare the run's detector once in [detector] "
            "(kernels, the view and the Tango device all use it)",
            key,
            value,
        )
        if not layout:
            if run is not None and set(missing) != _absent(run.geometry):
                raise DetectorDeclarationError(
                    f"missing_modules = {missing} disagrees with {run.origin} "
                    f"(absent: {sorted(_absent(run.geometry))}); a run has one detector: "
                    "declare it once in [detector] and remove this key",
                    key,
                )
            continue
        try:
            geo = named_layout(layout, missing)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            text = str(exc) if layout in str(exc) else f"{layout}: {exc}"
            raise DetectorDeclarationError(text, key) from None
        if run is None:
            run = RunDetector(geo, f"{key} = {value!r}")
        elif geo.digest() != run.geometry.digest():
            raise DetectorDeclarationError(
                f"{value!r} ({geo.name}, {len(geo.present)} modules of {geo.module_shape}) "
                f"disagrees with {run.origin} ({run.geometry.name}, "
                f"{len(run.geometry.present)} modules of {run.geometry.module_shape}); a run "
                "has one detector: declare it once in [detector] and remove this key",
                key,
            )
    return run
