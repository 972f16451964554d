"""The documentation cannot drift: the configuration reference is the schema's, the diagram is
the engine's, the kernel tutorial's code is a file that runs, quoted messages exist."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import shmpipe.engine.supervisor
from shmpipe.config import load_config
from shmpipe.config.reference import attribute_docs, generate_reference
from shmpipe.engine.supervisor import EXIT_OK, Pipeline
from shmpipe.plugins.sinks.hdf5 import read_stream
from shmpipe.plugins.sources.sim import SimParams, SimSource
from tests.conftest import REPO

DOCS = REPO / "docs"


def test_configuration_reference_is_generated_from_the_schema():
    committed = (DOCS / "configuration.md").read_text()
    assert committed == generate_reference(), (
        "docs/configuration.md differs from the schema; regenerate it with\n"
        "    shmpipe config reference --output docs/configuration.md"
    )


def test_reference_documents_every_field_with_its_docstring():
    text = generate_reference()
    # A field of each kind of section, with its docstring and default.
    assert "| `workers` | int | `2` | Worker processes" in text
    assert "| `port` | int | `0` | Serve metrics on this port; 0: off. |" in text
    assert "| `module_shape` | list | `[516, 1556]` | Rows and columns of one module. |" in text
    docs = attribute_docs(SimParams)
    assert docs["rate"] == "Frames per second; 0: as fast as the pipeline takes them."
    for kind in ("`sim`", "`files`", "`hdf5`", "`checksum`", "`null`"):
        assert f"### {kind}" in text


def test_every_page_is_linked_from_the_index_and_the_nav():
    pages = {p.name for p in DOCS.glob("*.md")}
    index = (DOCS / "index.md").read_text()
    nav = (REPO / "mkdocs.yml").read_text()
    for page in pages - {"index.md"}:
        assert f"({page})" in index, f"index.md does not link {page}"
    for page in pages:
        assert f": {page}" in nav, f"mkdocs.yml nav lacks {page}"
    # Relative links between pages point at pages that exist.
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([a-z0-9-]+\.md)(?:#[a-z0-9-]+)?\)", page.read_text()):
            assert target in pages, f"{page.name} links to missing {target}"


def test_concepts_shows_the_engine_diagram():
    doc = shmpipe.engine.supervisor.__doc__
    block = textwrap.dedent(doc[doc.index("::\n") + 3 : doc.index("Slot lifecycle")])
    diagram = block.strip("\n").split("\n\n")[0]
    assert diagram in (DOCS / "concepts.md").read_text()


def test_troubleshooting_quotes_messages_that_exist():
    source = "\n".join(p.read_text() for p in (REPO / "shmpipe").rglob("*.py"))
    checks = re.findall(r"<!-- check: (.+?) -->", (DOCS / "troubleshooting.md").read_text())
    assert len(checks) >= 15
    missing = [c for c in checks if c not in source]
    assert not missing, f"no longer in the code: {missing}"


# -- the "write your own Numba kernel" page --------------------------------------------------
KERNEL_FILE = REPO / "examples" / "custom_kernel" / "hot_pixels.py"


def test_kernel_page_shows_the_tested_files_verbatim():
    page = (DOCS / "custom-kernel.md").read_text()
    for name in (
        "hot_pixels.py",
        "bench_hot_pixels.py",
        "hot_pixels.toml",
        "image_peak.py",
        "image_peak.toml",
    ):
        text = (KERNEL_FILE.parent / name).read_text().rstrip()
        assert text in page, f"docs/custom-kernel.md does not show {name} as it is"


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_kernel_numba_function_matches_numpy(dtype):
    from examples.custom_kernel.hot_pixels import module_stats

    m = np.random.default_rng(3).poisson(100, (40, 60)).astype(dtype)
    hot, mean = np.zeros(2, np.int64), np.zeros(2)
    module_stats(m, 110, hot, mean, 1)
    assert hot.tolist() == [0, int((m > 110).sum())]
    assert mean[1] == pytest.approx(m.mean())
    assert 0 < hot[1] < m.size  # the threshold splits the data: the test can tell


def test_kernel_runs_in_a_pipeline(tmp_path):
    cfg = load_config(
        KERNEL_FILE.with_suffix(".toml"),
        [
            "source.frames=5",
            "source.module_shape=[40, 60]",
            "run.progress=off",
            "kernels.hot.threshold=60",
            f'sinks.0.output="{tmp_path}/hot_{{stream}}.h5"',
        ],
    )
    summary = Pipeline(cfg).run()
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(tmp_path / "hot_scan_0001.h5"), "scan_0001")
    assert data["message_id"].tolist() == [1, 2, 3, 4, 5]
    assert data["hot.hot"].shape == (5, 12) and data["hot.mean"].shape == (5, 12)
    src = SimSource(SimParams(frames=5, module_shape=[40, 60]))
    src.open()
    for i, mid in enumerate(data["message_id"]):
        parts = src.frame_parts((int(mid) - 1) % 2)
        assert data["hot.hot"][i].tolist() == [int((p > 60).sum()) for p in parts]
        np.testing.assert_allclose(data["hot.mean"][i], [p.mean() for p in parts])
    assert 0 < data["hot.hot"].sum() < data["hot.hot"].size * 40 * 60  # threshold splits


def test_kernel_example_as_documented_finds_hot_pixels(tmp_path):
    """The documented command on full-size simulated frames: the threshold splits them."""
    cfg = load_config(
        KERNEL_FILE.with_suffix(".toml"),
        ["source.frames=2", "run.progress=off", f'sinks.0.output="{tmp_path}/hot_{{stream}}.h5"'],
    )
    summary = Pipeline(cfg).run()
    assert summary.exit_code == EXIT_OK, summary.error
    hot = read_stream(str(tmp_path / "hot_scan_0001.h5"), "scan_0001")["hot.hot"]
    src = SimSource(SimParams(frames=2))
    src.open()
    threshold = cfg.kernels[0].params.threshold
    for i in range(2):
        assert hot[i].tolist() == [int((p > threshold).sum()) for p in src.frame_parts(i)]
    assert 0 < hot.sum() and (hot == 0).any()  # hot modules and quiet ones: not all zeros


def test_image_kernel_reads_the_stitched_image_and_writes_scalars(tmp_path):
    path = KERNEL_FILE.parent / "image_peak.toml"
    cfg = load_config(
        path,
        [
            "source.frames=2",
            "run.workers=1",
            "run.progress=off",
            f'sinks.0.output="{tmp_path}/peak_{{stream}}.h5"',
        ],
    )
    summary = Pipeline(cfg).run()
    assert summary.exit_code == EXIT_OK, summary.error
    data = read_stream(str(tmp_path / "peak_scan_0001.h5"), "scan_0001")
    assert data["peak.peak"].shape == (2,) and data["peak.above"].shape == (2,)
    src = SimSource(SimParams(frames=2))
    src.open()
    threshold = cfg.kernels[1].params.threshold
    for i in range(2):
        parts = src.frame_parts(i)
        # Stitching moves the modules' pixels (the gaps are 0): the same peak and count.
        assert data["peak.peak"][i] == max(int(p.max()) for p in parts)
        assert data["peak.above"][i] == sum(int((p > threshold).sum()) for p in parts)
    assert (data["peak.where"] > 0).all()


def test_image_kernel_names_the_images_it_could_read():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmpipe",
            "run",
            "--progress",
            "off",
            "--frames",
            "1",
            "--set",
            "source.module_shape=[48, 64]",
            "--set",
            'kernels.peak.kind="examples.custom_kernel.image_peak:ImagePeak"',
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2
    assert "input 'stitch.image' is not an image here" in r.stderr and "stitcher" in r.stderr


def test_kernel_benchmark_runs():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(KERNEL_FILE.parent / "bench_hot_pixels.py"),
            "--benchmark-disable",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed" in r.stdout


def test_example_paths_named_in_the_docs_exist():
    named = set()
    for page in [*DOCS.glob("*.md"), REPO / "README.md"]:
        for path in re.findall(r"`(examples/[^`\s]+)`", page.read_text()):
            m = re.match(r"(.*)\{(.+)\}(.*)", path)  # examples/compare/integrate_{a,b}.toml
            alts = [m.group(1) + a + m.group(3) for a in m.group(2).split(",")] if m else [path]
            named.update(alts)
    assert len(named) >= 8
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"docs name example files that do not exist: {missing}"
