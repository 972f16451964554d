"""A run's detector from its declaration: a layout name or file, a PONI file, a master file.

The one place that turns what a configuration says about the detector into a
:class:`~native_kernels.geometry.DetectorGeometry`: the ``[detector]`` section of a run, the
kernels' deprecated ``geometry``/``missing_modules`` keys and the integrator's PONI files all
come through here, so a new way of naming a detector is one edit.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from native_kernels.detectors import DetectorError, detector_geometry, needs_pyfai
from native_kernels.geometry import DetectorGeometry, GeometryError, ModulePlacement, load_geometry
from native_kernels.master import MasterFile, read_master
from native_kernels.poni import PoniError, read_poni

# Run in a child: pyFAI brings Numba and threads, which the process resolving a run's detector
# (the supervisor, which forks the workers) must not hold.
_PYFAI_CHILD = (
    "import json, sys\n"
    "from native_kernels.detectors import detector_geometry\n"
    "try:\n"
    "    g = detector_geometry(sys.argv[1], json.loads(sys.argv[2]), use_pyfai=True)\n"
    "    print(json.dumps({'layout': None if g is None else g.to_dict()}))\n"
    "except ValueError as exc:\n"
    "    print(json.dumps({'error': str(exc)}))\n"
)


def fork_safe_detector(name: str, config: dict[str, Any] | None = None) -> DetectorGeometry | None:
    """:func:`~native_kernels.detectors.detector_geometry` without importing pyFAI here: the
    built-in catalogue when it knows the name (the tests hold it equal to pyFAI's), else pyFAI
    in a short-lived child process."""
    config = dict(config or {})
    if not needs_pyfai(name):
        return detector_geometry(name, config, use_pyfai=False)
    done = subprocess.run(
        [sys.executable, "-c", _PYFAI_CHILD, name, json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise DetectorError(f"cannot ask pyFAI about {name!r}: {lines[-1]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if "error" in answer:
        raise DetectorError(answer["error"])
    return None if answer["layout"] is None else DetectorGeometry.from_dict(answer["layout"])


def named_layout(geometry: str, missing_modules: Sequence[int] = ()) -> DetectorGeometry:
    """The layout ``geometry`` names: "lambda9m" (or empty), a .toml/.json geometry file, or a
    detector name (``Eiger2_4M``); then ``missing_modules`` marked absent.

    Raises
    ------
    GeometryError
        A name no detector has, or an unreadable geometry file.
    """
    g = str(geometry or "")
    if g and g not in ("lambda9m", "default") and Path(g).suffix.lower() not in (".toml", ".json"):
        geo = fork_safe_detector(g)
        if geo is None:
            raise GeometryError(f"{g!r} names no detector layout")
        return load_geometry(geo, tuple(missing_modules))
    return load_geometry(g or None, tuple(missing_modules))


def master_layout(m: MasterFile) -> DetectorGeometry:
    """A master file's frame as one module (its gaps are in its pixel mask)."""
    return DetectorGeometry(
        m.shape, (ModulePlacement(0, 0),), m.pixel_size, name=f"{Path(m.path).name}"
    )


def poni_layout(
    described: DetectorGeometry | None, pixel_size: tuple[float, float] | None, source: str
) -> DetectorGeometry:
    """The layout a PONI file's detector gives (``described``: its geometry, or None for a
    generic detector without a shape): that detector, except that no shape, or a generic
    detector of the stitched LAMBDA 9M image's shape and pixel size, is the LAMBDA 9M layout
    (a calibration on our stitched images keeps the module gaps)."""
    lambda9m = load_geometry(None)
    if described is None:
        geo = lambda9m
        if pixel_size is not None:
            geo = dataclasses.replace(geo, pixel_size=tuple(pixel_size))
    elif (
        described.n_modules == 1
        and tuple(described.shape) == tuple(lambda9m.shape)
        and np.allclose(described.pixel_size, lambda9m.pixel_size, rtol=1e-6, atol=0)
    ):
        geo = lambda9m
    else:
        geo = described
    return dataclasses.replace(geo, name=f"{geo.name} from {source}")


def declared_geometry(
    geometry: str = "", poni: str = "", master: str = "", missing_modules: Sequence[int] = ()
) -> DetectorGeometry:
    """The detector one of ``geometry``, ``poni`` or ``master`` declares, with
    ``missing_modules`` absent.

    Raises
    ------
    ValueError
        (GeometryError, PoniError, MasterFileError) naming what could not be used.
    """
    if poni:
        p = read_poni(poni)
        try:
            described = fork_safe_detector(p.detector, p.detector_config)
        except GeometryError as exc:
            raise PoniError(f"{poni}: {exc}") from exc
        geo = poni_layout(described, p.pixel_size, str(poni))
    elif master:
        geo = master_layout(read_master(master))
    else:
        return named_layout(geometry, missing_modules)
    return geo.with_missing(missing_modules) if missing_modules else geo
