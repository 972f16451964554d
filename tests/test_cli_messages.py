"""What a new user sees from the ``shmpipe`` command: which value wins, who is blamed for a
mistake, one-line refusals before anything starts, and the help text."""

from __future__ import annotations

import re
import tomllib

import pytest

from shmpipe.engine.resources import Cores, oversubscription_warning
from shmpipe.observe.run_report import SteadyRate
from tests.conftest import REPO, run_cli

SIM = str(REPO / "examples" / "lambda9m_sim.toml")
SMALL = ["--set", "source.module_shape=[48, 64]", "--progress", "off", "--frames", "2"]


def test_command_line_alias_wins_over_the_files_key():
    r = run_cli("config", "show", "--config", SIM, "--set", "kernels.integrate.bins=2000")
    assert r.returncode == 0, r.stderr
    table = tomllib.loads(r.stdout)["kernels"]["integrate"]
    assert table["bins"] == 2000 and "npt" not in table
    r = run_cli("config", "show", "--config", SIM, "--set", "kernels.integrate.npt=500")
    assert tomllib.loads(r.stdout)["kernels"]["integrate"]["npt"] == 500


def test_alias_and_key_both_in_one_place_are_left_to_the_kernel(tmp_path):
    text = open(SIM).read().replace("npt = 1000", "npt = 1000\nbins = 2000")
    path = tmp_path / "both.toml"
    path.write_text(text)
    r = run_cli("config", "show", "--config", str(path))
    table = tomllib.loads(r.stdout)["kernels"]["integrate"]
    assert (table["npt"], table["bins"]) == (1000, 2000)  # the kernel's setup refuses this


@pytest.mark.parametrize(
    ("args", "origin", "words"),
    [
        (["--set", "run.wokers=3"], "command line (--set run.wokers=3): run.wokers", "'workers'"),
        (["--set", "runn.workers=3"], "command line (--set runn.workers=3): runn", "'run'"),
        (["--workers", "0"], "command line (--workers 0): run.workers", "at least 1"),
        (
            ["--set", "kernels.integrate.npts=3"],
            "command line (--set kernels.integrate.npts=3)",
            "did you mean 'npt'?",
        ),
        (["--set", 'kernels.integrate.kind="azimuthal_integrat"'], "", "'azimuthal_integrate'"),
    ],
)
def test_a_command_line_mistake_names_the_command_line(args, origin, words):
    r = run_cli("config", "show", "--config", SIM, *args)
    assert r.returncode == 2
    assert origin in r.stderr and words in r.stderr
    assert f"{SIM}:" not in r.stderr


def test_a_file_mistake_still_names_the_file(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text("[run]\nwokers = 3\n")
    r = run_cli("config", "show", "--config", str(path), "--set", "run.workers=2")
    assert r.returncode == 2
    assert f"{path}: run.wokers: unknown key (did you mean 'workers'?)" in r.stderr


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d, "is a directory, not a file"),
        (lambda d: d / "nowhere" / "out.h5", "does not exist"),
        (lambda d: _text_file(d / "notes.txt"), "exists and is not an HDF5 file"),
        (lambda d: d / "nowhere" / "out_{stream}.h5", "does not exist"),
    ],
)
def test_an_output_that_cannot_be_an_hdf5_file_is_refused_in_one_line(tmp_path, make, words):
    output = make(tmp_path)
    r = run_cli("run", *SMALL, "--sink", "hdf5", "--output", str(output))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1, r.stderr  # one line, no traceback, nothing started
    assert r.stderr.startswith("shmpipe: cannot start: sinks: hdf5 output") and words in r.stderr


def test_an_unwritable_output_directory_is_told_apart(tmp_path):
    r = run_cli("run", *SMALL, "--sink", "hdf5", "--output", "/proc/out.h5")
    assert r.returncode == 2 and "directory /proc is not writable" in r.stderr


def _text_file(path):
    path.write_text("not HDF5\n")
    return path


def test_status_help_prints_percent_signs():
    r = run_cli("status", "--help")
    assert r.returncode == 0
    assert "busy %, CPU %" in " ".join(r.stdout.split())


def test_a_missing_kernel_module_says_where_python_looked(tmp_path):
    (tmp_path / "my_kernels.py").write_text("")
    r = run_cli("config", "show", "--set", 'kernels.k.kind="nosuch_mod:K"', cwd=tmp_path)
    assert r.returncode == 2
    assert "no module named 'nosuch_mod'" in r.stderr and "Python looked in:" in r.stderr
    assert "PYTHONPATH" in r.stderr


def test_a_kernel_module_in_the_current_directory_gets_the_pythonpath_hint(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "my_kernels.py").write_text("")
    # The console script does not search the current directory (python -m does): run the CLI
    # the way the `shmpipe` script does.
    code = "import sys; from shmpipe.cli import main; sys.exit(main(sys.argv[1:]))"
    r = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            code,
            "config",
            "show",
            "--set",
            'kernels.k.kind="my_kernels:K"',
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        # This checkout on the path, the current directory not (a PYTHONPATH of "." would
        # put it there and the module would be found).
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 2
    assert "my_kernels.py is in the current directory" in r.stderr
    assert "PYTHONPATH=. shmpipe" in r.stderr


@pytest.mark.parametrize(
    ("cores", "workers", "warned"),
    [
        (Cores(2), 64, True),
        (Cores(2), 2, False),
        (Cores(64, quota=2.0), 16, True),
        (Cores(64, quota=16.0), 16, False),
        (Cores(4, quota=0.5), 1, False),
    ],
)
def test_more_workers_than_cores_is_warned(cores, workers, warned):
    text = oversubscription_warning(workers, cores)
    assert bool(text) == warned
    if warned:
        assert f"can use {cores.usable} cores" in text and str(cores.affinity) in text


def test_the_run_warns_with_the_cores_of_this_process():
    import os

    r = run_cli("run", *SMALL, "--workers", str(len(os.sched_getaffinity(0)) + 3))
    assert r.returncode == 0, r.stderr
    assert "CPUs in this process's affinity" in r.stderr


def test_a_slow_kernel_setup_is_announced_not_silent():
    r = run_cli(
        "run",
        *SMALL,
        "--set",
        'kernels.k.kind="tests.plugins:HangingSetup"',
        "--set",
        "run.setup_timeout_s=2",
    )
    assert r.returncode == 2
    said = r.stderr.index("setting up the kernels (k)")
    assert "compiles their Numba code" in r.stderr and "once" in r.stderr
    assert said < r.stderr.index("did not finish within run.setup_timeout_s")


def test_summary_gives_the_steady_rate_and_names_the_files(tmp_path):
    out = tmp_path / "o_{stream}.h5"
    r = run_cli(
        "run",
        *SMALL[:-2],
        "--frames",
        "30",
        "--set",
        "source.rate=30",
        "--set",
        "source.streams=2",
        "--sink",
        "hdf5",
        "--output",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    steady = float(re.search(r"([\d.]+) frames/s steady", r.stderr).group(1))
    whole = float(re.search(r"([\d.]+) frames/s over the whole run", r.stderr).group(1))
    assert steady > whole  # start-up is left out of the steady rate
    written = r.stderr.split("written: ", 1)[1].split("\n")
    assert [w.strip() for w in written if w.strip()] == [
        f"{tmp_path / 'o_scan_0001.h5'}: 30 rows stored",
        f"{tmp_path / 'o_scan_0002.h5'}: 30 rows stored",
    ]


def test_steady_rate_spans_first_to_last_frame_published():
    rate = SteadyRate()
    for t, n in [(0.0, 0), (5.0, 0), (6.0, 10), (7.0, 30), (8.0, 50), (9.0, 50), (20.0, 50)]:
        rate.sample(n, now=t)
    assert rate.rate() == pytest.approx(20.0)  # 40 frames from t=6 to t=8
    short = SteadyRate()
    short.sample(5, now=1.0)
    short.sample(6, now=1.1)
    assert short.rate() is None
