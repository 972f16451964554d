"""Errors the store raises; the broker maps each to the HTTP status the clients understand."""

from __future__ import annotations

import json
from typing import Any


class BrokerError(Exception):
    """A failed broker operation: an HTTP status and the body the client parses."""

    status = 500

    def __init__(self, body: str) -> None:
        super().__init__(body)
        self.body = body


class NoDataError(BrokerError):
    """HTTP 409: end of stream, stream finished or a gap, told apart by the answer's ids.

    The client reads ``id >= id_max`` with an empty ``next_stream`` as end of stream, with a
    non-empty one as stream finished, and ``id < id_max`` as a gap (it then polls by id).
    """

    status = 409

    def __init__(self, id_: int, id_max: int, next_stream: str = "") -> None:
        super().__init__(
            json.dumps(
                {"op": "get_record_by_id", "id": id_, "id_max": id_max, "next_stream": next_stream}
            )
        )
        self.id, self.id_max, self.next_stream = id_, id_max, next_stream


class PartialDataError(BrokerError):
    """HTTP 206: a dataset with fewer parts than asked for; the body is the partial record."""

    status = 206

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(json.dumps(record))


class WrongInputError(BrokerError):
    """HTTP 400: a request the client made wrongly (e.g. a second ack of one id)."""

    status = 400


class UnauthorizedError(BrokerError):
    """HTTP 401: an unknown token, or one not valid for the beamtime."""

    status = 401
