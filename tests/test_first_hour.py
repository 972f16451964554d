"""The first hour of a new user (issue 23): ``--set`` values, ``--version``, what the summary
says was stored, ``shmpipe results`` settings, messages, a PONI on the command line."""

from __future__ import annotations

import re
import tomllib

import pytest

from shmpipe.cli import main
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


# -- what the summary says was stored (item 12, 13) ------------------------------------------
SMALL = ["--set", "source.module_shape=[48, 64]", "--progress", "off"]


def written(stderr: str) -> list[str]:
    """The summary's ``written:`` lines."""
    first, *rest = stderr.split("\nwritten: ", 1)[1].splitlines()
    lines = [first]
    for line in rest:
        if not line.startswith(" " * 9):
            break
        lines.append(line.strip())
    return lines


def test_a_resume_onto_a_complete_file_says_it_stored_nothing_new(tmp_path):
    out = str(tmp_path / "r_{stream}.h5")
    path = tmp_path / "r_scan_0001.h5"
    first = run_cli("run", *SMALL, "--frames", "5", "--sink", "hdf5", "--output", out)
    assert first.returncode == 0, first.stderr
    assert written(first.stderr) == [f"{path}: 5 rows stored"]
    resume = ["--set", 'sinks.0.mode="resume"']
    again = run_cli("run", *SMALL, "--frames", "5", "--sink", "hdf5", "--output", out, *resume)
    assert again.returncode == 0, again.stderr
    assert written(again.stderr) == [f"{path}: 0 rows stored, 5 skipped (already stored)"]
    more = run_cli("run", *SMALL, "--frames", "8", "--sink", "hdf5", "--output", out, *resume)
    assert written(more.stderr) == [f"{path}: 3 rows stored, 5 skipped (already stored)"]


def test_a_plain_run_says_it_wrote_nothing():
    r = run_cli("run", *SMALL, "--frames", "2")
    assert r.returncode == 0, r.stderr
    assert "written: nothing: the null sink discards the results" in r.stderr
    assert "--sink hdf5 --output" in r.stderr


@pytest.fixture
def asapo(tmp_path):
    pytest.importorskip("asapo_consumer")
    from shmpipe.asapo.process import AsapoProcess

    with AsapoProcess(tmp_path / "asapo-data") as service:
        yield service


def test_asapo_summaries_say_stored_nothing_to_do_and_already_stored(asapo):
    from tests.test_asapo_first_hour import FRAMES, pipeline
    from tests.test_asapo_pipeline import BEAMTIME, produce

    p = produce(asapo.server_name, FRAMES, ["scan_0001"])
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err
    where = f"ASAPO {asapo.server_name} {BEAMTIME}/azint"

    first = pipeline(asapo)
    assert first.returncode == 0, first.stderr
    assert written(first.stderr) == [f"{where}: scan_0001 {FRAMES} records sent"]

    again = pipeline(asapo)  # the group has consumed the stream
    assert written(again.stderr) == [f"{where}: nothing sent (no results were published)"]

    redo = pipeline(asapo, "--reprocess")
    assert redo.returncode == 0, redo.stderr
    assert written(redo.stderr)[0].startswith(
        f"{where}: scan_0001 0 records stored, {FRAMES} skipped (already stored); "
    )
    assert f"{FRAMES} records were stored already" in redo.stderr  # the publisher's count
    assert 'stream = "{stream}-reprocessed"' in redo.stderr

    apart = pipeline(asapo, "--reprocess", "--set", 'sinks.0.stream="{stream}-reprocessed"')
    assert apart.returncode == 0, apart.stderr
    assert written(apart.stderr) == [f"{where}: scan_0001-reprocessed {FRAMES} records sent"]


# -- messages (item 15) ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d / "nosuch.h5", "no such file"),
        (lambda d: d, "is a directory, not a results file"),
        (lambda d: _text_file(d / "notes.txt"), "not an HDF5 file"),
    ],
)
def test_results_of_something_that_is_no_results_file_says_why_in_words(
    tmp_path, capsys, make, words
):
    path = make(tmp_path)
    assert main(["results", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"shmpipe results: {path}: {words}")
    assert "errno" not in err and err.count("\n") == 1


def _text_file(path):
    path.write_text("not HDF5\n")
    return path


def test_an_output_in_proc_says_why_it_cannot_be_written():
    r = run_cli("run", *SMALL, "--frames", "1", "--sink", "hdf5", "--output", "/proc/out.h5")
    assert r.returncode == 2
    assert "directory /proc is not writable (it takes no new files" in r.stderr
    assert "No such file or directory" not in r.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--frames", "-5"], "command line (--frames -5): source.frames: must be 0 or more"),
        (["--sink", "bogus"], "command line (--sink bogus): sinks.0.kind: unknown sink 'bogus'"),
        (["--set", "source.pool=0"], "(--set source.pool=0): source.pool: must be 1 or more"),
    ],
)
def test_a_command_line_option_in_error_is_named(capsys, args, words):
    assert main(["config", "show", *args]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("key", ["view.port", "metrics.port"])
def test_a_port_in_use_is_refused_before_the_kernels_are_set_up(key):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # A kernel whose set-up never ends: only a refusal before set-up lets the run end.
        r = run_cli(
            "run",
            "--progress",
            "off",
            "--set",
            f"{key}={port}",
            "--set",
            'kernels.k.kind="tests.plugins:HangingSetup"',
            "--set",
            "run.setup_timeout_s=60",
            timeout=50,
        )
    assert r.returncode == 2
    assert f"127.0.0.1:{port}: Address already in use" in r.stderr
    assert "setting up the kernels" not in r.stderr


# -- shmpipe results: what differs from the defaults (item 14) ------------------------------
def test_results_show_the_settings_that_differ_from_the_defaults(tmp_path):
    out = tmp_path / "r_{stream}.h5"
    r = run_cli(
        "run", *SMALL, "--frames", "2", "--sink", "hdf5", "--output", str(out),
        "--set", 'kernels.k.kind="tests.plugins:Profile"', "--set", "kernels.k.npt=16",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    path = str(tmp_path / "r_scan_0001.h5")
    short = run_cli("results", path, timeout=60)
    assert short.returncode == 0, short.stderr
    assert "kernels.k.kind = tests.plugins:Profile" in short.stdout
    assert "kernels.k.npt = 16" in short.stdout  # the default is 8
    assert "kernels.k.scale" not in short.stdout  # 1.0, the default
    assert "3 keys at their defaults not shown: --all shows them" in short.stdout  # + sink.outputs
    full = run_cli("results", "--all", path, timeout=60)
    assert "kernels.k.scale = 1.0" in full.stdout and "kernels.k.shift_axis_from = 0" in full.stdout


# -- a PONI on the command line (item 16) ----------------------------------------------------
def test_a_poni_on_the_command_line_replaces_the_files_geometry_keys(tmp_path):
    from native_kernels.geometry import DetectorGeometry
    from native_kernels.poni import Poni, write_poni

    lambda9m = DetectorGeometry.default_lambda9m()
    config = {"pixel1": 55e-6, "pixel2": 55e-6, "max_shape": list(lambda9m.shape)}
    poni = tmp_path / "calib.poni"
    write_poni(
        Poni(0.25, 0.07, 0.12, wavelength=0.8e-10, detector="Detector", detector_config=config),
        poni,
    )
    assignment = f'kernels.integrate.poni="{poni}"'
    r = run_cli("config", "show", "--config", SIM, "--set", assignment, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (
        "kernels.integrate.poni from the command line replaces the file's dist, poni1, poni2, "
        "wavelength" in r.stderr
    )
    table = tomllib.loads(r.stdout)["kernels"]["integrate"]
    assert table["poni"] == str(poni) and "dist" not in table and table["poni1"] == 0.0

    cfg = load_config(SIM, [assignment])
    integrate = next(k for k in cfg.kernel_instances() if k.name == "integrate")
    ai = integrate._integrator()  # what setup() builds its tables from: the PONI's geometry
    assert (ai.poni.dist, ai.poni.poni1, ai.poni.wavelength) == (0.25, 0.07, 0.8e-10)
    # The file alone replaces nothing (and says nothing).
    assert not load_config(SIM).notes


# -- docs/live-view.md's curl example asks for outputs the main job has (item 10) ------------
def test_the_live_view_curl_example_names_outputs_of_the_main_job():
    text = (REPO / "docs" / "live-view.md").read_text()
    asked = re.findall(
        r"curl -s '?localhost:8080/api/(?:image|trace|profile)/([\w.]+?)(?:\.png)?[?']", text
    )
    assert asked, "the page has a curl example"
    main = tomllib.loads((REPO / "examples" / "lambda9m_sim.toml").read_text())
    has = {"raw", *main["sinks"][0]["outputs"]}  # raw: the view's assembled frame, always there
    assert set(asked) <= has, f"{set(asked) - has} are not outputs of examples/lambda9m_sim.toml"


# -- README (item 18) ------------------------------------------------------------------------
def test_the_readme_layout_names_paths_that_exist_and_the_diagrams_file():
    readme = (REPO / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    rows = [line for line in layout.splitlines() if line.startswith("| `")]
    named = {p for row in rows for p in re.findall(r"`([\w/.]+)`", row)}
    assert "engine.py" not in named
    for path in named:
        exists = (REPO / path).exists() or (REPO / "shmpipe" / path).exists()
        assert exists, f"README's Layout names {path}, which does not exist"
    diagram_file = re.search(r"`([\w/]+\.py)` opens with the data-flow diagram", layout).group(1)
    module = diagram_file.removesuffix(".py").replace("/", ".")
    doc = __import__(f"shmpipe.{module}", fromlist=["_"]).__doc__
    assert "dispatcher" in doc and "publisher" in doc and "::" in doc


def test_the_readme_says_why_the_test_command_installs_chromium():
    readme = (REPO / "README.md").read_text()
    before = readme[: readme.index("<!-- ci: test command -->")]
    why = before[before.rindex("Run the tests") :]
    assert "browser tests" in why and "chromium" in why
    assert "root" in why and "another user" in why


# -- the beamline template (item 17) ---------------------------------------------------------
def test_the_beamline_template_is_the_main_job_on_asapo_with_its_geometry_from_a_poni():
    path = REPO / "examples" / "beamline.toml"
    cfg = load_config(path)  # as config show checks it (tests/test_examples.py runs that too)
    assert cfg.source.kind == "asapo" and cfg.view.port and cfg.metrics.port
    assert not cfg.tango.device and "# [tango]" in path.read_text()  # there, commented out
    assert [k.kind for k in cfg.kernels] == [
        "lambda_decompress",
        "azimuthal_integrate",
        "frame_stats",
    ]
    integrate = next(k for k in cfg.kernel_instances() if k.name == "integrate")
    assert integrate.params.poni and integrate.params.dist is None
    # The PONI shipped beside it is the simulator's geometry, so the template runs on the
    # README's ASAPO demo as it stands.
    sim = next(k for k in load_config(SIM).kernel_instances() if k.name == "integrate")
    ai, sim_ai = integrate._integrator(), sim._integrator()
    assert ai.geometry.digest() == sim_ai.geometry.digest()
    for key in ("dist", "poni1", "poni2", "rot1", "rot2", "rot3", "wavelength"):
        assert getattr(ai.poni, key) == pytest.approx(getattr(sim_ai.poni, key)), key
