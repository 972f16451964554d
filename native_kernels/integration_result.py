"""Integration results, shaped as pyFAI's ``Integrate1dResult`` and ``Integrate2dResult``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Integrate1dResult:
    """Result of a 1-D integration; names follow pyFAI's ``Integrate1dResult``.

    ``sigma`` is the standard error of the mean (``sem``), as pyFAI reports it; ``std`` the
    standard deviation of the pixel values in the bin. Both are None without an error model.
    """

    radial: np.ndarray
    intensity: np.ndarray
    sigma: np.ndarray | None
    sum_signal: np.ndarray
    sum_normalization: np.ndarray
    sum_normalization2: np.ndarray
    count: np.ndarray
    sum_variance: np.ndarray | None
    std: np.ndarray | None
    sem: np.ndarray | None
    unit: str
    method: str

    def __iter__(self):  # ``q, I = ai.integrate1d(...)`` as with pyFAI
        yield self.radial
        yield self.intensity
        if self.sigma is not None:
            yield self.sigma


@dataclass
class Integrate2dResult:
    """Result of a 2-D (cake) integration: arrays are (npt_azim, npt_rad), as in pyFAI."""

    intensity: np.ndarray
    radial: np.ndarray
    azimuthal: np.ndarray
    sum_signal: np.ndarray
    sum_normalization: np.ndarray
    count: np.ndarray
    sigma: np.ndarray | None
    unit: str
