"""Who may use which beamtime: the token policy, folder tokens and log redaction.

By default every token is accepted (a test service). Configured with tokens, a request whose
token is unknown, or not valid for the beamtime it names, is refused: the broker answers 401
and the receiver an authorization error, which both clients report as ``AsapoWrongInputError``.

One token syntax everywhere (``--token`` of ``shmpipe asapo-standalone`` and of
``python -m shmpipe.asapo``, and ``--token-file`` lines): ``TOKEN`` is valid for every
beamtime, ``TOKEN=BT1,BT2`` only for the beamtimes listed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ANY_BEAMTIME = "*"

Grants = Mapping[str, Iterable[str]]


def parse_token_spec(spec: str) -> tuple[str, list[str]]:
    """Split ``TOKEN`` or ``TOKEN=BT1,BT2`` into the token and its beamtimes.

    Raises
    ------
    ValueError
        For an empty token or an empty beamtime list after ``=``.
    """
    token, sep, beamtimes = spec.strip().partition("=")
    if not token:
        raise ValueError(f"empty token in {redact_token_spec(spec)!r}")
    names = [b.strip() for b in beamtimes.split(",") if b.strip()] if sep else [ANY_BEAMTIME]
    if not names:
        raise ValueError(f"no beamtime after '=' in {redact_token_spec(spec)!r}")
    return token, names


def parse_token_specs(specs: Iterable[str]) -> dict[str, list[str]]:
    """Token -> beamtimes for several specs (a token given twice gets both lists)."""
    grants: dict[str, list[str]] = {}
    for spec in specs:
        token, beamtimes = parse_token_spec(spec)
        grants.setdefault(token, []).extend(beamtimes)
    return grants


def read_token_file(path: str) -> list[str]:
    """The token specs of a file: one per line, ``#`` comments and blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line]


def redact_token_spec(spec: str) -> str:
    _, sep, beamtimes = spec.partition("=")
    return "***" + sep + beamtimes


class TokenPolicy:
    """Accept any token, or only configured ones (compared in constant time).

    Parameters
    ----------
    tokens
        ``None``: accept every token. An iterable of tokens: each is valid for any beamtime.
        A mapping token -> beamtimes: each token is valid for the beamtimes listed
        (``"*"`` for any).
    """

    def __init__(self, tokens: Iterable[str] | Grants | None = None) -> None:
        if tokens is None:
            self._grants: list[tuple[bytes, frozenset[str]]] | None = None
            return
        if not isinstance(tokens, Mapping):
            tokens = {t: [ANY_BEAMTIME] for t in tokens}
        self._grants = [(t.encode(), frozenset(bts)) for t, bts in tokens.items()]

    @property
    def open(self) -> bool:
        """Whether every token is accepted."""
        return self._grants is None

    @property
    def secrets(self) -> list[str]:
        """The configured tokens (for log redaction)."""
        return [t.decode() for t, _ in self._grants or ()]

    def allows(self, token: str, beamtime: str) -> bool:
        """Whether ``token`` may read or write ``beamtime``."""
        if self._grants is None:
            return True
        given = token.encode("utf-8", "surrogatepass")
        allowed = False
        for known, beamtimes in self._grants:  # every grant is compared: no early exit
            if hmac.compare_digest(given, known) and (
                ANY_BEAMTIME in beamtimes or beamtime in beamtimes
            ):
                allowed = True
        return allowed


@dataclass(frozen=True)
class FolderGrant:
    """What one file-transfer folder token allows."""

    beamtime: str
    folder: str
    expires: float  # time.monotonic()


class FolderTokens:
    """Folder tokens for the file-transfer service, each bound to a beamtime and folder.

    Tokens are random and kept only as their SHA-256, so looking one up reveals nothing
    about the others through timing; expired ones are dropped as new ones are issued.

    Parameters
    ----------
    lifetime_s
        Validity of a token from its issue.
    """

    def __init__(self, lifetime_s: float = 3600.0) -> None:
        self.lifetime_s = lifetime_s
        self._grants: dict[bytes, FolderGrant] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def issue(self, beamtime: str, folder: str) -> str:
        """A new token for ``folder`` of ``beamtime``."""
        token = secrets.token_hex(16)
        now = time.monotonic()
        with self._lock:
            for key in [k for k, g in self._grants.items() if g.expires <= now]:
                del self._grants[key]
            self._grants[self._digest(token)] = FolderGrant(beamtime, folder, now + self.lifetime_s)
        return token

    def live(self) -> int:
        """How many issued tokens are still valid."""
        now = time.monotonic()
        with self._lock:
            return sum(g.expires > now for g in self._grants.values())

    def grant(self, token: str) -> FolderGrant | None:
        """What ``token`` allows, or None when it is unknown or expired."""
        with self._lock:
            grant = self._grants.get(self._digest(token))
        if grant is None or grant.expires <= time.monotonic():
            return None
        return grant


_BEARER = re.compile(r"(?:^|[;,\s])Authorization=Bearer\s+([^;,\s]+)")


def bearer_token(cookie: str, authorization: str) -> str:
    """The folder token of a transfer request: cookie ``Authorization=Bearer T`` or header
    ``Authorization: Bearer T``; empty when neither carries one."""
    found = _BEARER.search(cookie or "")
    if found:
        return found[1]
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


# ---------------------------------------------------------------- redaction
_SECRET_PATTERNS = (
    # ?token=... in URLs and query strings (also URL-encoded forms)
    re.compile(r"(?i)((?:\?|&|%3F|%26|\b)token(?:=|%3D))[^&\s'\"]*"),
    re.compile(r"(?i)(bearer\s+)[^;,\s'\"]+"),
    re.compile(r"(?i)(\"token\"\s*:\s*\")[^\"]*"),
)


def redact(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every token value replaced by ``***``: query parameters, bearer
    credentials, JSON ``"Token"`` fields and any of the ``known`` tokens."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    for secret in known:
        if secret:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """A handler filter that redacts tokens from every record it passes.

    Parameters
    ----------
    known
        Tokens to blank wherever they appear (the configured ones).
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        super().__init__()
        self.known = [k for k in known if k]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.known)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.known)
        if clean != message:
            record.msg, record.args = clean, None
        return True
