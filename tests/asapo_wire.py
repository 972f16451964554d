"""Raw clients of the ASAPO service's two ports, for hostile-input tests: what a program
other than the real clients can send (any header, any size, any URL, any body)."""

from __future__ import annotations

import http.client as httpclient
import socket
from dataclasses import dataclass

from shmpipe.asapo.protocol import RESPONSE_HEADER, Opcode, RequestHeader

TIMEOUT_S = 10.0


def split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def connect(address: str, timeout: float = TIMEOUT_S) -> socket.socket:
    return socket.create_connection(split(address), timeout=timeout)


def header(
    op: int,
    data_id: int = 0,
    data_size: int = 0,
    meta_size: int = 0,
    custom: tuple[int, int, int] = (0, 0, 0),
    message: str = "",
    stream: str = "",
    api: str = "v0.7",
) -> bytes:
    return RequestHeader(op, data_id, data_size, meta_size, custom, message, stream, api).pack()


@dataclass
class Response:
    op: int
    error: int
    text: str


def read_response(sock: socket.socket) -> Response | None:
    """The next response, or None when the service closed the connection."""
    raw = read_exact(sock, RESPONSE_HEADER.size)
    if raw is None:
        return None
    op, error, text = RESPONSE_HEADER.unpack(raw)
    return Response(op, error, text.split(b"\0", 1)[0].decode("utf-8", "replace"))


def read_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            got = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not got:
            return None
        buf += got
    return buf


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the service ends the connection (EOF or reset) before the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def authorize(
    sock: socket.socket, beamtime: str, source: str, token: str, ptype: str = "processed"
) -> Response | None:
    creds = f"{ptype}%inst%step%{beamtime}%auto%{source}%{token}".encode()
    sock.sendall(header(Opcode.AUTHORIZE, meta_size=len(creds)) + creds)
    return read_response(sock)


def send_message(
    sock: socket.socket, id_: int, name: str, data: bytes, stream: str = "s", meta: bytes = b"{}"
) -> Response | None:
    sock.sendall(
        header(Opcode.TRANSFER_DATA, id_, len(data), len(meta), (13, 0, 0), name, stream)
        + meta
        + data
    )
    return read_response(sock)


def cache_read(
    address: str, buf_id: int, size: int, beamtime: str, source: str, stream: str = "s"
) -> tuple[Response | None, bytes]:
    """A consumer's op 6 as the 25.3 client sends it (no token): response and payload."""
    with connect(address) as sock:
        field = f"inst\u00a7step\u00a7{beamtime}\u00a7{source}\u00a7{stream}"
        sock.sendall(header(Opcode.GET_BUFFER_DATA, buf_id, size, stream=field, api="v0.1"))
        resp = read_response(sock)
        data = read_exact(sock, size) if resp is not None and resp.error == 0 else b""
        return resp, data or b""


def http(
    server_name: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT_S,
) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    conn = httpclient.HTTPConnection(*split(server_name), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def raw_http(server_name: str, request: bytes, timeout: float = TIMEOUT_S) -> bytes:
    """Send raw bytes and read until the service closes the connection (or the timeout)."""
    with connect(server_name, timeout) as sock:
        sock.sendall(request)
        out = b""
        try:
            while True:
                got = sock.recv(65536)
                if not got:
                    break
                out += got
                if b"\r\n\r\n" in out and _complete(out):
                    break
        except (ConnectionResetError, TimeoutError):
            pass
        return out


def _complete(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
