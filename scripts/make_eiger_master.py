"""Write a DECTRIS-style EIGER data set: a ``*_master.h5`` and its bitshuffle-LZ4 data files.

The frames are powder rings with Poisson noise for the geometry written in the master file;
module gaps hold the DECTRIS gap value and are flagged in ``pixel_mask``, as a real detector
writes them. Used by ``examples/eiger_files.toml`` and the tests::

    python scripts/make_eiger_master.py eiger_data --detector Eiger2_1M --frames 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from native_kernels import positions as P
from native_kernels.detectors import detector_geometry

GAP_VALUE = {np.dtype(np.uint16): 0xFFFF, np.dtype(np.uint32): 0xFFFFFFFF}


def ring_frames(shape, pixel_size, params, frames: int, dtype, seed: int = 0) -> np.ndarray:
    """(frames, rows, cols) Poisson counts on powder rings; each frame a different brightness."""
    tth = np.rad2deg(P.center_array(shape, pixel_size, params, P.SPACE_2TH))
    lam = 200.0 * (1.1 + np.sin(tth * 3.0)) ** 4 + 3.0
    rng = np.random.default_rng(seed)
    return np.stack([rng.poisson(lam * (1 + 0.1 * i)) for i in range(frames)]).astype(dtype)


def make_master(
    directory: str | Path,
    name: str = "eiger",
    detector: str = "Eiger2_1M",
    frames: int = 10,
    frames_per_file: int = 5,
    distance: float = 0.12,
    beam_center: tuple[float, float] = (420.5, 515.0),
    wavelength_A: float = 1.0,
    dtype: str = "uint32",
) -> tuple[Path, np.ndarray]:
    """Write ``<name>_master.h5`` and ``<name>_data_NNNNNN.h5`` under ``directory``.

    Returns
    -------
    (Path, numpy.ndarray)
        The master file and the frames written (gaps at the gap value).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    geo = detector_geometry(detector)
    px = geo.pixel_size
    params = (distance, beam_center[0] * px[0], beam_center[1] * px[1], 0.0, 0.0, 0.0)
    data = ring_frames(geo.shape, px, params, frames, dtype)
    gaps = geo.gap_mask()
    data[:, gaps] = GAP_VALUE[np.dtype(dtype)]
    master = directory / f"{name}_master.h5"
    with h5py.File(master, "w") as f:
        det = f.create_group("entry/instrument/detector")
        for key, value, unit in (
            ("x_pixel_size", px[1], "m"),
            ("y_pixel_size", px[0], "m"),
            ("beam_center_x", beam_center[1], "pixel"),
            ("beam_center_y", beam_center[0], "pixel"),
            ("detector_distance", distance, "m"),
        ):
            det.create_dataset(key, data=value).attrs["units"] = unit
        det.create_dataset("description", data=f"Dectris {detector} (simulated)")
        spec = det.create_group("detectorSpecific")
        spec.create_dataset("pixel_mask", data=gaps.astype(np.uint32), **hdf5plugin.Bitshuffle())
        spec.create_dataset("x_pixels_in_detector", data=geo.shape[1])
        spec.create_dataset("y_pixels_in_detector", data=geo.shape[0])
        beam = f.create_group("entry/instrument/beam")
        beam.create_dataset("incident_wavelength", data=wavelength_A).attrs["units"] = "angstrom"
        entry_data = f.create_group("entry/data")
        for k, start in enumerate(range(0, frames, frames_per_file)):
            file = f"{name}_data_{k + 1:06d}.h5"
            with h5py.File(directory / file, "w") as d:
                d.create_dataset(
                    "entry/data/data",
                    data=data[start : start + frames_per_file],
                    chunks=(1, *geo.shape),
                    **hdf5plugin.Bitshuffle(cname="lz4"),
                )
            entry_data[f"data_{k + 1:06d}"] = h5py.ExternalLink(file, "entry/data/data")
    return master, data


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory")
    ap.add_argument("--name", default="eiger")
    ap.add_argument("--detector", default="Eiger2_1M", help="a detector name (pyFAI's)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--frames-per-file", type=int, default=10)
    a = ap.parse_args(argv)
    master, _ = make_master(a.directory, a.name, a.detector, a.frames, a.frames_per_file)
    print(master)


if __name__ == "__main__":
    main()
