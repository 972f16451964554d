"""Configuration: errors named by key and file with exit code 2, before any process starts."""

from __future__ import annotations

import tomllib

import pytest

from shmpipe.config import ConfigError, load_config, to_toml
from tests.conftest import REPO, run_cli


def write(tmp_path, text: str):
    p = tmp_path / "beamline.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[run]\nworkerz = 2\n", "run.workerz", "unknown key"),
        ('[run]\nworkers = "two"\n', "run.workers", "must be int"),
        ('[run]\non_error = "ignore"\n', "run.on_error", "'fail' or 'skip'"),
        ('[source]\nkind = "sim"\nframez = 3\n', "source.framez", "unknown key"),
        ('[kernels.k]\nkind = "nosuch"\n', "kernels.k.kind", "unknown kernel 'nosuch'"),
        ('[kernels.k]\nkind = "checksum"\nfoo = 1\n', "kernels.k.foo", "unknown key"),
        ('[[sinks]]\nkind = "hdf5"\noutput = 3\n', "sinks.0.output", "must be str"),
        ("[rung]\nslots = 3\n", "rung", "unknown section"),
        ('[tango]\ndevice = "no-slashes"\n', "tango.device", "domain/family/member"),
        ('[tango]\ndevice = "a/b/c"\nnodb = true\n', "tango.port", "needs a port"),
        ("[tango]\nevent_hz = 0\n", "tango.event_hz", "more than 0"),
        ("[tango]\nport = 70000\n", "tango.port", "TCP port"),
        ("[run\n", "", "not valid TOML"),
    ],
)
def test_config_errors_name_key_and_file(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.key == key
    assert str(path) in str(exc.value) and words in str(exc.value)


def test_config_error_survives_pickling_with_one_prefix(tmp_path):
    """A ConfigError raised in a child process reaches the parent as it was raised."""
    import pickle

    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[run]\nworkerz = 2\n"))
    back = pickle.loads(pickle.dumps(exc.value))
    assert str(back) == str(exc.value)
    assert (back.key, back.file, back.message) == (exc.value.key, exc.value.file, exc.value.message)


def test_cli_config_error_exit_code_2_before_any_process(tmp_path):
    path = write(tmp_path, "[run]\nworkers = 2\nwatchdog_limit = 5\n")
    r = run_cli("run", "--config", str(path))
    assert r.returncode == 2
    assert f"{path}: run.watchdog_limit: unknown key" in r.stderr
    assert "ring:" not in r.stderr  # nothing was allocated or started


def test_cli_missing_file_and_bad_set(tmp_path):
    r = run_cli("run", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "nope.toml: no such configuration file" in r.stderr
    r = run_cli("run", "--set", "run.wrokers=3")
    assert r.returncode == 2 and "run.wrokers: unknown key" in r.stderr
    r = run_cli("run", "--set", "novalue")
    assert r.returncode == 2 and "--set takes KEY=VALUE" in r.stderr


def test_config_show_prints_effective_config_that_reads_back(tmp_path):
    path = write(tmp_path, "[run]\nworkers = 3\n[kernels.checksum]\n")
    r = run_cli(
        "config",
        "show",
        "--config",
        str(path),
        "--workers",
        "5",
        "--frames",
        "7",
        "--set",
        "run.name=test-b",
        "--sink",
        "hdf5",
        "--output",
        "x_{stream}.h5",
    )
    assert r.returncode == 0, r.stderr
    doc = tomllib.loads(r.stdout)
    assert doc["run"]["workers"] == 5 and doc["run"]["name"] == "test-b"
    assert doc["source"]["frames"] == 7 and doc["source"]["kind"] == "sim"
    assert doc["sinks"] == [
        {"kind": "hdf5", "output": "x_{stream}.h5", "compression": "", "mode": "new"}
    ]
    assert doc["ring"]["header_bytes"] == 65536  # defaults are filled in
    again = load_config(raw=doc)
    assert to_toml(again.effective()) == r.stdout


def test_set_parses_toml_values_and_list_items():
    cfg = load_config(
        raw={"sinks": [{"kind": "null"}, {"kind": "hdf5"}]},
        overrides=[
            "run.ordered=false",
            'sinks.1.output="a.h5"',
            "source.module_shape=[10, 20]",
            "run.watchdog_s=2",
        ],
    )
    assert cfg.run.ordered is False and cfg.run.watchdog_s == 2.0
    assert cfg.sinks[1].params.output == "a.h5"
    assert cfg.source.params.module_shape == [10, 20]


def test_what_the_sinks_record_of_the_configuration_holds_no_token():
    from shmpipe.engine.startup import run_info_for

    cfg = load_config(
        REPO / "examples" / "asapo_lambda.toml",
        overrides=["source.token=s3cret-beamtime-token"],
    )
    assert cfg.source.params.token == "s3cret-beamtime-token"  # the run itself keeps it
    info = run_info_for(cfg)
    assert "s3cret" not in info.config_toml
    assert "s3cret" not in repr(info.config)
    assert info.config["source"]["token"] == "<redacted>"
