"""Tango attribute names for declared outputs (no pytango needed)."""

from __future__ import annotations

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
