"""What the kernel adapters share: their config error, parameter files, inputs and the run's
detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from native_kernels.declared import named_layout
from native_kernels.geometry import DetectorGeometry, GeometryError
from native_kernels.master import MasterFile, MasterFileError, read_master
from shmpipe.api.detector import RunDetector
from shmpipe.api.kernel import SetupContext


class KernelConfigError(ValueError):
    """Kernel parameters that cannot work with the chain they are in."""


def load_array(path: str | None, what: str) -> np.ndarray | None:
    """The array of a parameter file (``.npy`` or ``file.h5::dataset``); None when unset."""
    if path is None:
        return None
    p = Path(path)
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix in (".h5", ".hdf5", ".nxs"):
            import h5py

            name, _, dset = str(p).partition("::")
            with h5py.File(name, "r") as f:
                return np.asarray(f[dset or "data"][()])
    except (OSError, KeyError, ValueError) as exc:
        raise KernelConfigError(f"cannot read {what} from {path}: {exc}") from exc
    raise KernelConfigError(f"{what} file {path}: use .npy (or file.h5::dataset)")


def input_spec(ctx: SetupContext, name: str, kernel: str) -> tuple[int, tuple[int, ...], str]:
    """(n parts, part shape, dtype) of the input ``name`` as known at setup."""
    if name == "parts":
        if not ctx.parts:
            raise KernelConfigError(
                f"{kernel}: the source does not declare its parts (compressed payloads?); "
                "put a lambda_decompress kernel first and read 'decompress.modules'"
            )
        shapes = {p.shape for p in ctx.parts}
        dtypes = {p.dtype for p in ctx.parts}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise KernelConfigError(f"{kernel}: parts differ in shape or dtype: {ctx.parts}")
        return len(ctx.parts), shapes.pop(), dtypes.pop()
    if name not in ctx.available:
        raise KernelConfigError(
            f"{kernel}: input {name!r} is not produced earlier in the "
            f"chain; available: parts, {', '.join(ctx.available)}"
        )
    spec = ctx.available[name]
    if len(spec.shape) == 3:
        return spec.shape[0], spec.shape[1:], spec.dtype
    if len(spec.shape) == 2:
        return 0, spec.shape, spec.dtype
    raise KernelConfigError(
        f"{kernel}: input {name!r} has shape {spec.shape}; expected an image or a stack of modules"
    )


def as_parts(x: np.ndarray | list[np.ndarray]) -> list[np.ndarray] | np.ndarray:
    """A (n, rows, cols) stack becomes a list of module views; images and lists pass."""
    if isinstance(x, np.ndarray) and x.ndim == 3:
        return list(x)
    return x


def run_geometry(
    p, detector: RunDetector | None, default: DetectorGeometry | None = None
) -> DetectorGeometry:
    """The run's detector (``ctx.detector``, from ``[detector]``). Without one (a kernel set
    up outside a run), the deprecated ``geometry`` and ``missing_modules`` parameters:
    "lambda9m", a .toml/.json file or a detector name; unset, ``default``."""
    if detector is not None:
        return detector.geometry
    g = str(p.geometry or "")
    if not g and default is not None:
        return default.with_missing(p.missing_modules) if p.missing_modules else default
    try:
        return named_layout(g, p.missing_modules)
    except GeometryError as exc:
        raise KernelConfigError(f"geometry = {g!r}: {exc}") from exc


def master_param(path: str, kernel: str) -> MasterFile:
    """The DECTRIS master file of a kernel's ``master`` parameter; unreadable: a config error."""
    try:
        return read_master(path)
    except MasterFileError as exc:
        raise KernelConfigError(f"{kernel}: master = {path!r}: {exc}") from exc
