"""shmpipe kernel adapters: the native kernels as steps of a TOML pipeline.

Registered as entry points of the ``shmpipe.kernels`` group (setup.cfg):

==================== ===================== ============================================
name                 class                 outputs
==================== ===================== ============================================
lambda_decompress    LambdaDecompress      ``modules`` (n, rows, cols)
lambda_stitch        LambdaStitch          ``image`` (assembled shape)
azimuthal_integrate  AzimuthalIntegrate    ``radial``, ``intensity``, ``sum_signal``,
                                           ``sum_normalization``, ``count``
                                           (+ ``sigma``, ``std`` with an error model)
frame_stats          FrameStats            ``sum``, ``max``, ``count_above``, ``n_valid``
                                           (+ ``roi_sums``, ``roi_version``)
==================== ===================== ============================================

A typical chain::

    [kernels.decompress]
    kind = "lambda_decompress"
    [kernels.stitch]
    kind = "lambda_stitch"
    input = "decompress.modules"
    [kernels.integrate]
    kind = "azimuthal_integrate"
    poni = "calib.poni"
    npt = 1000
    unit = "q_nm^-1"
    [kernels.stats]
    kind = "frame_stats"
    threshold = 1000

The integrator reads ``stitch.image`` by default; with ``input = "parts"`` (or
``"decompress.modules"``) it integrates straight from the modules (the fused path), and
frame_stats likewise summarises the modules (ROIs still in image coordinates). Then no image
need be stitched at all: the beamline chain (``examples/lambda9m_sim.toml``) is decompress,
integrate, stats.

One module per kernel, named as its entry point (``lambda_decompress.py`` ...); what they
share (``KernelConfigError``, parameter files, inputs, the run's detector) is in ``common.py``.
The names stay importable from here: setup.cfg's entry points and configs refer to them.
"""

from native_kernels.shmpipe_kernels.azimuthal_integrate import AzimuthalIntegrate
from native_kernels.shmpipe_kernels.common import KernelConfigError
from native_kernels.shmpipe_kernels.frame_stats import FrameStats
from native_kernels.shmpipe_kernels.lambda_decompress import LambdaDecompress
from native_kernels.shmpipe_kernels.lambda_stitch import LambdaStitch

__all__ = [
    "AzimuthalIntegrate",
    "FrameStats",
    "KernelConfigError",
    "LambdaDecompress",
    "LambdaStitch",
]
