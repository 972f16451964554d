"""The run's detector: declared once, handed to every kernel, the view and the Tango device.

A run has one detector. The configuration declares it (``[detector]``: a layout name or file,
a PONI file or a DECTRIS master file; or, deprecated, a kernel's ``geometry`` key), the
configuration layer resolves it once, and kernels find it in ``SetupContext.detector``
instead of each reading a layout of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunDetector:
    """The detector of one run.

    Attributes
    ----------
    geometry : native_kernels.geometry.DetectorGeometry
        Where each module sits, the module shape and pixel size, absent modules marked.
    origin : str
        Where it was declared, for messages (``detector.geometry = 'lambda9m' (run.toml)``).
    """

    geometry: Any
    origin: str

    def describe(self) -> dict[str, Any]:
        """A JSON-serialisable description: the layout (``DetectorGeometry.to_dict``) and origin."""
        return {**self.geometry.to_dict(), "origin": self.origin}
