"""LiveParams: a versioned block of kernel parameters in shared memory, changed during a run.

The control side (the Tango device, or any process forked by the supervisor) writes a JSON
document ``{kernel name: {parameter: value}}``; each worker compares the block's version with
the one it applied, once per frame (one integer read), and when it differs reads the document
and hands every kernel whose section changed to ``Kernel.on_params`` before the frame's
``process``. So new parameters apply from the next frame a worker takes, and a kernel can
record the version it used in its outputs (``stats.roi_version``).

Writers validate first (``check_live_params``: the kernel's ``check_params``, against the
declared outputs), so a bad value is refused where it was written and never reaches a worker.

Layout: eight int64 words (sequence, version, length), then the JSON bytes. A writer makes
the sequence odd, writes, bumps the version and makes it even again (a seqlock); a reader
copies the bytes and retries while the sequence was odd or moved, so it never sees a
half-written document. Writers are serialised by a process-shared lock.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shmpipe.api.kernel import ArraySpec, Kernel
from shmpipe.shm.ring import SharedRegion

SEQ, VERSION, LENGTH = 0, 1, 2
HEADER_BYTES = 64
DEFAULT_CAPACITY = 64 * 1024
LOCK_TIMEOUT_S = 2.0


class LiveParamsError(ValueError):
    """Live parameters that cannot be applied (unknown kernel or key, bad value, too large)."""


class LiveParams:
    """The live-parameter block of one run, created by the supervisor before forking.

    Parameters
    ----------
    capacity : int
        Bytes for the JSON document.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._region = SharedRegion(HEADER_BYTES + capacity, "params")
        self._words = self._region.array(np.int64, (HEADER_BYTES // 8,))
        self._bytes = self._region.array(np.uint8, (capacity,), HEADER_BYTES)
        self._lock = mp.get_context("fork").Lock()

    def version(self) -> int:
        """The version of the document now in the block (0: nothing written yet)."""
        return int(self._words[VERSION])

    def read(self, timeout: float = 1.0) -> tuple[dict[str, dict[str, Any]], int]:
        """A consistent copy of the document and its version.

        Raises
        ------
        LiveParamsError
            When the block stays half-written for ``timeout`` seconds (its writer died in
            the middle; the next write repairs it).
        """
        words = self._words
        deadline = time.monotonic() + timeout
        while True:
            s1 = int(words[SEQ])
            if s1 & 1:
                if time.monotonic() > deadline:
                    raise LiveParamsError("the live-parameter block stays half-written")
                time.sleep(0)  # a writer is between its first and last store
                continue
            version, n = int(words[VERSION]), int(words[LENGTH])
            raw = self._bytes[: min(n, self.capacity)].tobytes()
            if int(words[SEQ]) == s1:
                break
        return (json.loads(raw) if n else {}), version

    def write(self, doc: Mapping[str, Mapping[str, Any]]) -> int:
        """Replace the whole document; return its new version.

        Callers validate first (``check_live_params``); this only refuses what cannot be
        stored.
        """
        raw = json.dumps(doc, separators=(",", ":")).encode()
        if len(raw) > self.capacity:
            raise LiveParamsError(
                f"live parameters of {len(raw)} bytes exceed the block's {self.capacity} bytes"
            )
        # A writer SIGKILLed inside this section would leave the lock held: after the timeout
        # the next writer goes ahead (the dead one cannot write any more).
        locked = self._lock.acquire(timeout=LOCK_TIMEOUT_S)
        try:
            words = self._words
            seq = int(words[SEQ])
            words[SEQ] = seq | 1 if not seq & 1 else seq
            self._bytes[: len(raw)] = np.frombuffer(raw, np.uint8)
            words[LENGTH] = len(raw)
            version = int(words[VERSION]) + 1
            words[VERSION] = version
            words[SEQ] = (seq | 1) + 1
            return version
        finally:
            if locked:
                self._lock.release()

    def update(self, kernel: str, values: Mapping[str, Any]) -> int:
        """Merge ``values`` into ``kernel``'s section and write; return the new version."""
        doc, _ = self.read()
        doc[kernel] = {**doc.get(kernel, {}), **values}
        return self.write(doc)

    def close(self) -> None:
        self._region.close()


def check_live_params(
    kernels: Sequence[Kernel], specs: Sequence[ArraySpec], kernel: str, values: Mapping[str, Any]
) -> dict[str, Any]:
    """Validate ``values`` for the kernel named ``kernel``; return them normalised.

    Parameters
    ----------
    kernels : sequence of Kernel
        The chain's kernels (instances as configured; their setup need not have run).
    specs : sequence of ArraySpec
        Every declared output by qualified name (``ChainLayout.specs()``).
    kernel, values
        The kernel instance name and its new parameters.

    Raises
    ------
    LiveParamsError
        Naming the kernel and the parameter, and what is wrong with it.
    """
    by_name = {k.name: k for k in kernels}
    if kernel not in by_name:
        raise LiveParamsError(
            f"no kernel {kernel!r} in the chain (kernels: {', '.join(by_name) or 'none'})"
        )
    if not isinstance(values, Mapping):
        raise LiveParamsError(f"{kernel}: live parameters must be a table, not {values!r}")
    try:
        return dict(by_name[kernel].check_params(values, {s.name: s for s in specs}))
    except LiveParamsError:
        raise
    except (ValueError, TypeError) as exc:
        raise LiveParamsError(f"{kernel}: {exc}") from exc


class ParamsFollower:
    """The worker's side: applies a changed document to the chain's kernels.

    ``poll`` costs one integer read when nothing changed.
    """

    def __init__(self, live: LiveParams | None, kernels: Sequence[Kernel]) -> None:
        self.live = live
        self.kernels = list(kernels)
        self.applied = 0
        self._sections: dict[str, Any] = {}

    def poll(self) -> None:
        """Apply the block if its version moved; a kernel's exception propagates (the frame
        becomes an error record) and the version counts as applied, so one bad document
        costs one frame, not every frame."""
        if self.live is None or self.live.version() == self.applied:
            return
        try:
            doc, version = self.live.read()
        except LiveParamsError:
            return  # keep the parameters in force; the next write repairs the block
        self.applied = version
        for k in self.kernels:
            section = doc.get(k.name, {})
            if section != self._sections.get(k.name, {}):
                self._sections[k.name] = section
                try:
                    k.on_params(section, version)
                except Exception as exc:
                    raise LiveParamsError(
                        f"kernel {k.name!r} refused live parameters version {version}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
