"""The kernels every installation has: ``null`` and ``checksum``."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from shmpipe.api.kernel import ArraySpec, Frame, Kernel, SetupContext


class NullKernel(Kernel):
    """Touches nothing: measures what the engine itself costs."""

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        return []

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        return None


def frame_digest(parts: Sequence[np.ndarray]) -> bytes:
    """BLAKE2b-128 over the parts' bytes in order: the digest ``checksum`` writes."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(np.ascontiguousarray(p).view(np.uint8).reshape(-1).data)
    return h.digest()


class ChecksumKernel(Kernel):
    """A per-frame digest of the payload, to prove data integrity end to end.

    Outputs ``digest`` (16 bytes of BLAKE2b over the parts in order) and ``nbytes``.
    """

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        return [ArraySpec("digest", (16,), "uint8"), ArraySpec("nbytes", (), "int64")]

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        out["digest"][:] = np.frombuffer(frame_digest(frame.parts), dtype=np.uint8)
        out["nbytes"][...] = sum(p.nbytes for p in frame.parts)
