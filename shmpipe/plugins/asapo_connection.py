"""Where an ASAPO source or sink connects: the parameters the two share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class AsapoConnectionParams:
    """The ASAPO service, beamtime and token of an ASAPO source or sink (their first keys)."""

    endpoint: str = "localhost:8400"
    """ASAPO discovery endpoint, host:port."""
    beamtime: str = "asapo_test"
    """Beamtime id."""
    token: str = ""
    """Access token for the beamtime."""
