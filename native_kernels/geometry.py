"""Detector geometry as data: where each module's pixels land in the assembled image."""

from __future__ import annotations

from dataclasses import dataclass, field

# Default LAMBDA 9M layout: 4 rows x 3 columns of 516 x 1556 modules (pyFAI's Lambda750k
# module with its chip gaps), 140 px between rows and 30 px between columns, as measured for
# the stitching figures in shared/lambda9m.md (assembled 2484 x 4728).
LAMBDA_MODULE_SHAPE = (516, 1556)
LAMBDA_PIXEL_SIZE = 55e-6
_ROW_GAP, _COL_GAP = 140, 30


@dataclass(frozen=True)
class ModulePlacement:
    """One module: where its (row 0, col 0) corner goes, after rotation and flips.

    Parameters
    ----------
    y, x : int
        Offset of the module's first assembled row and column, in pixels.
    rot90 : int
        Counter-clockwise quarter turns applied to the module (``numpy.rot90``), 0..3.
    flip_ud, flip_lr : bool
        Flips applied before rotation.
    present : bool
        False for a module that is not installed (its area stays dummy).
    """

    y: int
    x: int
    rot90: int = 0
    flip_ud: bool = False
    flip_lr: bool = False
    present: bool = True


@dataclass(frozen=True)
class DetectorGeometry:
    """Module shape, per-module placement, pixel size and gap value of a multi-module detector."""

    module_shape: tuple[int, int]
    modules: tuple[ModulePlacement, ...]
    pixel_size: tuple[float, float] = (LAMBDA_PIXEL_SIZE, LAMBDA_PIXEL_SIZE)
    dummy: float = 0.0
    name: str = "custom"
    shape: tuple[int, int] = field(default=(0, 0))

    def __post_init__(self) -> None:
        if self.shape == (0, 0):
            h = w = 0
            for m in self.modules:
                mh, mw = self.placed_shape(m)
                h, w = max(h, m.y + mh), max(w, m.x + mw)
            object.__setattr__(self, "shape", (h, w))

    def placed_shape(self, m: ModulePlacement) -> tuple[int, int]:
        """Shape a module occupies in the assembled image (rotations swap the axes)."""
        r, c = self.module_shape
        return (c, r) if m.rot90 % 2 else (r, c)

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    @property
    def present(self) -> list[int]:
        """Indices of the installed modules, in the order their parts arrive."""
        return [i for i, m in enumerate(self.modules) if m.present]

    @classmethod
    def default_lambda9m(cls, missing: tuple[int, ...] = ()) -> DetectorGeometry:
        """The default 12-module LAMBDA 9M layout; ``missing`` lists absent module indices."""
        r, c = LAMBDA_MODULE_SHAPE
        mods = tuple(
            ModulePlacement(
                y=row * (r + _ROW_GAP), x=col * (c + _COL_GAP), present=(row * 3 + col) not in missing
            )
            for row in range(4)
            for col in range(3)
        )
        return cls(LAMBDA_MODULE_SHAPE, mods, name="lambda9m")
