"""The ASAPO TCP wire format shared by the producer (receiver port) and the consumer cache read.

Every request is a fixed 2120-byte little-endian header; every answer a 1028-byte response.
The layouts were established by logging what the 25.3 clients send.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

#: op code, data id, data size, meta size, three custom words, message, stream, api version.
REQUEST_HEADER = struct.Struct("<B7xQQQ3Q1024s1024s10s6x")
#: op code, error code, message text.
RESPONSE_HEADER = struct.Struct("<BxH1024s")


class Opcode(enum.IntEnum):
    """Request op codes of the receiver / data server protocol."""

    TRANSFER_DATA = 2
    TRANSFER_DATASET_DATA = 3
    STREAM_INFO = 4
    LAST_STREAM = 5
    GET_BUFFER_DATA = 6
    AUTHORIZE = 7
    TRANSFER_METADATA = 8
    DELETE_STREAM = 9
    GET_META = 10
    PERSIST_STREAM = 12


class NetworkError(enum.IntEnum):
    """Error codes carried in a response."""

    NO_ERROR = 0
    REAUTHORIZE = 1
    WARNING = 2
    WRONG_REQUEST = 3
    NOT_SUPPORTED = 4
    NO_DATA = 5
    AUTHORIZATION = 6
    INTERNAL = 65535


class IngestMode(enum.IntFlag):
    """Bits of the producer's ingest mode (custom word 0)."""

    TRANSFER_DATA = 1
    TRANSFER_METADATA_ONLY = 2
    STORE_IN_FILESYSTEM = 4
    STORE_IN_DATABASE = 8


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


@dataclass(frozen=True)
class RequestHeader:
    """One decoded request header."""

    op: int
    data_id: int
    data_size: int
    meta_size: int
    custom: tuple[int, int, int]
    message: str
    stream: str
    api_version: str

    @classmethod
    def unpack(cls, raw: bytes) -> RequestHeader:
        """Decode the 2120 header bytes."""
        op, data_id, size, meta_size, c0, c1, c2, msg, stream, api = REQUEST_HEADER.unpack(raw)
        return cls(
            op, data_id, size, meta_size, (c0, c1, c2), _cstr(msg), _cstr(stream), _cstr(api)
        )

    def pack(self) -> bytes:
        """Encode to the 2120 header bytes (used by tests and tools, not by the service)."""
        return REQUEST_HEADER.pack(
            self.op,
            self.data_id,
            self.data_size,
            self.meta_size,
            *self.custom,
            self.message.encode(),
            self.stream.encode(),
            self.api_version.encode(),
        )


def pack_response(op: int, error: int, message: str = "") -> bytes:
    """Encode a response; the message is cut to the 1024 bytes the format allows."""
    return RESPONSE_HEADER.pack(op, error, message.encode("utf-8", "backslashreplace")[:1023])
