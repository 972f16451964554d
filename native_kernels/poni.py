"""pyFAI PONI files: the six geometry parameters plus wavelength and detector description.

A PONI file is ``key: value`` lines (``#`` comments), keys case-insensitive. Version 1 has no
``poni_version``; version 2 adds ``Detector`` and ``Detector_config`` (a JSON object with
``pixel1``, ``pixel2``, ``max_shape`` ...); 2.1 adds the detector orientation; 3 adds parallax.
We read versions 1 to 3 and use distance, poni1, poni2, rot1..3 (metres, radians),
wavelength (metres) and the detector orientation (1 to 4; pyFAI's default is 3). Parallax
correction is not modelled, so a file that asks for it is rejected rather than silently misread.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class PoniError(ValueError):
    """A PONI file (or geometry parameter set) that cannot be used."""


@dataclass(frozen=True)
class Poni:
    """Geometry of the detector relative to the sample and beam, in pyFAI's convention.

    Parameters
    ----------
    dist : float
        Sample to point-of-normal-incidence distance, metres.
    poni1, poni2 : float
        Coordinates of the point of normal incidence on the detector, metres, along the slow
        (rows) and fast (columns) axes, measured from the first pixel's outer corner.
    rot1, rot2, rot3 : float
        Detector rotations in radians (pyFAI convention).
    wavelength : float or None
        Metres; needed for q units.
    detector : str
        Detector name as written in the file.
    detector_config : dict
        Detector configuration (pixel sizes, shape...), as written in the file.
    """

    dist: float
    poni1: float
    poni2: float
    rot1: float = 0.0
    rot2: float = 0.0
    rot3: float = 0.0
    wavelength: float | None = None
    detector: str = ""
    detector_config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for k in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PoniError(f"{k} must be a finite number, got {v!r}")
        if self.dist <= 0:
            raise PoniError(f"dist must be positive, got {self.dist}")
        if self.wavelength is not None and not (self.wavelength > 0):
            raise PoniError(f"wavelength must be positive, got {self.wavelength}")

    @property
    def params(self) -> tuple[float, float, float, float, float, float]:
        return (self.dist, self.poni1, self.poni2, self.rot1, self.rot2, self.rot3)

    @property
    def orientation(self) -> int:
        """pyFAI's detector orientation (1-4, default 3) from the detector config."""
        return int(self.detector_config.get("orientation", 3))

    @property
    def pixel_size(self) -> tuple[float, float] | None:
        """(pixel1, pixel2) from the detector config, when the file gives them."""
        c = self.detector_config
        if "pixel1" in c and "pixel2" in c:
            return float(c["pixel1"]), float(c["pixel2"])
        return None


_ALIASES = {
    "distance": "dist",
    "dist": "dist",
    "poni1": "poni1",
    "poni2": "poni2",
    "rot1": "rot1",
    "rot2": "rot2",
    "rot3": "rot3",
    "wavelength": "wavelength",
}


def parse_poni(text: str, source: str = "<string>") -> Poni:
    """Parse the text of a PONI file.

    Raises
    ------
    PoniError
        On a malformed line, a missing or non-numeric geometry key, an unsupported version,
        an unknown detector orientation or a parallax correction.
    """
    values: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise PoniError(f"{source}:{lineno}: not a 'key: value' line: {raw!r}")
        values[key.strip().lower()] = value.strip()  # the last entry wins, as in pyFAI
    try:
        version = float(values.get("poni_version", "1"))
    except ValueError:
        v = values["poni_version"]
        raise PoniError(f"{source}: poni_version {v!r} is not a number") from None
    if version > 3:
        raise PoniError(f"{source}: PONI version {version} is newer than the supported 3")
    config: dict[str, Any] = {}
    if "detector_config" in values:
        try:
            config = json.loads(values["detector_config"])
        except json.JSONDecodeError as exc:
            raise PoniError(f"{source}: Detector_config is not JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise PoniError(f"{source}: Detector_config must be a JSON object")
    elif "pixelsize1" in values and "pixelsize2" in values:  # version 1
        config = {"pixel1": values["pixelsize1"], "pixel2": values["pixelsize2"]}
    orientation = config.get("orientation", 3)
    if orientation not in (1, 2, 3, 4) or isinstance(orientation, bool):
        raise PoniError(
            f"{source}: detector orientation {orientation!r} is not supported "
            "(pyFAI's orientations are 1, 2, 3 (the default) and 4)"
        )
    if values.get("parallax", "false").lower() not in ("false", "none", ""):
        raise PoniError(f"{source}: parallax correction is not supported")
    kw: dict[str, Any] = {}
    for key, name in _ALIASES.items():
        if key in values and name not in kw:
            v = values[key]
            if name == "wavelength" and v.lower() in ("none", ""):
                continue
            try:
                kw[name] = float(v)
            except ValueError:
                raise PoniError(f"{source}: {key} = {v!r} is not a number") from None
    missing = [k for k in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3") if k not in kw]
    if missing:
        raise PoniError(f"{source}: missing {', '.join(missing)}")
    return Poni(detector=values.get("detector", ""), detector_config=config, **kw)


def read_poni(path: str | Path) -> Poni:
    """Read a PONI file (see :func:`parse_poni`)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PoniError(f"cannot read PONI file {path}: {exc}") from exc
    return parse_poni(text, str(path))


def write_poni(poni: Poni, path: str | Path) -> None:
    """Write a version 2 PONI file that pyFAI reads back."""
    lines = [
        "# PONI file written by native_kernels",
        "poni_version: 2",
        f"Detector: {poni.detector or 'Detector'}",
        f"Detector_config: {json.dumps(poni.detector_config)}",
        f"Distance: {poni.dist!r}",
        f"Poni1: {poni.poni1!r}",
        f"Poni2: {poni.poni2!r}",
        f"Rot1: {poni.rot1!r}",
        f"Rot2: {poni.rot2!r}",
        f"Rot3: {poni.rot3!r}",
    ]
    if poni.wavelength is not None:
        lines.append(f"Wavelength: {poni.wavelength!r}")
    Path(path).write_text("\n".join(lines) + "\n")
