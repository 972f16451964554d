"""Reading results back: profiles with their axes, units and lineage, in one call.

From a file written by the HDF5 sink (also while it is written, or after a killed run)::

    >>> from shmpipe import results
    >>> r = results.load("lambda9m_scan_0001.h5")            # doctest: +SKIP
    >>> q, I = r.axis("integrate.intensity"), r["integrate.intensity"]   # doctest: +SKIP
    >>> r.units["integrate.radial"], I.shape                 # doctest: +SKIP
    ('q_nm^-1', (100, 1000))

From an output stream of the ASAPO sink, through the real ``asapo_consumer``::

    >>> r = results.load_asapo("localhost:8400", "bt_test", "azint", "scan_0001")  # doctest: +SKIP

``shmpipe results PATH`` (or ``--asapo``) prints what a file or output stream holds.
"""

from shmpipe.results.asapo import describe_asapo, load_asapo
from shmpipe.results.hdf5 import describe_file, load, read_stream
from shmpipe.results.model import Results

__all__ = ["Results", "describe_asapo", "describe_file", "load", "load_asapo", "read_stream"]
