"""Where each kernel's outputs sit in a result slot: the layout every process of a run shares.

Computed once by the warm-up process (``engine.chain.KernelChain.setup``), handed to every
child in its ``Plumbing`` and checked again by each worker; the publisher reads the outputs
at these offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from shmpipe.api.kernel import ArraySpec

OUTPUT_ALIGN = 64
"""Each output starts on a 64-byte boundary of the result slot (a cache line)."""


@dataclass(frozen=True)
class OutputPlacement:
    """One kernel output and its byte offset in the result slot."""

    kernel: str
    spec: ArraySpec
    offset: int

    @property
    def qualified(self) -> str:
        return f"{self.kernel}.{self.spec.name}"


@dataclass(frozen=True)
class ChainLayout:
    """Where each kernel output sits in a result slot."""

    outputs: tuple[OutputPlacement, ...]
    result_bytes: int
    setup_seconds: tuple[float, ...] = ()

    def specs(self) -> list[ArraySpec]:
        return [o.spec.qualified(o.kernel) for o in self.outputs]

    def same_as(self, other: ChainLayout) -> bool:
        return self.outputs == other.outputs
