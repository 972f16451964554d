"""docs/quickstart.md's commands, run in the order given, each succeed: none collides with the
files of another (a new user runs them one after the other)."""

from __future__ import annotations

import re
import shlex

from tests.conftest import REPO, run_cli

QUICKSTART = REPO / "docs" / "quickstart.md"
# Small frames, few of them: the commands' own options are kept, these come last and win.
SMALL = ["--frames", "3", "--set", "source.module_shape=[48, 64]", "--progress", "off"]


def quickstart_commands() -> list[list[str]]:
    """The ``shmpipe`` commands of the page's bash blocks, in order, without comments;
    ``shmpipe status`` is left out (it watches a run from a second terminal)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", QUICKSTART.read_text(), flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["shmpipe"] and words[1:2] != ["status"]:
                commands.append(words[1:])
    return commands


def test_the_quickstart_commands_run_in_order_without_colliding(tmp_path):
    (tmp_path / "examples").symlink_to(REPO / "examples")
    commands = quickstart_commands()
    assert [c[0] for c in commands] == ["run", "run", "config", "results", "run"]
    for args in commands:
        extra = SMALL if args[0] == "run" else []
        r = run_cli(*args, *extra, cwd=tmp_path, timeout=120)
        assert r.returncode == 0, f"shmpipe {shlex.join(args)}: {r.stderr}"
    made = sorted(p.name for p in tmp_path.glob("*.h5"))
    assert made == [
        "paced_scan_0001.h5",
        "paced_scan_0002.h5",
        "results_scan_0001.h5",
        "sim_to_hdf5_scan_0001.h5",
        "sim_to_hdf5_scan_0002.h5",
    ]
