"""Message: what a source hands the dispatcher, and the layout of its parts in a slot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

PART_ALIGN = 64


@runtime_checkable
class PartReader(Protocol):
    """A part the source can write straight into slot memory (a file read, a cache read)."""

    nbytes: int
    dtype: str
    shape: tuple[int, ...]

    def read_into(self, dest: np.ndarray) -> None:
        """Fill ``dest`` (uint8, exactly ``nbytes`` long) with the part's bytes."""


@dataclass
class Message:
    """One message from a source: parts (one per detector module for a dataset) plus metadata.

    Attributes
    ----------
    stream, message_id, name
        Where the message comes from; ``(stream, message_id)`` identifies it everywhere.
    parts
        numpy arrays (copied once into the slot) or ``PartReader`` objects.
    meta
        The producer's user metadata.
    scan
        Per-stream parameters handed to kernels (``Kernel.on_scan``).
    error
        Set when the source already knows the message cannot be processed (an incomplete
        dataset, metadata that is not JSON): it becomes an error record without reaching a
        kernel.
    """

    stream: str
    message_id: int
    name: str = ""
    parts: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    scan: dict[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0
    error: str | None = None

    @property
    def nbytes(self) -> int:
        return part_layout(self.parts).nbytes


@dataclass
class StreamFinished:
    """A source's word that ``stream`` has ended; sinks finish their outputs of it in order."""

    stream: str
    next_stream: str = ""
    last_id: int = 0


def payload_bytes(parts) -> int:
    """Bytes a slot needs for these parts (each starts on a PART_ALIGN boundary)."""
    return part_layout(parts).nbytes


def _aligned(n: int) -> int:
    return (n + PART_ALIGN - 1) // PART_ALIGN * PART_ALIGN


def layout_mismatch(parts: list[Any], specs: list[Any] | None) -> str | None:
    """Why ``parts`` do not match the layout the source declared (``None`` when they do).

    The kernels were set up (and compiled) for the declared parts; a message whose parts
    differ in number, dtype or shape must become an error record, not reach them.

    Parameters
    ----------
    parts : list
        The message's parts (arrays or ``PartReader`` objects).
    specs : list of ArraySpec or None
        The declared layout; ``None`` (opaque, compressed parts): nothing to check.
    """
    if specs is None:
        return None
    if len(parts) != len(specs):
        return f"{len(parts)} parts, the source declared {len(specs)}"
    for i, (p, s) in enumerate(zip(parts, specs, strict=True)):
        if np.dtype(p.dtype) != np.dtype(s.dtype) or tuple(p.shape) != tuple(s.shape):
            return (
                f"part {i} is {np.dtype(p.dtype).name} {list(p.shape)}, "
                f"the source declared {np.dtype(s.dtype).name} {list(s.shape)}"
            )
    return None


@dataclass(frozen=True)
class PartLayout:
    """Where a message's parts lie in a slot: ``(offset, dtype str, shape)`` each, and the
    bytes they take (each part starts on a PART_ALIGN boundary)."""

    key: tuple
    entries: tuple[tuple[int, str, tuple[int, ...]], ...]
    nbytes: int


# Part layouts repeat from message to message; working one out costs more than the rest of
# the header together, so each distinct sequence of (dtype, shape) is worked out once.
_layouts: dict[tuple, PartLayout] = {}


def part_layout(parts: list[Any]) -> PartLayout:
    """The slot layout of ``parts`` (arrays or ``PartReader`` objects), cached."""
    key = tuple([(p.dtype, tuple(p.shape), p.nbytes) for p in parts])
    layout = _layouts.get(key)
    if layout is None:
        entries, offset = [], 0
        for dtype, shape, nbytes in key:
            entries.append((offset, np.dtype(dtype).str, shape))
            offset += _aligned(nbytes)
        layout = PartLayout(key, tuple(entries), offset)
        if len(_layouts) < 1024:  # bounded: a source with ever-changing shapes just pays
            _layouts[key] = layout
    return layout
