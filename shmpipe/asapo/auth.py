"""TokenPolicy: which tokens may use which beamtimes.

By default every token is accepted (a test service). Configured with tokens, a request whose
token is unknown, or not valid for the beamtime it names, is refused: the broker answers 401
and the receiver an authorization error, which both clients report as ``AsapoWrongInputError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

ANY_BEAMTIME = "*"


class TokenPolicy:
    """Accept any token, or only configured ones.

    Parameters
    ----------
    tokens
        ``None``: accept every token. An iterable of tokens: each is valid for any beamtime.
        A mapping token -> beamtimes: each token is valid for the beamtimes listed
        (``"*"`` for any).
    """

    def __init__(self, tokens: Iterable[str] | Mapping[str, Iterable[str]] | None = None) -> None:
        if tokens is None:
            self._grants: dict[str, frozenset[str]] | None = None
        elif isinstance(tokens, Mapping):
            self._grants = {t: frozenset(bts) for t, bts in tokens.items()}
        else:
            self._grants = {t: frozenset({ANY_BEAMTIME}) for t in tokens}

    @property
    def open(self) -> bool:
        """Whether every token is accepted."""
        return self._grants is None

    def allows(self, token: str, beamtime: str) -> bool:
        """Whether ``token`` may read or write ``beamtime``."""
        if self._grants is None:
            return True
        beamtimes = self._grants.get(token)
        return beamtimes is not None and (ANY_BEAMTIME in beamtimes or beamtime in beamtimes)
