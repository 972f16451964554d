"""Running ``examples/asapo_lambda.toml`` end to end against the ASAPO-compatible service.

Imported by ``tests/test_examples.py`` only when the ASAPO source and sink, the LAMBDA kernels
and ``shmpipe.asapo.testing`` are all installed. The service runs in threads of the test
process, so the pipeline runs as a ``shmpipe run`` subprocess (its supervisor must not be a
process with threads when it forks).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

FRAMES = 4
MODULE_SHAPE = (516, 1556)


def _producer_module():
    path = REPO / "scripts" / "asapo_produce.py"
    spec = importlib.util.spec_from_file_location("asapo_produce", path)
    assert spec and spec.loader, f"missing {path}"
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_asapo_example(path: Path, tmp_path: Path) -> None:
    """Produce LAMBDA frames, run the example on them, and count its output messages."""
    from shmpipe.asapo.testing import running_asapo

    send_frames = _producer_module().send_frames
    with running_asapo(tmp_path / "asapo") as asapo:
        failed = send_frames(
            asapo.server_name,
            beamtime=asapo.beamtime,
            data_source="lambda9m",
            token=asapo.token,
            frames=FRAMES,
            streams=["scan_0001"],
            compression="bitshuffle-lz4",
            module_shape=MODULE_SHAPE,
        )
        assert failed == 0
        endpoint = f'"{asapo.server_name}"'
        overrides = [
            f"source.endpoint={endpoint}",
            f'source.beamtime="{asapo.beamtime}"',
            f'source.token="{asapo.token}"',
            'source.until="finished"',
            'source.follow="finished"',
            f'source.group_id="example-{tmp_path.name}"',
            "run.workers=2",
            "metrics.port=0",
            'run.name="asapo-example"',
        ]
        for i in range(2):
            overrides += [
                f"sinks.{i}.endpoint={endpoint}",
                f'sinks.{i}.beamtime="{asapo.beamtime}"',
                f'sinks.{i}.token="{asapo.token}"',
            ]
        args = [sys.executable, "-m", "shmpipe", "run", "--config", str(path), "--progress", "off"]
        for o in overrides:
            args += ["--set", o]
        r = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert f"{FRAMES} frames in, {FRAMES} out, 0 errors" in r.stderr, r.stderr
        consumer = asapo.consumer("azint")
        assert consumer.get_current_size(stream="scan_0001") == FRAMES
