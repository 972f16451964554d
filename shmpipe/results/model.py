"""What the reader returns: one stream's results as numpy arrays, with axes, units, lineage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Results:
    """The committed results of one stream, from a results file or an ASAPO output stream.

    Attributes
    ----------
    origin : str
        The file path, or ``asapo://endpoint/beamtime/data_source``.
    stream : str
        The input stream these results were made from.
    message_id : numpy.ndarray
        ``(n,)`` int64: the input message id of each row, in the order stored.
    arrays : dict of str to numpy.ndarray
        Per-row outputs by qualified name (``integrate.intensity``), each ``(n, ...)``.
    axes : dict of str to numpy.ndarray
        Abscissae by qualified name (``integrate.radial``): ``(npt,)`` when one axis served
        every row (the usual case), ``(n, npt)`` when it changed during the stream.
    units : dict of str to str
        Unit of each output and axis that declares one (``q_nm^-1``, ``counts``).
    axis_of, errors_of : dict of str to str
        Output -> the name of its axis / of its standard uncertainties.
    lineage : dict of str to numpy.ndarray
        Per-row ``name``, ``timestamp`` (source), ``published``, ``attempt``, and for ASAPO
        output streams ``run`` and ``config_hash``.
    errors : dict of str to numpy.ndarray
        The error records of the stream: ``message_id``, ``name``, ``kernel``, ``error``, ...
    runs : list of dict
        The runs that wrote these rows: name, host, version, commit, start and end time,
        configuration hash (and, in a file, the row each run started at and its configuration).
    result_hash : str
        Hash of the result-shaping configuration every row was made with.
    attrs : dict
        Stream state: ``finished``, ``next_stream`` where known.
    """

    origin: str
    stream: str
    message_id: np.ndarray
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    axes: dict[str, np.ndarray] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    axis_of: dict[str, str] = field(default_factory=dict)
    errors_of: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, np.ndarray] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    result_hash: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.message_id)

    def __getitem__(self, name: str) -> np.ndarray:
        """An output or an axis by qualified name."""
        if name in self.arrays:
            return self.arrays[name]
        if name in self.axes:
            return self.axes[name]
        raise KeyError(f"no output {name!r}; stored: {sorted([*self.arrays, *self.axes])}")

    def axis(self, name: str) -> np.ndarray:
        """The abscissa of output ``name`` (``results.axis("integrate.intensity")``)."""
        return self.axes[self.axis_of[name]]
