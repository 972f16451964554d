"""DECTRIS master files: the reader, raw bitshuffle-LZ4 chunks from the files source, and the
example pipeline against pyFAI on the decompressed frames."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from native_kernels.compression import decompress_into
from native_kernels.detectors import detector_geometry
from native_kernels.master import MasterFileError, read_master
from native_kernels.shmpipe_kernels import AzimuthalIntegrate, KernelConfigError
from scripts.make_eiger_master import make_master
from shmpipe.api.source import SourceConfigError
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.dectris_master import RawChunk
from shmpipe.plugins.sources.files import FileSource, FilesParams
from tests.conftest import REPO, run_cli

DETECTOR = "Pilatus300k"  # three modules with gaps, small enough for fast tests
BEAM_CENTRE = (300.5, 200.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("eiger")
    master, frames = make_master(
        d, detector=DETECTOR, frames=4, frames_per_file=3, beam_center=BEAM_CENTRE
    )
    return master, frames


def test_read_master(dataset):
    master, frames = dataset
    m = read_master(master)
    geo = detector_geometry(DETECTOR)
    assert m.pixel_size == geo.pixel_size and m.shape == geo.shape
    assert m.beam_center == BEAM_CENTRE and m.distance == 0.12
    assert m.wavelength == pytest.approx(1e-10, rel=1e-12)
    assert m.frames == 4 and [link.frames for link in m.links] == [3, 1]
    assert all(link.bslz4_chunks for link in m.links)
    np.testing.assert_array_equal(m.pixel_mask != 0, geo.gap_mask())
    assert m.poni_params[1] == BEAM_CENTRE[0] * geo.pixel_size[0]


def test_files_source_hands_over_raw_chunks(dataset):
    master, frames = dataset
    src = FileSource(FilesParams(paths=[str(master)], layout="master"))
    assert src.layout().parts is None  # compressed: the kernels declare the frame
    src.open()
    try:
        out = np.empty(frames.shape[1:], frames.dtype)
        for i in range(4):  # across both data files
            msg = src.next(1.0)
            assert msg.stream == "eiger" and msg.message_id == i + 1
            (part,) = msg.parts
            assert isinstance(part, RawChunk) and part.nbytes < frames[i].nbytes
            buf = np.empty(part.nbytes, np.uint8)
            part.read_into(buf)
            decompress_into(buf, out, "bslz4_h5")
            np.testing.assert_array_equal(out, frames[i])
    finally:
        src.close()
    decoded = FileSource(FilesParams(paths=[str(master)], layout="master", raw_chunks=False))
    (spec,) = decoded.layout().parts
    assert tuple(spec.shape) == frames.shape[1:]


def test_example_pipeline_matches_pyfai(dataset, tmp_path):
    pyFAI = pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator

    master, frames = dataset
    overrides = [
        f'source.paths=["{master}"]',
        f'kernels.decompress.master="{master}"',
        f'kernels.integrate.master="{master}"',
        "kernels.integrate.npt=100",
        f'sinks.0.output="{tmp_path}/out_{{stream}}.h5"',
    ]
    # A command, not Pipeline(...).run(): this process has run bitshuffle (OpenMP), after
    # which forking the pipeline's processes is not safe.
    args = [a for o in overrides for a in ("--set", o)]
    example = str(REPO / "examples" / "eiger_files.toml")
    r = run_cli("run", "--config", example, "--progress", "off", *args, timeout=240)
    assert r.returncode == 0, r.stderr
    data = read_stream(str(tmp_path / "out_eiger.h5"), "eiger")
    assert data["message_id"].tolist() == [1, 2, 3, 4]
    m = read_master(master)
    det = Detector(*m.pixel_size, max_shape=m.shape)
    ref = PyFAIIntegrator(*m.poni_params, detector=det, wavelength=m.wavelength)
    assert pyFAI.version
    for i, mid in enumerate(data["message_id"]):
        r = ref.integrate1d_ng(
            frames[int(mid) - 1],
            100,
            unit="q_nm^-1",
            method=("bbox", "csr", "cython"),
            mask=m.pixel_mask,
            error_model="poisson",
        )
        # the axis is stored once (it is the same for every frame)
        np.testing.assert_allclose(data["integrate.radial"], r.radial, rtol=1e-9)
        ok = r.count > 20
        assert ok.sum() > 50
        np.testing.assert_allclose(data["integrate.intensity"][i][ok], r.intensity[ok], rtol=1e-4)
        np.testing.assert_allclose(data["integrate.sigma"][i][ok], r.sigma[ok], rtol=1e-3)


def test_master_file_without_pixel_size_is_a_clear_error(dataset, tmp_path):
    master, _ = dataset
    bad = tmp_path / "bad_master.h5"
    with h5py.File(master, "r") as src, h5py.File(bad, "w") as dst:
        src.copy("entry", dst)
        del dst["entry/instrument/detector/x_pixel_size"]
        for k in list(dst["entry/data"]):  # point the links at the real data files
            del dst["entry/data"][k]
            link = src["entry/data"].get(k, getlink=True)
            dst["entry/data"][k] = h5py.ExternalLink(str(master.parent / link.filename), link.path)
    with pytest.raises(MasterFileError, match=r"bad_master\.h5: no pixel size.*x_pixel_size"):
        read_master(bad)
    with pytest.raises(SourceConfigError, match=r"bad_master\.h5.*x_pixel_size"):
        FileSource(FilesParams(paths=[str(bad)], layout="master")).check()
    kernel = AzimuthalIntegrate("integrate", AzimuthalIntegrate.Params(master=str(bad)))
    with pytest.raises(KernelConfigError, match=r"integrate: master = .*bad_master\.h5.*pixel"):
        kernel._integrator()
