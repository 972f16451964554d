"""The ASAPO demo as a new user runs it twice: a consumed group is said so, --reprocess reads
again from the first message, and the clients' own JSON log lines stay out of the output."""

from __future__ import annotations

import re

import pytest

from shmpipe.asapo.process import AsapoProcess
from tests.conftest import run_cli
from tests.test_asapo_pipeline import BEAMTIME, SHAPE, produce

pytest.importorskip("asapo_consumer")

FRAMES = 4


@pytest.fixture
def asapo(tmp_path):
    with AsapoProcess(tmp_path / "asapo-data") as service:
        yield service


def pipeline(asapo: AsapoProcess, *extra: str):
    return run_cli(
        "run",
        "--progress",
        "off",
        "--workers",
        "1",
        "--source",
        "asapo",
        "--set",
        f'source.endpoint="{asapo.server_name}"',
        "--set",
        f'source.beamtime="{BEAMTIME}"',
        "--set",
        f"source.part_shape={SHAPE}",
        "--set",
        'source.stream="scan_0001"',
        "--set",
        'source.group_id="demo"',
        "--set",
        'source.until="finished"',
        "--set",
        "source.timeout_ms=200",
        "--set",
        "source.resend_delay_ms=500",
        "--sink",
        "asapo",
        "--set",
        f'sinks.0.endpoint="{asapo.server_name}"',
        "--set",
        f'sinks.0.beamtime="{BEAMTIME}"',
        "--set",
        'sinks.0.data_source="azint"',
        *extra,
        timeout=180,
    )


def frames_in(stderr: str) -> int:
    return int(re.search(r"(\d+) frames in", stderr).group(1))


def json_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith('{"time"')]


def test_a_consumed_group_is_named_and_reprocess_reads_again(asapo):
    p = produce(asapo.server_name, FRAMES, ["scan_0001"])
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err
    assert not json_lines(out + err), out  # the demo producer's client keeps its retries quiet

    first = pipeline(asapo)
    assert first.returncode == 0, first.stderr
    assert frames_in(first.stderr) == FRAMES
    # The ASAPO sink's producer client prints to stdout.
    assert not json_lines(first.stdout + first.stderr), first.stdout
    assert "waiting 1.0 s for redeliveries" in first.stderr  # the wait is said, with its key
    assert "source.resend_delay_ms" in first.stderr

    again = pipeline(asapo)
    assert again.returncode == 0, again.stderr
    assert frames_in(again.stderr) == 0
    assert (
        f"consumer group 'demo' has already consumed stream scan_0001 ({FRAMES} messages"
        in again.stderr
    )
    assert "--reprocess" in again.stderr

    redo = pipeline(asapo, "--reprocess", "--set", 'run.log_level="debug"')
    assert redo.returncode == 0, redo.stderr
    assert frames_in(redo.stderr) == FRAMES
    assert "reprocessing: the fresh consumer group" in redo.stderr
    assert "already consumed" not in redo.stderr
    # At debug level the client's own lines are wanted: they are there, so their absence
    # above is the level doing its work.
    assert json_lines(redo.stdout + redo.stderr)


def test_reprocess_is_refused_for_a_source_without_groups():
    r = run_cli("run", "--source", "sim", "--reprocess")
    assert r.returncode == 2
    assert "command line (--reprocess)" in r.stderr and "keeps no consumer group" in r.stderr
