"""Pixel positions in scattering space, following pyFAI's geometry conventions.

A pixel at assembled (row i, column j) has its centre at ``p1 = (i + 0.5) * pixel1``,
``p2 = (j + 0.5) * pixel2`` in the detector plane. Relative to the point of normal incidence
(poni1, poni2) at distance ``dist``, the vector (p1 - poni1, p2 - poni2, dist) is rotated by
``R = R3 @ R2 @ R1`` (pyFAI's rotation matrix) into the sample frame (t1 vertical, t2
horizontal, t3 along the beam). Then

* 2θ = atan2(sqrt(t1² + t2²), t3), χ = atan2(t1, t2), r = sqrt(t1² + t2²) (metres),
* q = 4π/λ · sin(2θ/2) in nm⁻¹ (λ in metres, hence the 1e-9),
* solid angle (relative to the poni) = cos(α)³ with cos α = dist / sqrt(dist² + d1² + d2²)
  measured in the detector plane (pyFAI's ``solidAngleArray``),
* polarization = ½ (1 + cos²2θ − P cos(2(χ + offset)) sin²2θ).

Everything here runs once per geometry (in ``setup``), in double precision, in Numba.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# Radial spaces, each in pyFAI's internal unit: 2th in rad, q in nm^-1, r in m, chi in rad.
SPACE_2TH, SPACE_Q, SPACE_R, SPACE_CHI = 0, 1, 2, 3

# Public unit name -> (space, scale from internal unit to the unit), as in pyFAI.units.
UNITS: dict[str, tuple[int, float]] = {
    "2th_deg": (SPACE_2TH, 180.0 / math.pi),
    "2th_rad": (SPACE_2TH, 1.0),
    "q_nm^-1": (SPACE_Q, 1.0),
    "q_A^-1": (SPACE_Q, 0.1),
    "r_mm": (SPACE_R, 1000.0),
    "r_m": (SPACE_R, 1.0),
}


def parse_unit(unit: str) -> tuple[int, float]:
    """(space code, scale) of a radial unit name; ValueError for an unknown name."""
    try:
        return UNITS[str(unit)]
    except KeyError:
        raise ValueError(f"unknown radial unit {unit!r}; known: {', '.join(UNITS)}") from None


def rotation_matrix(rot1: float, rot2: float, rot3: float) -> np.ndarray:
    """pyFAI's detector rotation matrix R3 @ R2 @ R1 (rot1, rot2 left-handed, rot3 right)."""
    c1, s1 = math.cos(rot1), math.sin(rot1)
    c2, s2 = math.cos(rot2), math.sin(rot2)
    c3, s3 = math.cos(rot3), math.sin(rot3)
    r1 = np.array([[1.0, 0.0, 0.0], [0.0, c1, s1], [0.0, -s1, c1]])
    r2 = np.array([[c2, 0.0, -s2], [0.0, 1.0, 0.0], [s2, 0.0, c2]])
    r3 = np.array([[c3, -s3, 0.0], [s3, c3, 0.0], [0.0, 0.0, 1.0]])
    return r3 @ r2 @ r1


@njit(cache=True, nogil=True)
def _value(t1, t2, t3, space, wavelength):  # pragma: no cover - jitted
    if space == 3:
        return math.atan2(t1, t2)
    r = math.sqrt(t1 * t1 + t2 * t2)
    if space == 2:
        return r
    tth = math.atan2(r, t3)
    if space == 0:
        return tth
    return 4.0e-9 * math.pi * math.sin(0.5 * tth) / wavelength


@njit(cache=True, nogil=True)
def _grid(nrow, ncol, offset, px1, px2, dist, poni1, poni2, m, space, wavelength, out):
    # pragma: no cover - jitted
    for i in range(nrow):
        d1 = (i + offset) * px1 - poni1
        for j in range(ncol):
            d2 = (j + offset) * px2 - poni2
            t1 = m[0, 0] * d1 + m[0, 1] * d2 + m[0, 2] * dist
            t2 = m[1, 0] * d1 + m[1, 1] * d2 + m[1, 2] * dist
            t3 = m[2, 0] * d1 + m[2, 1] * d2 + m[2, 2] * dist
            out[i, j] = _value(t1, t2, t3, space, wavelength)


def center_array(shape, pixel_size, params, space, wavelength=None) -> np.ndarray:
    """Radial (or χ) value at every pixel centre, internal units, float64, ``shape``.

    Parameters
    ----------
    shape : (int, int)
    pixel_size : (float, float)
        pixel1, pixel2 in metres.
    params : tuple
        dist, poni1, poni2, rot1, rot2, rot3 (metres, radians).
    space : int
        SPACE_2TH, SPACE_Q, SPACE_R or SPACE_CHI.
    wavelength : float, optional
        Metres; required for SPACE_Q.
    """
    return _positions((shape[0], shape[1]), 0.5, pixel_size, params, space, wavelength)


def corner_grid(shape, pixel_size, params, space, wavelength=None) -> np.ndarray:
    """Radial value at every pixel corner, shape (rows + 1, cols + 1), float32.

    pyFAI keeps corner positions in single precision; rounding them the same way keeps our
    bounding boxes identical to its ones to the last bit that matters.
    """
    corners = (shape[0] + 1, shape[1] + 1)
    return _positions(corners, 0.0, pixel_size, params, space, wavelength).astype(np.float32)


def _positions(points, offset, pixel_size, params, space, wavelength) -> np.ndarray:
    """Radial value at ``points`` (rows, cols) grid points ``offset`` pixels from the origin
    (0.5: pixel centres, 0.0: corners), float64."""
    if space == SPACE_Q and not wavelength:
        raise ValueError("q units need a wavelength")
    dist, poni1, poni2, rot1, rot2, rot3 = params
    out = np.empty(points, dtype=np.float64)
    rot = rotation_matrix(rot1, rot2, rot3)
    px1, px2 = pixel_size
    _grid(*points, offset, px1, px2, dist, poni1, poni2, rot, space, wavelength or 1.0, out)
    return out


@njit(cache=True, nogil=True)
def _delta(center, corners, out):  # pragma: no cover - jitted
    nrow, ncol = center.shape
    for i in range(nrow):
        for j in range(ncol):
            c = center[i, j]
            d = abs(np.float64(corners[i, j]) - c)
            d = max(d, abs(np.float64(corners[i + 1, j]) - c))
            d = max(d, abs(np.float64(corners[i + 1, j + 1]) - c))
            d = max(d, abs(np.float64(corners[i, j + 1]) - c))
            out[i, j] = d


def delta_array(center: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Half-width of each pixel's bounding box: max |corner - centre| over its 4 corners."""
    out = np.empty(center.shape, dtype=np.float64)
    _delta(center, corners, out)
    return out


@njit(cache=True, nogil=True)
def _solid_angle(nrow, ncol, px1, px2, dist, poni1, poni2, out):  # pragma: no cover - jitted
    for i in range(nrow):
        d1 = (i + 0.5) * px1 - poni1
        for j in range(ncol):
            d2 = (j + 0.5) * px2 - poni2
            cosa = dist / math.sqrt(dist * dist + d1 * d1 + d2 * d2)
            out[i, j] = cosa * cosa * cosa


def solid_angle_array(shape, pixel_size, params) -> np.ndarray:
    """Solid angle of each pixel relative to the poni pixel, cos(α)³, float64."""
    dist, poni1, poni2 = params[:3]
    out = np.empty(shape, dtype=np.float64)
    _solid_angle(shape[0], shape[1], pixel_size[0], pixel_size[1], dist, poni1, poni2, out)
    return out


def polarization_array(
    tth: np.ndarray, chi: np.ndarray, factor: float, axis_offset: float = 0.0
) -> np.ndarray:
    """pyFAI's polarization correction for a polarization factor in [-1, 1], float64."""
    if not -1.0 <= factor <= 1.0:
        raise ValueError(f"polarization_factor must be within [-1, 1], got {factor}")
    cos2 = np.cos(tth) ** 2
    return 0.5 * (1.0 + cos2 - factor * np.cos(2.0 * (chi + axis_offset)) * (1.0 - cos2))
