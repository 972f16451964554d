"""The kernel protocol: what a processing step is, and how the engine finds one.

A kernel is a small class. ``setup`` runs once per worker process (read parameters, precompute
tables, compile) and declares the arrays the kernel writes; ``process`` runs once per message on
numpy views of shared memory and writes into preallocated output views, so no per-frame
allocation is needed. Kernels chain: each one may read the message's parts and the outputs of
the kernels before it (``frame.get("stitch.image")``).

A kernel is named in the configuration by a built-in name (``null``, ``checksum``), by an
entry point of the group ``shmpipe.kernels`` (how ``native_kernels`` registers the LAMBDA
kernels), or by a dotted path ``package.module:ClassName``.

Example
-------
>>> import numpy as np
>>> from dataclasses import dataclass
>>> class FrameSum(Kernel):
...     @dataclass
...     class Params:
...         input: str = "parts"
...     def setup(self, ctx):
...         return [ArraySpec("total", (), "float64")]
...     def process(self, frame, out):
...         out["total"][...] = sum(float(p.sum()) for p in frame.parts)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

ENTRY_POINT_GROUP = "shmpipe.kernels"


@dataclass(frozen=True)
class ArraySpec:
    """Name, shape and dtype of one array a kernel writes (or a source delivers).

    Parameters
    ----------
    name : str
        Short name, unique within the kernel (the engine qualifies it as ``kernel.name``).
    shape : tuple of int
        Shape of the array for one frame; ``()`` for a scalar.
    dtype : str
        Any numpy dtype string (``"float32"``, ``"<u2"``, ``"S64"``).
    unit : str, optional
        Physical unit of the values (``"q_nm^-1"``, ``"2th_deg"``, ``"counts"``); ``""`` when
        the values have none. Views label axes with it, the HDF5 sink writes it as ``units``.
    axis : str, optional
        Short name of another output of the same kernel holding this output's abscissa (the
        integrator's ``intensity`` has ``axis="radial"``). Views plot against it and the
        HDF5 sink writes NeXus ``NXdata`` with ``signal``/``axes``.
    errors : str, optional
        Short name of another output of the same kernel holding this output's standard
        uncertainties (``sigma`` for ``intensity``): error bars in views, ``*_errors`` in NeXus.
    long_name : str, optional
        A label for plots (``"Intensity"``); the output's name when empty.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    unit: str = ""
    axis: str | None = None
    errors: str | None = None
    long_name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).str)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def qualified(self, kernel: str) -> ArraySpec:
        """This spec under the name ``kernel.name``, its axis and errors qualified alike."""
        return dataclasses.replace(
            self,
            name=f"{kernel}.{self.name}",
            axis=None if self.axis is None else f"{kernel}.{self.axis}",
            errors=None if self.errors is None else f"{kernel}.{self.errors}",
        )


@dataclass
class SetupContext:
    """What a kernel's ``setup`` may know about its surroundings.

    Attributes
    ----------
    parts : list of ArraySpec or None
        The layout of one message's parts as declared by the source (for a LAMBDA 9M: twelve
        module arrays), or None when the source cannot know it before data arrives (compressed
        payloads: then a decompression kernel declares the layout from its own parameters).
    available : dict
        Arrays written by the kernels earlier in the chain, by qualified name ``kernel.output``.
    cache_dir : Path
        A directory for tables worth keeping across runs and workers (keyed by the kernel).
    threads : int
        Threads this kernel may use inside one worker (the worker count is the parallelism;
        this is 1 unless the configuration says otherwise).
    worker : int
        Index of the worker (seat) running this setup; -1 in the warm-up process.
    """

    parts: list[ArraySpec] | None
    available: dict[str, ArraySpec] = field(default_factory=dict)
    cache_dir: Path = Path(".")
    threads: int = 1
    worker: int = -1


class Frame:
    """One message as a kernel sees it: views on shared memory plus metadata.

    Attributes
    ----------
    stream : str
        The stream the message came from.
    message_id : int
        The message id within its stream (ASAPO ids start at 1).
    name : str
        The message (file) name given by the producer.
    meta : dict
        The message's user metadata (JSON object).
    scan : dict
        Per-stream parameters (the stream's metadata), the same for every frame of a scan.
    parts : list of numpy.ndarray
        The message's parts (one per detector module for a dataset), views on the input slot.
        Treat them as read-only: a retry of this frame reads them again.
    """

    __slots__ = ("stream", "message_id", "name", "meta", "scan", "parts", "_arrays")

    def __init__(
        self,
        stream: str,
        message_id: int,
        name: str,
        meta: dict[str, Any],
        scan: dict[str, Any],
        parts: list[np.ndarray],
        arrays: dict[str, np.ndarray],
    ) -> None:
        self.stream = stream
        self.message_id = message_id
        self.name = name
        self.meta = meta
        self.scan = scan
        self.parts = parts
        self._arrays = arrays

    def get(self, name: str) -> np.ndarray | list[np.ndarray]:
        """Return an input by name: ``"parts"`` or an earlier kernel's ``"kernel.output"``."""
        if name == "parts":
            return self.parts
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(
                f"no array {name!r} in this frame; available: parts, {', '.join(self._arrays)}"
            ) from None


@dataclass
class NoParams:
    """Parameters of a kernel that takes none."""


class Kernel:
    """Base class of every kernel.

    Subclasses set ``Params`` to a dataclass describing their TOML parameters (unknown keys
    and wrong types are reported before any process starts) and implement ``setup`` and
    ``process``.

    Parameters
    ----------
    name : str
        The instance name in the chain (the TOML table name, ``[kernels.<name>]``).
    params : Params
        The validated parameters.
    """

    Params: ClassVar[type] = NoParams

    def __init__(self, name: str, params: Any) -> None:
        self.name = name
        self.params = params

    def setup(self, ctx: SetupContext) -> Sequence[ArraySpec]:
        """Prepare for processing and declare the outputs. Runs once per worker."""
        return []

    def process(self, frame: Frame, out: dict[str, np.ndarray]) -> None:
        """Process one frame, writing into ``out`` (this kernel's output views, by short name)."""
        raise NotImplementedError

    def on_scan(self, scan: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Called in the worker when a frame's per-stream parameters differ from the last."""

    def check_params(
        self, params: Mapping[str, Any], outputs: Mapping[str, ArraySpec]
    ) -> Mapping[str, Any]:
        """Validate live parameters on the writer's side; return them normalised.

        Runs in the process that changes parameters during a run (the Tango device), on an
        instance set up as the workers' are (same parts, same inputs): decide from
        ``self.params``, what ``setup`` found and ``outputs`` (every declared output of the
        chain, by qualified name). Raise ``ValueError`` with a
        message naming the parameter; a kernel that takes no live parameters refuses all.
        """
        raise ValueError(f"kernel {self.name!r} takes no live parameters")

    def on_params(self, params: Mapping[str, Any], version: int) -> None:  # noqa: B027
        """Called in the worker, between frames, when this kernel's live parameters changed.

        ``params`` is this kernel's section of the live-parameter block (already validated
        by ``check_params``; empty when it was removed), ``version`` the block's version:
        record it in an output when results must say which parameters they used.
        """
