"""Limits: what one request may claim, and the checks that keep memory and the journal in step.

Every size a client announces is checked against these before anything is allocated or read,
and every integer that reaches the store is checked against what the journal (SQLite, signed
64-bit) can hold, so a value the journal would refuse never changes the in-memory state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shmpipe.asapo.errors import WrongInputError

#: The largest message id, pointer or counter: ids up to this leave room for the finish flag
#: (``last_id + 1``) and the journal's ordering sentinel (``1 << 62``).
MAX_ID = (1 << 62) - 2
#: The longest delay a negative ack or resend may ask for (about 11.6 days).
MAX_DELAY_MS = 1_000_000_000
#: op 7 credentials (``type%instance%step%beamtime%beamline%data_source%token``) are short.
MAX_CREDENTIALS_BYTES = 4096
#: An HTTP body read before its sender is known (a folder-token request is ~100 bytes).
MAX_UNAUTHENTICATED_BODY_BYTES = 65536
#: All header lines of one HTTP request together (the stdlib alone allows 100 x 64 KiB).
MAX_HEADER_BYTES = 32768


@dataclass(frozen=True)
class Limits:
    """Bounds on what a client can make the service hold; defaults fit LAMBDA 9M frames.

    Parameters
    ----------
    max_payload_bytes
        Largest payload of one message (streamed to disk in chunks, never held whole).
    max_meta_bytes
        Largest user metadata (JSON) of one message, held in memory while it is parsed.
    max_body_bytes
        Largest HTTP request body (acks, folder and transfer requests are a few bytes).
    idle_timeout_s
        A connection that sends nothing for this long is closed (both ports). Clients
        reconnect by themselves.
    max_connections
        Connections served at once per port; more are closed as they arrive.
    listen_backlog
        Connections the kernel queues while the service accepts.
    file_mode
        Permission bits of the payload files the service writes.
    folder_token_s
        How long a file-transfer folder token stays valid.
    """

    max_payload_bytes: int = 1 << 30
    max_meta_bytes: int = 1 << 20
    max_body_bytes: int = 1 << 20
    idle_timeout_s: float = 300.0
    max_connections: int = 512
    listen_backlog: int = 1024
    file_mode: int = 0o640
    folder_token_s: float = 3600.0


def check_int(name: str, value: Any, low: int = 0, high: int = MAX_ID) -> int:
    """``value`` as an int in ``[low, high]``.

    Raises
    ------
    WrongInputError
        When it is not an integer (booleans included) or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(value) if isinstance(value, str) else None
        except ValueError:
            value = None
        if value is None:
            raise WrongInputError(f"{name} must be an integer")
    if not low <= value <= high:
        raise WrongInputError(f"{name} must be between {low} and {high}")
    return value


def parse_json(raw: bytes | str, what: str) -> Any:
    """Decode JSON, turning every way it can fail (depth included) into ``WrongInputError``."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise WrongInputError(f"{what} must be JSON") from exc


def json_object(raw: bytes | str, what: str, *, empty_ok: bool = False) -> dict[str, Any]:
    """Decode a JSON object (``{}`` for an empty body when ``empty_ok``)."""
    if empty_ok and not (raw.strip() if raw else raw):
        return {}
    value = parse_json(raw, what)
    if not isinstance(value, dict):
        raise WrongInputError(f"{what} must be a JSON object")
    return value
