"""The first hour of a new user (issue 23): ``--set`` values, ``--version``, what the summary
says was stored, ``shmpipe results`` settings, messages, a PONI on the command line."""

from __future__ import annotations

import re

import pytest

from shmpipe.config import ConfigError, load_config, parse_value
from tests.conftest import REPO, run_cli

SIM = str(REPO / "examples" / "lambda9m_sim.toml")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("[48, 64]", [48, 64]),
        ('"out_{stream}.h5"', "out_{stream}.h5"),
        ("'a b'", "a b"),
        ("{ a = 1 }", {"a": 1}),
        ("test-b", "test-b"),  # a bare word is a string
        ("out_{stream}.h5", "out_{stream}.h5"),
    ],
)
def test_a_set_value_is_toml_or_a_bare_word(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize(
    ("assignment", "words"),
    [
        ('sinks.0.output="out_{stream}.h5', "Unterminated string (at the end of the value)"),
        ("run.name=[oops", "Invalid value (at character 2 of the value)"),
        ("run.name='half", "not valid TOML"),
        ("kernels.stats.rois=[[0, 516, 0 1556]]", "not valid TOML"),
        ("view.image={ a = ", "not valid TOML"),
    ],
)
def test_a_set_value_that_starts_as_toml_must_be_toml(assignment, words):
    with pytest.raises(ConfigError) as info:
        load_config(SIM, [assignment])
    text = str(info.value)
    assert text.startswith(f"command line (--set {assignment}): {assignment.split('=')[0]}: ")
    assert words in text


def test_broken_toml_on_the_command_line_exits_2_before_anything_starts(tmp_path):
    r = run_cli(
        "run",
        "--frames",
        "1",
        "--sink",
        "hdf5",
        "--set",
        'sinks.0.output="o_{stream}.h5',
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "--set sinks.0.output=" in r.stderr and "not valid TOML" in r.stderr
    assert not list(tmp_path.iterdir())  # no file named '"o_scan_0001.h5'


def test_version():
    r = run_cli("--version", timeout=60)
    assert r.returncode == 0
    assert re.fullmatch(
        r"shmpipe \S+ \((commit [0-9a-f]{12}(-dirty)?, )?Python 3\.\d+\.\d+\)\n", r.stdout
    )
