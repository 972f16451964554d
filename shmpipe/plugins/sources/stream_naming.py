"""Which stream comes after this one, when producers do not say (AsapoWorker's naming schemes).

A producer that ends a stream with a finished flag names the next stream itself; one that does
not leaves the consumer to guess from the stream list. Three schemes cover beamline practice:

- ``numeric``: streams are numbers ("1", "2", ...); the next is the smallest number above.
- ``date``: streams are timestamps ("2026-11-21T10:00:00", "20261121_100000", ...); the next
  is the earliest one after the current.
- ``basename``: streams are a base plus a counter ("scan_0001", "scan_0002"); the next is the
  same base with the smallest counter above.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

SCHEMES = ("numeric", "date", "basename")
_BASENAME = re.compile(r"^(.*?)(\d+)$")
_DATE_FORMATS = ("%Y%m%d_%H%M%S", "%Y%m%dT%H%M%S", "%Y%m%d%H%M%S", "%Y%m%d", "%Y-%m-%d")


def _as_date(name: str) -> datetime | None:
    try:
        return datetime.fromisoformat(name)
    except ValueError:
        pass
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(name, fmt)
        except ValueError:
            continue
    return None


def next_stream(scheme: str, current: str, names: Iterable[str]) -> str | None:
    """The stream that follows ``current`` among ``names`` under ``scheme``, or None.

    Parameters
    ----------
    scheme : {"numeric", "date", "basename"}
    current : str
        The stream being read now.
    names : iterable of str
        The streams the broker knows.
    """
    names = [n for n in names if n != current]
    if scheme == "numeric":
        if not current.isdigit():
            return None
        later = [n for n in names if n.isdigit() and int(n) > int(current)]
        return min(later, key=int) if later else None
    if scheme == "date":
        now = _as_date(current)
        if now is None:
            return None
        later = [(d, n) for n in names if (d := _as_date(n)) is not None and d > now]
        return min(later)[1] if later else None
    if scheme == "basename":
        m = _BASENAME.match(current)
        if m is None:
            return None
        base, number = m.group(1), int(m.group(2))
        later = []
        for n in names:
            mm = _BASENAME.match(n)
            if mm and mm.group(1) == base and int(mm.group(2)) > number:
                later.append((int(mm.group(2)), n))
        return min(later)[1] if later else None
    raise ValueError(f"unknown stream naming scheme {scheme!r}; known: {', '.join(SCHEMES)}")
