"""The run's detector, declared once in ``[detector]``: handed to the kernels, the view and the
Tango device; the kernels' old ``geometry``/``missing_modules`` keys as deprecated aliases."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from shmpipe.config import ConfigError, load_config, to_toml
from shmpipe.engine import Pipeline
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, sim_geometry
from tests.conftest import REPO

MODULE = [48, 64]
ROIS = [[0, 48, 0, 64], [10, 90, 30, 150]]  # one module, then across gaps and modules


@pytest.fixture(scope="module")
def geometry_file(tmp_path_factory):
    """The simulated detector's layout (twelve small modules, module 4 absent) as a file."""
    path = tmp_path_factory.mktemp("detector") / "sim.json"
    sim_geometry(SimParams(module_shape=MODULE)).to_file(path)
    return str(path)


def lambda_chain(tmp_path, name: str, detector: dict | None, keys: dict) -> dict:
    """The beamline chain (decompress, stitch, integrate and statistics on the modules) on a
    compressed simulated stream; ``keys`` are the old per-kernel detector keys."""
    integrate = dict(dist=0.05, poni1=0.002, poni2=0.003, wavelength=1e-10, npt=48, dummy=0.0)
    raw = {
        "run": {"workers": 1, "progress": "off", "name": name},
        "source": {
            "kind": "sim",
            "module_shape": MODULE,
            "missing_modules": [4],
            "frames": 3,
            "compression": "bitshuffle-lz4",
        },
        "kernels": {
            "decompress": {"kind": "lambda_decompress", **keys},
            "stitch": {"kind": "lambda_stitch", "input": "decompress.modules", **keys},
            "integrate": {
                "kind": "azimuthal_integrate",
                "input": "decompress.modules",
                **integrate,
                **keys,
            },
            "stats": {
                "kind": "frame_stats",
                "input": "decompress.modules",
                "rois": ROIS,
                "dummy": 0.0,
                **keys,
            },
        },
        "view": {"tap": False},
        "sinks": [{"kind": "hdf5", "output": str(tmp_path / f"{name}.h5")}],
    }
    if detector is not None:
        raw["detector"] = detector
    summary = Pipeline(load_config(raw=raw)).run()
    assert summary.exit_code == 0 and summary.frames_out == 3, summary.error
    return read_stream(str(tmp_path / f"{name}.h5"), "scan_0001")


def test_detector_section_alone_runs_the_lambda_chain_as_the_old_keys(geometry_file, tmp_path):
    old = lambda_chain(
        tmp_path, "old-keys", None, {"geometry": geometry_file, "missing_modules": [4]}
    )
    declared = lambda_chain(
        tmp_path, "declared", {"geometry": geometry_file, "missing_modules": [4]}, {}
    )
    # Declared by nobody but the simulated source: its own layout is the run's detector.
    by_source = lambda_chain(tmp_path, "by-source", None, {})
    geo = sim_geometry(SimParams(module_shape=MODULE, missing_modules=[4]))
    assert declared["stitch.image"].shape == (3, *geo.shape)
    assert np.all(declared["stitch.image"][:, : MODULE[0], : MODULE[1]] > 0)
    for name in ("stitch.image", "integrate.intensity", "integrate.count", "stats.roi_sums",
                 "stats.sum", "stats.n_valid"):  # fmt: skip
        assert np.any(declared[name] != 0), name
        np.testing.assert_array_equal(declared[name], old[name], err_msg=name)
        np.testing.assert_array_equal(by_source[name], old[name], err_msg=name)


def test_a_kernel_key_that_disagrees_with_the_detector_is_a_config_error(geometry_file):
    raw = {
        "detector": {"geometry": "lambda9m"},
        "kernels": {"stitch": {"kind": "lambda_stitch", "geometry": geometry_file}},
    }
    with pytest.raises(ConfigError, match="detector.geometry = 'lambda9m'") as err:
        load_config(raw=raw)
    assert err.value.key == "kernels.stitch.geometry"
    # Two deprecated keys that disagree with each other: both named too.
    raw = {
        "kernels": {
            "stitch": {"kind": "lambda_stitch", "geometry": geometry_file},
            "stats": {"kind": "frame_stats", "missing_modules": [1]},  # of the LAMBDA 9M
        }
    }
    with pytest.raises(ConfigError, match="kernels.stitch.geometry = ") as err:
        load_config(raw=raw)
    assert err.value.key == "kernels.stats.missing_modules"


def test_the_conflict_ends_the_command_with_exit_2_naming_both_keys(geometry_file, tmp_path):
    path = tmp_path / "conflict.toml"
    path.write_text(
        '[detector]\ngeometry = "lambda9m"\n'
        f'[kernels.stats]\nkind = "frame_stats"\ngeometry = "{geometry_file}"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "shmpipe", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "kernels.stats.geometry" in done.stderr and "detector.geometry" in done.stderr
    assert str(path) in done.stderr


def test_old_keys_map_into_the_run_detector_with_a_warning(geometry_file, caplog):
    raw = {"kernels": {"stitch": {"kind": "lambda_stitch", "geometry": geometry_file}}}
    with caplog.at_level(logging.WARNING, logger="shmpipe.config"):
        cfg = load_config(raw=raw)
    assert f"kernels.stitch.geometry = {geometry_file!r} is deprecated" in caplog.text
    assert cfg.detector.origin == f"kernels.stitch.geometry = {geometry_file!r}"
    assert cfg.detector.geometry.digest() == sim_geometry(SimParams(module_shape=MODULE)).digest()
    assert "detector" not in cfg.effective()  # an old configuration keeps its hash
    caplog.clear()
    cfg = load_config(raw={"detector": {"geometry": geometry_file}, **raw})
    assert cfg.detector.origin.startswith("detector.geometry")  # agrees: warned, not refused
    assert "deprecated" in caplog.text
    # `shmpipe config show` writes every kernel's defaults (geometry = "lambda9m"): they
    # declare nothing, so its output loads again with the same detector.
    kernels = {"stitch": {"kind": "lambda_stitch"}, "stats": {"kind": "frame_stats"}}
    shown = load_config(raw={"detector": {"geometry": geometry_file}, "kernels": kernels})
    again = load_config(raw=tomllib.loads(to_toml(shown.effective())))
    assert again.detector.origin == shown.detector.origin
    assert again.effective() == shown.effective()
    # Results of another detector are not mixed into the same files on a rerun.
    from shmpipe.api import provenance

    other = load_config(raw={"detector": {"geometry": "lambda9m"}, "kernels": kernels})
    hashes = {
        provenance.result_hash(provenance.result_shaping(c.effective())) for c in (shown, other)
    }
    assert len(hashes) == 2
    with pytest.raises(ConfigError, match="geometry, poni or master") as err:
        load_config(raw={"detector": {"missing_modules": [1]}})
    assert err.value.key == "detector.missing_modules"
    with pytest.raises(ConfigError, match="NoSuchDetector") as err:
        load_config(raw={"detector": {"geometry": "NoSuchDetector"}})
    assert err.value.key == "detector.geometry"


def test_view_and_tango_take_the_raw_layout_from_the_declared_detector(geometry_file):
    from native_kernels.geometry import DetectorGeometry
    from shmpipe.api.kernel import ArraySpec
    from shmpipe.config import TangoSection
    from shmpipe.engine.startup import run_identity, run_info_for
    from shmpipe.shm.layout import PROC_FIRST_WORKER
    from shmpipe.shm.ring import RingGeometry, SlotRing
    from shmpipe.shm.tapwriter import TapWriter
    from shmpipe.tango.feed import DeviceFeed
    from shmpipe.view.assemble import assemble
    from shmpipe.view.feed import TapFeed

    # No kernel names a layout: the view knows the detector only from [detector].
    cfg = load_config(raw={"detector": {"geometry": geometry_file, "missing_modules": [4]}})
    declared = sim_geometry(SimParams(module_shape=MODULE, missing_modules=[4]))
    parts = [ArraySpec(f"m{i}", MODULE, "uint16") for i in declared.present]
    tap = TapWriter.create([], parts, run_identity(cfg, run_info_for(cfg)))
    ring = SlotRing(RingGeometry(4, 4096, 4096, 4096, PROC_FIRST_WORKER + 1))
    try:
        feed = TapFeed(tap, ring.table, ring.procs, 1)
        assert feed.geometry.digest() == declared.digest()
        modules = [np.full(MODULE, i + 1, np.uint16) for i in range(len(declared.present))]
        image = assemble(modules, feed.geometry)
        assert image.shape == declared.shape  # not the built-in grid of eleven modules
        for k, view in enumerate(declared.module_views(image)):
            assert np.all(view == k + 1)
        tango = DeviceFeed(ring, tap, None, [], TangoSection(), os.getpid(), 1)
        described = json.loads(tango.detector())
        assert described["origin"] == f"detector.geometry = {geometry_file!r}"
        described.pop("origin")
        assert DetectorGeometry.from_dict(described).digest() == declared.digest()
    finally:
        tap.close()
        ring.close()


def test_a_poni_or_master_file_declares_the_layout_the_integrator_would_take(tmp_path):
    from native_kernels.integrator import AzimuthalIntegrator
    from native_kernels.master import read_master
    from scripts.make_eiger_master import make_master

    poni = tmp_path / "calib.poni"
    poni.write_text(
        "poni_version: 2.1\nDetector: Pilatus300k\nDetector_config: {}\nDistance: 0.1\n"
        "Poni1: 0.01\nPoni2: 0.02\nRot1: 0\nRot2: 0\nRot3: 0\nWavelength: 1e-10\n"
    )
    cfg = load_config(raw={"detector": {"poni": str(poni)}})
    assert cfg.detector.geometry.shape == (619, 487) and len(cfg.detector.geometry.present) == 3
    assert cfg.detector.geometry.digest() == AzimuthalIntegrator.from_poni(poni).geometry.digest()
    master, _ = make_master(tmp_path, detector="Pilatus300k", frames=1, frames_per_file=1)
    cfg = load_config(raw={"detector": {"master": str(master)}})
    m = read_master(master)
    assert cfg.detector.geometry.shape == m.shape and cfg.detector.geometry.n_modules == 1
    assert cfg.detector.geometry.pixel_size == m.pixel_size
    with pytest.raises(ConfigError, match="missing_master.h5") as err:
        load_config(raw={"detector": {"master": str(tmp_path / "missing_master.h5")}})
    assert err.value.key == "detector.master"


def test_a_named_detector_is_resolved_without_pyfai_in_the_supervisor():
    """pyFAI brings Numba and threads; the process that forks the workers must not hold them."""
    pytest.importorskip("pyFAI")
    code = (
        "import sys\n"
        "from shmpipe.config import load_config\n"
        "a = load_config(raw={'detector': {'geometry': 'Eiger2_4M'}}).detector.geometry\n"
        "b = load_config(raw={'detector': {'geometry': 'Pilatus900k'}}).detector.geometry\n"
        "print(a.shape, len(b.present), 'pyFAI' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    # Eiger2_4M from the built-in catalogue, Pilatus900k (not in it) from pyFAI in a child.
    assert done.stdout.split() == ["(2162,", "2068)", "9", "False"]
    from native_kernels.declared import fork_safe_detector
    from native_kernels.detectors import detector_geometry

    assert fork_safe_detector("Pilatus900k").digest() == detector_geometry("Pilatus900k").digest()
