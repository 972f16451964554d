"""The Tango device's parts that need no pytango: attribute names, configuration, state."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from shmpipe.config import ConfigError, load_config
from shmpipe.tango.names import attribute_names, tango_name


def test_outputs_get_tango_safe_unique_names():
    assert tango_name("stats.roi_sums") == "stats_roi_sums"
    assert tango_name("my-kernel.q(1)") == "my_kernel_q_1_"
    assert tango_name("2d.sum") == "out_2d_sum"
    names = attribute_names(["a.b_c", "a_b.c", "x.Status", "A.B_C"])
    assert list(names.values()) == ["a.b_c", "a_b.c", "x.Status", "A.B_C"]
    # Tango compares names without case: every name differs from the others and from the
    # device's own attributes that way.
    lowered = [n.lower() for n in names]
    assert len(set(lowered)) == len(lowered)
    assert names["a_b_c"] == "a.b_c" and names["a_b_c_2"] == "a_b.c"


def test_a_device_needs_the_preview_tap():
    with pytest.raises(ConfigError, match="view.tap") as exc:
        load_config(raw={"tango": {"device": "a/b/c"}, "view": {"tap": False}})
    assert exc.value.key == "tango.device"


# -- the device's state, from the process table (no pytango needed) ---------------------------
@pytest.fixture
def feed():
    from shmpipe.api.kernel import ArraySpec
    from shmpipe.config import TangoSection
    from shmpipe.shm.layout import PROC_FIRST_WORKER
    from shmpipe.shm.ring import RingGeometry, SlotRing
    from shmpipe.shm.tapwriter import TapWriter
    from shmpipe.tango.feed import DeviceFeed

    ring = SlotRing(RingGeometry(4, 4096, 4096, 4096, PROC_FIRST_WORKER + 2))
    tap = TapWriter.create([ArraySpec("sum", (), "float64").qualified("stats")], None, {})
    yield DeviceFeed(ring, tap, None, [], TangoSection(), os.getpid(), 2)
    tap.close()
    ring.close()


def test_state_follows_the_processes(feed):
    from shmpipe.shm.layout import (
        P_STATE,
        PROC_DISPATCHER,
        PROC_FIRST_WORKER,
        PROC_PUBLISHER,
        PS_DEAD,
        PS_EXITED,
        PS_IDLE,
    )

    procs = feed.ring.procs
    assert feed.state()[0] == "running"
    procs[PROC_FIRST_WORKER + 1, P_STATE] = PS_DEAD
    feed.ring.set_exit_reason(PROC_FIRST_WORKER + 1, "killed by signal 9")
    state, status = feed.state()
    assert state == "fault" and "[1]" in status and "killed by signal 9" in status
    procs[PROC_FIRST_WORKER + 1, P_STATE] = PS_IDLE  # replaced
    procs[PROC_DISPATCHER, P_STATE] = PS_EXITED
    assert feed.state()[0] == "draining"
    procs[PROC_PUBLISHER, P_STATE] = PS_EXITED
    assert feed.state()[0] == "finished"
    feed.supervisor_pid = _dead_pid()
    assert feed.state() == ("fault", "the pipeline's supervisor is gone")


def test_requests_without_frames_say_why(feed):
    from shmpipe.tango.feed import FeedError

    assert feed.last_frame() == (0, "")
    with pytest.raises(FeedError, match="no frame analysed yet") as exc:
        feed.value_for_frame("stats.sum", "3")
    assert exc.value.reason == "NotAnalysedYet"
    with pytest.raises(FeedError, match="must be an integer") as exc:
        feed.value_for_frame("stats.sum", "3.5")
    with pytest.raises(FeedError, match="no ROI sums") as exc:
        feed.roi_for_frame(0, 3)
    assert exc.value.reason == "Unavailable"
    assert feed.rois() == [] and np.isnan(feed.hit_rate())


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_main_jobs_rois_are_checked_against_the_stitched_image(tmp_path):
    """examples/lambda9m_sim.toml at full size: statistics from decompress.modules, no 2-D
    image in the chain. Set up as the workers' are, the kernel checks written ROIs against
    the stitched LAMBDA 9M image (2484 x 4728), not a module (516 x 1556)."""
    import tomllib

    from shmpipe.engine.chain import KernelChain
    from shmpipe.shm.params import LiveParamsError, check_live_params
    from shmpipe.tango.livekernels import set_up_live_kernels
    from tests.conftest import REPO

    raw = tomllib.loads((REPO / "examples" / "lambda9m_sim.toml").read_text())
    raw["kernels"]["stats"]["max_rois"] = 8
    config = load_config(raw=raw)
    # The workers' layout of the kernels up to the statistics (the integrator's tables are
    # not needed to check ROIs, and take long to build at full size).
    chain = KernelChain([k for k in config.kernel_instances() if k.name != "integrate"])
    layout = chain.setup(None, tmp_path, 1, -1)
    specs = layout.specs()
    fresh = config.kernel_instances()
    with pytest.raises(LiveParamsError, match="not known"):
        check_live_params(fresh, specs, "stats", {"rois": [[0, 516, 0, 1556]]})
    kernels = set_up_live_kernels(config.kernel_instances(), layout.outputs, None, tmp_path)
    configured = check_live_params(kernels, specs, "stats", {"rois": [[0, 516, 0, 1556]]})
    assert configured == {"rois": [[0, 516, 0, 1556]]}
    across = [[0, 2484, 0, 4728], [500, 600, 1500, 1700]]  # the whole image; across a gap
    assert check_live_params(kernels, specs, "stats", {"rois": across}) == {"rois": across}
    for bad, words in (([[0, 2485, 0, 10]], "outside"), ([[0, 1, 0, 1]] * 9, "max_rois = 8")):
        with pytest.raises(LiveParamsError, match=words):
            check_live_params(kernels, specs, "stats", {"rois": bad})
