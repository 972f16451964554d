"""The kernels that validate live parameters in the device, set up as the workers' are.

A kernel checks new parameters against what only its ``setup`` knows (the image shape behind
a stack of modules, the room it declared), so the device sets up, in its own process, every
kernel of the chain that takes live parameters, with the inputs the workers gave it: the
source's parts and the outputs of the kernels before it, as the run's chain layout records
them. Kernels without live parameters (the integrator and its tables) are not set up here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shmpipe.api.kernel import ArraySpec, Kernel, SetupContext


def takes_live_params(kernel: Kernel) -> bool:
    """Whether ``kernel`` overrides ``Kernel.check_params`` (the base refuses everything)."""
    return type(kernel).check_params is not Kernel.check_params


def set_up_live_kernels(
    kernels: Sequence[Kernel],
    outputs: Sequence[Any],
    parts: list[ArraySpec] | None,
    cache_dir: Path,
) -> list[Kernel]:
    """Run ``setup`` of every kernel that takes live parameters, as a worker runs it.

    Parameters
    ----------
    kernels : sequence of Kernel
        The chain's kernels as configured (fresh instances), in chain order.
    outputs : sequence of OutputPlacement
        The run's chain layout (``ChainLayout.outputs``: ``kernel``, ``spec``, ``qualified``).
    parts : list of ArraySpec or None
        The source's parts, as the workers got them.
    cache_dir : Path
        The run's table cache.

    Returns
    -------
    list of Kernel
        ``kernels``, those with live parameters now set up.

    Raises
    ------
    RuntimeError
        A kernel whose setup fails here or declares other outputs than in the workers.
    """
    available: dict[str, ArraySpec] = {}
    for k in kernels:
        mine = [o for o in outputs if o.kernel == k.name]
        if takes_live_params(k):
            ctx = SetupContext(parts=parts, available=dict(available), cache_dir=cache_dir)
            try:
                declared = list(k.setup(ctx) or [])
            except Exception as exc:  # noqa: BLE001 - named, then the device cannot start
                raise RuntimeError(
                    f"kernel {k.name!r} failed in setup: {type(exc).__name__}: {exc}"
                ) from exc
            if declared != [o.spec for o in mine]:
                raise RuntimeError(
                    f"kernel {k.name!r} declares other outputs in the device than in the run"
                )
        available.update({o.qualified: o.spec for o in mine})
    return list(kernels)
