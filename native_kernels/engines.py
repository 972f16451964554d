"""The integrator's engines: its per-frame loops in a registry keyed by what they depend on.

As pyFAI's ``IntegrationMethod`` registry, every loop is declared once, with what it can
handle; :func:`candidates` answers which engines can integrate a frame of a given
:class:`EngineKey` (dimension, splitting, table formats, input dtype, layout, frame kind, error
model). 2-D is another output shape (bins = npt_rad · npt_azim), so 1-D and 2-D share the
loops; the key keeps the dimension because the best loop may differ with the number of bins.

Where several engines apply (the accumulator layout: separate signal and variance arrays, or
packed pairs updated as one vector; one pixel or four at a time; the table format: bin and
weight arrays or one packed word per pixel), their speed order depends on the CPU and the
error model: measured on AMD EPYC family 25 model 1, the packed no-splitting loop loses
without Poisson errors and wins with them. :mod:`native_kernels.engine_choice` times the
candidates once per CPU model and keeps the choice beside the tables. The lean bbox engines
all sum into the same per-bin slots (see :mod:`native_kernels.accumulate`) in the same
order, so whichever a CPU chooses, the sums are the same bit for bit.

Adding an engine: write the Numba loop (``native_kernels/accumulate.py``) with the argument
order of its family (see :func:`_run_lean` and :func:`_run_general`) and add one
:class:`Engine` to ``ENGINES`` below; the tests check every key and that every candidate gives
the same sums.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from native_kernels import accumulate as A
from native_kernels import pixel_groups

SPLITS = ("no", "bbox")
TABLE_FORMATS = ("bins", "bins+words")  # what a table holds (words: bbox 1-D up to 1023 bins)
LAYOUTS = ("stitched", "modules")
FRAME_KINDS = ("plain", "dummy", "general")  # none; exact dummy; dark or dummy tolerance
ERROR_MODELS = ("none", "poisson")  # what the loop sums ("azimuthal" is a pass of its own)
# The accumulators of each layout, as FrameArgs fields in the order the loops take them.
ACCUMULATORS = {"separate": ("accs", "accv"), "packed": ("accp",), "slots": ("accq",)}
# every input dtype the integrator accepts (integers and floats up to 8 bytes; Numba has no
# float16)
DTYPES = tuple(f"{kind}{bits}" for kind in ("uint", "int") for bits in (8, 16, 32, 64)) + (
    "float32",
    "float64",
)


@dataclass(frozen=True)
class EngineKey:
    """What the choice of a per-frame loop depends on."""

    dim: int  # 1 or 2
    split: str  # "no" or "bbox"
    tables: str  # the table formats the plan holds (TABLE_FORMATS)
    dtype: str  # the input's numpy dtype name
    layout: str  # "stitched" (an assembled image) or "modules" (the parts)
    frame: str  # FRAME_KINDS
    errors: str  # ERROR_MODELS

    def __str__(self) -> str:
        return (
            f"{self.dim}d/{self.split}/{self.tables}/{self.dtype}/{self.layout}/"
            f"{self.frame}/{self.errors}"
        )


@dataclass
class FrameArgs:
    """What one frame's loops read and write; built by ``RadialPlan.accumulate``.

    ``segments`` and ``darks`` are per module (flat array, offset of row 0, row stride);
    ``dummy`` is the lean loops' exact dummy (None: no test at all), ``dummy32``/``delta32``/
    ``check_dummy`` the general loops' test. Accumulators (see :mod:`native_kernels.accumulate`):
    ``accs``/``accv`` separate, ``accp`` packed pairs, ``accq`` the bbox slots.
    """

    segments: list[tuple[np.ndarray, int, int]]
    darks: list[tuple[np.ndarray, int, int]]
    use_dark: bool
    table: object  # tables.Table, reshaped to (modules, rows, cols)
    norm: np.ndarray
    nbins: int
    dummy: float | None
    check_dummy: bool
    dummy32: np.float32
    delta32: np.float32
    poisson: bool
    accs: np.ndarray
    accv: np.ndarray
    accp: np.ndarray
    accq: np.ndarray
    removed: np.ndarray


def _rows(engine: Engine, f: FrameArgs, k: int) -> tuple[np.ndarray, ...]:
    """Module ``k``'s table rows in the format the engine reads."""
    t = f.table
    if engine.table == "words":
        return (t.word[k],)
    return (t.bin[k],) if engine.split == "no" else (t.bin[k], t.coef[k])


def _run_lean(engine: Engine, f: FrameArgs, k: int) -> None:
    """(image, base, stride, *table rows, norm, dummy, poisson, nbins, *accumulators, removed)."""
    img, base, s0 = f.segments[k]
    acc = [getattr(f, name) for name in ACCUMULATORS[engine.acc]]
    rows = _rows(engine, f, k)
    engine.loop(img, base, s0, *rows, f.norm[k], f.dummy, f.poisson, f.nbins, *acc, f.removed)


def _run_general(engine: Engine, f: FrameArgs, k: int) -> None:
    """(image, base, stride, *table rows, dark, its base and stride, use_dark, norm,
    check_dummy, dummy, delta_dummy, poisson, nbins, accs, accv, removed)."""
    img, base, s0 = f.segments[k]
    dk, db, ds = f.darks[k]
    engine.loop(
        *(img, base, s0, *_rows(engine, f, k), dk, db, ds, f.use_dark, f.norm[k]),
        *(f.check_dummy, f.dummy32, f.delta32, f.poisson, f.nbins, f.accs, f.accv, f.removed),
    )


@dataclass(frozen=True)
class Engine:
    """One per-frame loop and what it handles."""

    name: str
    split: str
    frames: tuple[str, ...]
    table: str  # the format it reads: "bins" or "words"
    acc: str  # the accumulators it adds to: a key of ACCUMULATORS
    loop: Callable = field(repr=False, compare=False)
    run: Callable[[Engine, FrameArgs, int], None] = field(default=_run_lean, compare=False)
    max_dim: int = 2
    errors: tuple[str, ...] = ERROR_MODELS  # the error models whose sums it makes

    def applies(self, key: EngineKey) -> bool:
        """Whether this engine can integrate frames of ``key``."""
        return (
            key.split == self.split
            and key.frame in self.frames
            and key.dim <= self.max_dim
            and key.errors in self.errors
            and (self.table == "bins" or "words" in key.tables)
        )

    def __call__(self, f: FrameArgs, k: int) -> None:
        self.run(self, f, k)


LEAN = ("plain", "dummy")
GENERAL = ("general",)
ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        Engine("nosplit-separate", "no", LEAN, "bins", "separate", A.nosplit_separate),
        Engine("nosplit-packed", "no", LEAN, "bins", "packed", A.nosplit_packed),
        Engine(
            "nosplit-general",
            "no",
            GENERAL,
            "bins",
            "separate",
            A.nosplit_general,
            run=_run_general,
        ),
        Engine("bbox-groups", "bbox", LEAN, "bins", "slots", pixel_groups.bbox_groups),
        Engine(
            "bbox-groups-signal",
            "bbox",
            LEAN,
            "bins",
            "slots",
            pixel_groups.bbox_groups_signal,
            errors=("none",),
        ),
        Engine("bbox-scalar", "bbox", LEAN, "bins", "slots", A.bbox_scalar),
        Engine("bbox-vector", "bbox", LEAN, "bins", "slots", A.bbox_vector),
        Engine("bbox-vector-words", "bbox", LEAN, "words", "slots", A.bbox_vector_words, max_dim=1),
        Engine(
            "bbox-general",
            "bbox",
            GENERAL,
            "bins",
            "separate",
            A.bbox_general,
            run=_run_general,
        ),
    )
}


def candidates(key: EngineKey) -> list[Engine]:
    """The engines that can integrate frames of ``key``, in registry order (never empty for
    a key the integrator can be asked for; raises ``LookupError`` otherwise)."""
    found = [e for e in ENGINES.values() if e.applies(key)]
    if not found:
        raise LookupError(f"no integration engine for {key}")
    return found


def all_keys(dtypes: Sequence[str] = DTYPES) -> list[EngineKey]:
    """Every key the integrator can be asked for (2-D tables never hold words)."""
    keys = []
    for dim, split, tables, dtype, layout, frame, errors in itertools.product(
        (1, 2), SPLITS, TABLE_FORMATS, dtypes, LAYOUTS, FRAME_KINDS, ERROR_MODELS
    ):
        if tables == "bins+words" and (split != "bbox" or dim != 1):
            continue
        keys.append(EngineKey(dim, split, tables, dtype, layout, frame, errors))
    return keys


def frame_kind(use_dark: bool, dummy: float | None, delta_dummy: float | None) -> str:
    """Which family of loops a frame needs: "general" for a dark or a dummy tolerance."""
    if use_dark or (dummy is not None and delta_dummy):
        return "general"
    return "plain" if dummy is None else "dummy"
