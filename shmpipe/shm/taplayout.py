"""The preview tap's memory layout: where each block lies, recorded in a JSON descriptor.

The tap's mapping starts with 64 control words (see ``shmpipe.shm.preview``), then the
descriptor at ``DESCRIPTOR_AT``, then the latest block (metadata, per output a wanted-until
word and the generation of its copy, the outputs), the raw block (metadata, the parts'
layout as JSON, the parts' bytes), the stream-name table and the history ring. A reader
attached from another process finds every offset in the descriptor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from shmpipe.api.kernel import ArraySpec
from shmpipe.shm.history import is_small, ring_bytes

ALIGN = 64
MAX_STREAM_NAMES = 256
STREAM_NAME_BYTES = 248  # + 8 bytes for the stream's number
DESCRIPTOR_AT = 4096
DESCRIPTOR_BYTES = 1 << 18
META_WORDS = 8  # generation-protected metadata of the latest block and of the raw block
RAW_LAYOUT_BYTES = 8192


def _round(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


def tap_layout(
    outputs: Sequence[ArraySpec],
    parts: Sequence[ArraySpec] | None,
    run: dict[str, Any],
    settings: dict[str, Any],
    history: int,
) -> tuple[dict[str, Any], int]:
    """The descriptor of a tap for these outputs and parts, and the mapping's size in bytes.

    ``settings`` (``max_hz``, ``fallback_s``) are stored in the descriptor as they are.
    """
    outputs = list(outputs)
    at = DESCRIPTOR_AT + DESCRIPTOR_BYTES
    latest_at = at
    at += META_WORDS * 8
    want_at = at  # per output: wanted until (ns), then the generation its copy belongs to
    at += 2 * 8 * len(outputs)
    latest_offsets = {}
    for s in outputs:
        at = _round(at)
        latest_offsets[s.name] = at
        at += s.nbytes
    raw_at = _round(at)
    raw_bytes = sum(p.nbytes for p in parts) if parts else 0
    raw_data_at = _round(raw_at + META_WORDS * 8 + RAW_LAYOUT_BYTES)
    streams_at = _round(raw_data_at + raw_bytes)
    ring, at = ring_bytes(outputs, history, streams_at + MAX_STREAM_NAMES * 256, ALIGN)
    descriptor = {
        "run": run,
        "history": history,
        **settings,
        "outputs": [spec_dict(s) for s in outputs],
        "parts": None if parts is None else [spec_dict(p) for p in parts],
        "small": [s.name for s in outputs if is_small(s)],
        "latest_at": latest_at,
        "want_at": want_at,
        "latest_offsets": latest_offsets,
        "raw_at": raw_at,
        "raw_data_at": raw_data_at,
        "raw_bytes": raw_bytes,
        "streams_at": streams_at,
        **ring,
    }
    return descriptor, _round(at, 4096)


def spec_dict(s: ArraySpec) -> dict[str, Any]:
    """An ``ArraySpec`` as JSON-serialisable dict."""
    d = dataclasses.asdict(s)
    d["shape"] = list(s.shape)
    return d


def spec_from_dict(d: dict[str, Any]) -> ArraySpec:
    """The ``ArraySpec`` of :func:`spec_dict`."""
    return ArraySpec(**{**d, "shape": tuple(d["shape"])})
