"""Numba kernels and detector geometry for the LAMBDA 9M, usable with or without shmpipe."""

from native_kernels.geometry import DetectorGeometry, ModulePlacement

__all__ = ["DetectorGeometry", "ModulePlacement"]
