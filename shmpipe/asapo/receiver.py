"""Receiver: the producer's TCP protocol, plus the consumer's cache read (op 6).

One thread per connection. A producer connection starts with an authorization request (op 7)
whose meta carries ``type%instance%step%beamtime%beamline%data_source%token``; then every
request is a header, ``meta_size`` bytes of JSON and, when the ingest mode transfers data,
``data_size`` payload bytes, and gets exactly one response. A consumer opens connections to
the record's ``source`` address and asks for payloads by ``buf_id`` (op 6); the answer is a
response header followed by the payload, sent with ``sendfile``.

Hostile input: nothing a client announces is allocated or read before it is checked. A
connection holds one 2 KiB header buffer until it authorizes; credentials are at most 4 KiB;
after that, user metadata and payload sizes are bounded by :class:`~shmpipe.asapo.limits.Limits`
and payloads are streamed to disk through one 1 MiB buffer. A request the service cannot keep
in step with (too large, or not authorized) is answered and the connection closed. Idle
connections time out and the number of connections is capped (:mod:`shmpipe.netserver`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shmpipe.asapo.auth import TokenPolicy
from shmpipe.asapo.connections import TrackedConnections
from shmpipe.asapo.errors import BrokerError
from shmpipe.asapo.limits import (
    MAX_CREDENTIALS_BYTES,
    MAX_ID,
    Limits,
    check_int,
    json_object,
    parse_json,
)
from shmpipe.asapo.payloads import CHUNK, PayloadError, PayloadStore, check_folder_name
from shmpipe.asapo.protocol import (
    REQUEST_HEADER,
    IngestMode,
    NetworkError,
    Opcode,
    RequestHeader,
    pack_response,
)
from shmpipe.asapo.store import DuplicateRecord, MessageStore

log = logging.getLogger(__name__)

#: payloads up to this size are answered with one send (no sendfile set-up)
SMALL_PAYLOAD = 256 << 10


class ConnectionClosed(Exception):
    """The peer closed the connection."""


class EndConnection(Exception):
    """Answer ``response`` and close: the request cannot be followed (too big, unauthorized)."""

    def __init__(self, response: bytes) -> None:
        super().__init__("end of connection")
        self.response = response


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock`` or raise :class:`ConnectionClosed`."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionClosed
        got += n


def drain(read_into: Any, size: int, chunk: memoryview) -> None:
    """Read and discard ``size`` payload bytes, keeping the connection in step."""
    while size:
        view = chunk[: min(size, len(chunk))]
        read_into(view)
        size -= len(view)


@dataclass
class Session:
    """Who a producer connection authorized as."""

    beamtime: str
    data_source: str
    producer_type: str


class _Handler(socketserver.BaseRequestHandler):
    server: ReceiverServer

    def setup(self) -> None:
        self.server.track(self.request, True)

    def finish(self) -> None:
        self.server.track(self.request, False)

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        receiver = self.server.receiver
        header = bytearray(REQUEST_HEADER.size)
        chunk: memoryview | None = None  # allocated once the connection is authorized
        session: Session | None = None
        try:
            while True:
                recv_exact(sock, memoryview(header))
                req = RequestHeader.unpack(bytes(header))
                if req.op == Opcode.AUTHORIZE:
                    credentials = _read_meta(sock, req, MAX_CREDENTIALS_BYTES)
                    session, error, text = receiver.authorize(
                        credentials.decode("utf-8", "replace")
                    )
                    sock.sendall(pack_response(req.op, error, text))
                    continue
                if req.op == Opcode.GET_BUFFER_DATA:
                    _read_meta(sock, req, MAX_CREDENTIALS_BYTES)
                    receiver.serve_cached(sock, req, session)
                    continue
                if session is None:
                    # not worth a byte of memory: answer and close without reading on
                    raise EndConnection(
                        pack_response(req.op, NetworkError.AUTHORIZATION, "not authorized")
                    )
                receiver.check_sizes(req)
                meta = _read_meta(sock, req, receiver.limits.max_meta_bytes)
                if chunk is None:
                    chunk = memoryview(bytearray(CHUNK))
                error, text = receiver.handle_request(
                    session, req, meta, lambda v: recv_exact(sock, v), chunk
                )
                receiver.sync()  # a confirmed message is on disk before the producer hears so
                sock.sendall(pack_response(req.op, error, text))
        except EndConnection as end:
            try:
                sock.sendall(end.response)
            except OSError:
                pass
        except (ConnectionClosed, ConnectionError, OSError):
            pass  # the peer went away, timed out, or the service is stopping
        except Exception as exc:  # a bug must not leave a traceback per connection
            log.error("receiver connection ended by %s: %s", type(exc).__name__, exc)
            try:
                sock.sendall(pack_response(0, NetworkError.INTERNAL, "internal error"))
            except OSError:
                pass


def _read_meta(sock: socket.socket, req: RequestHeader, limit: int) -> bytes:
    """The ``meta_size`` bytes after the header, refused (and the connection ended) when they
    exceed ``limit``: the size is checked before anything is allocated."""
    if req.meta_size > limit:
        raise EndConnection(
            pack_response(
                req.op, NetworkError.WRONG_REQUEST, f"meta size {req.meta_size} > {limit} bytes"
            )
        )
    meta = bytearray(req.meta_size)
    recv_exact(sock, memoryview(meta))
    return bytes(meta)


class ReceiverServer(TrackedConnections, socketserver.ThreadingTCPServer):
    """The listening socket; tracks live connections so :meth:`close_all` can end them."""

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        self._init_tracking(receiver.limits)
        super().__init__(address, _Handler)


class Receiver:
    """Turns producer requests into store records and payload files.

    Parameters
    ----------
    store, payloads
        Where records and payloads go.
    tokens
        The token policy for op 7.
    advertised
        ``host:port`` written into each record's ``source`` (where consumers read the cache).
    limits
        Bounds on sizes, connections and idle time.
    """

    def __init__(
        self,
        store: MessageStore,
        payloads: PayloadStore,
        tokens: TokenPolicy,
        advertised: str = "",
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.store = store
        self.payloads = payloads
        self.tokens = tokens
        self.advertised = advertised
        self.stats: Counter[str] = Counter()  # cache_hits, cache_misses (diagnostic)
        # commits the journal before each answer; replaced by the service when persistent
        self.sync: Callable[[], None] = lambda: None

    # ---------------------------------------------------------------- op 7
    def authorize(self, credentials: str) -> tuple[Session | None, int, str]:
        """Check ``type%instance%step%beamtime%beamline%data_source%token``."""
        parts = credentials.split("%")
        if len(parts) < 7:
            return None, NetworkError.WRONG_REQUEST, "malformed credentials"
        ptype, _instance, _step, beamtime, beamline, data_source = parts[:6]
        token = "%".join(parts[6:])
        if beamtime in ("", "auto"):
            beamtime = beamline
        if not self.tokens.allows(token, beamtime):
            return None, NetworkError.AUTHORIZATION, f"wrong token for beamtime {beamtime}"
        try:
            check_folder_name("beamtime", beamtime)
            check_folder_name("data source", data_source)
        except PayloadError as exc:
            return None, NetworkError.WRONG_REQUEST, str(exc)
        return Session(beamtime, data_source, ptype), NetworkError.NO_ERROR, ""

    def check_sizes(self, req: RequestHeader) -> None:
        """Refuse (and end the connection on) a request whose announced sizes are out of
        bounds, before any of it is read."""
        limit = self.limits.max_payload_bytes
        problem = ""
        if req.op == Opcode.TRANSFER_METADATA:
            if req.data_size > self.limits.max_meta_bytes:
                problem = f"metadata size {req.data_size} > {self.limits.max_meta_bytes} bytes"
        elif req.custom[0] & IngestMode.TRANSFER_DATA and req.data_size > limit:
            problem = f"payload size {req.data_size} > {limit} bytes"
        if problem:
            raise EndConnection(pack_response(req.op, NetworkError.WRONG_REQUEST, problem))

    # ---------------------------------------------------------------- op 6
    def serve_cached(
        self, sock: socket.socket, req: RequestHeader, session: Session | None = None
    ) -> None:
        """Answer a consumer's cache read: header then payload, or "no data".

        The 25.3 consumer sends no token here; its request names
        ``instance§step§beamtime§source§stream`` in the stream field, and only a payload of that
        beamtime and data source, with the random buf id and exact size of its record, is
        served (an authorized connection is held to its own beamtime and source).
        """
        owner = _cache_read_owner(req.stream)
        if session is not None:
            mine = (session.beamtime, session.data_source)
            owner = mine if owner in (None, mine) else None
        ref = self.payloads.cached(req.data_id, owner) if owner is not None else None
        self.stats["cache_misses" if ref is None else "cache_hits"] += 1
        if ref is None or ref.size != req.data_size:
            sock.sendall(pack_response(req.op, NetworkError.NO_DATA, "not in cache"))
            return
        try:
            fd = os.open(ref.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            sock.sendall(pack_response(req.op, NetworkError.NO_DATA, "payload file missing"))
            return
        try:
            answer = pack_response(req.op, NetworkError.NO_ERROR)
            if ref.size <= SMALL_PAYLOAD:  # one send for answer and payload
                data = os.pread(fd, ref.size, 0)
                if len(data) != ref.size:
                    raise ConnectionClosed  # file shrank under us: end this connection
                sock.sendall(answer + data)
                return
            sock.sendall(answer)
            sent = 0
            while sent < ref.size:
                n = os.sendfile(sock.fileno(), fd, sent, ref.size - sent)
                if n == 0:
                    raise ConnectionClosed
                sent += n
        finally:
            os.close(fd)

    # ---------------------------------------------------------------- the rest
    def handle_request(
        self, session: Session, req: RequestHeader, meta: bytes, read_into: Any, chunk: memoryview
    ) -> tuple[int, str]:
        """Serve one authorized request; returns (error code, response text)."""
        key = (session.beamtime, session.data_source)
        try:
            if req.op in (Opcode.TRANSFER_DATA, Opcode.TRANSFER_DATASET_DATA):
                return self._transfer(key, req, meta, read_into, chunk)
            if req.op == Opcode.TRANSFER_METADATA:
                return self._set_meta(key, req, read_into)
            if req.op == Opcode.GET_META:
                stream = req.stream if req.custom[0] else None
                found = self.store.get_meta(key, stream)
                return NetworkError.NO_ERROR, json.dumps(found) if found is not None else ""
            if req.op == Opcode.DELETE_STREAM:
                flags = req.custom[0]
                self.store_delete(
                    key, req.stream, error_on_not_exist=bool(flags & 1), delete_meta=bool(flags & 2)
                )
                return NetworkError.NO_ERROR, ""
            if req.op == Opcode.STREAM_INFO:
                infos = [s for s in self.store.streams(key) if s["name"] == req.stream]
                return NetworkError.NO_ERROR, json.dumps(infos[0] if infos else {})
            if req.op == Opcode.LAST_STREAM:
                infos = self.store.streams(key)
                return NetworkError.NO_ERROR, json.dumps(infos[-1] if infos else {})
            if req.op == Opcode.PERSIST_STREAM:
                return NetworkError.NO_ERROR, ""
        except DuplicateRecord as exc:
            return NetworkError.WARNING, str(exc)
        except (BrokerError, PayloadError) as exc:
            return NetworkError.WRONG_REQUEST, str(exc)
        except ValueError as exc:
            return NetworkError.WRONG_REQUEST, f"bad request: {exc}"
        log.warning("unsupported receiver op %s", req.op)
        if req.custom[0] & IngestMode.TRANSFER_DATA:
            drain(read_into, req.data_size, chunk)
        return NetworkError.NOT_SUPPORTED, f"op {req.op} not supported"

    def store_delete(
        self, key: tuple[str, str], stream: str, error_on_not_exist: bool, delete_meta: bool
    ) -> None:
        """Delete a stream and its internal payload blobs."""
        messages = self.store.delete_stream(key, stream, error_on_not_exist, delete_meta)
        self.payloads.forget([m["buf_id"] for m in messages if m.get("buf_id")])

    def _transfer(
        self,
        key: tuple[str, str],
        req: RequestHeader,
        meta: bytes,
        read_into: Any,
        chunk: memoryview,
    ) -> tuple[int, str]:
        mode, substream, dataset_size = req.custom
        carries_data = bool(mode & IngestMode.TRANSFER_DATA) and req.data_size > 0
        try:
            # the clients need "meta" to be an object; a message sent without one gets {}
            user_meta = json_object(meta, "user meta", empty_ok=True)
            if req.op == Opcode.TRANSFER_DATASET_DATA:
                check_int("dataset size", dataset_size, 1, MAX_ID)
                check_int("dataset substream", substream, 1, dataset_size)
            if req.data_id or req.op == Opcode.TRANSFER_DATASET_DATA:  # 0: the service picks
                check_int("message id", req.data_id, 1, MAX_ID)
        except BrokerError:
            if carries_data:  # keep the connection in step before answering the error
                drain(read_into, req.data_size, chunk)
            raise
        buf_id = 0
        if carries_data:
            # on error receive() has consumed exactly data_size bytes, so the stream stays
            # in step and the error is answered on the same connection
            buf_id = self.payloads.receive(
                read_into,
                req.data_size,
                req.message,
                bool(mode & IngestMode.STORE_IN_FILESYSTEM),
                chunk,
                key,
            )
        record = {
            "_id": req.data_id,
            "size": req.data_size,
            "name": req.message,
            "timestamp": time.time_ns(),
            "source": self.advertised,
            "ib_source": "",
            "buf_id": buf_id,
            "stream": req.stream,
            "dataset_substream": substream,
            "ingest_mode": mode,
            "meta": user_meta,
        }
        try:
            if req.op == Opcode.TRANSFER_DATASET_DATA:
                self.store.add_dataset_part(key, req.stream, req.data_id, dataset_size, record)
                return NetworkError.NO_ERROR, json.dumps({"id": req.data_id})
            new_id = self.store.add_message(key, req.stream, record, auto_id=req.data_id == 0)
        except (DuplicateRecord, BrokerError):
            if buf_id:
                self.payloads.forget([buf_id])  # an unused blob (data files are kept)
            raise
        return NetworkError.NO_ERROR, json.dumps({"id": new_id})

    def _set_meta(
        self, key: tuple[str, str], req: RequestHeader, read_into: Any
    ) -> tuple[int, str]:
        # the document travels as the payload; custom word 1 encodes the mode as
        # op + 10 * upsert with op 1 insert, 2 replace, 3 update (what the 25.3 producer sends)
        raw = bytearray(req.data_size)  # bounded by check_sizes()
        read_into(memoryview(raw))
        doc = parse_json(raw, "metadata") if raw.strip() else None
        op, upsert = req.custom[1] % 10, req.custom[1] // 10 == 1
        mode = {1: "insert", 2: "replace", 3: "update"}.get(op, "replace")
        stream = req.stream or None  # the beamtime's meta comes with an empty stream
        self.store.set_meta(key, stream, doc, mode, upsert)
        return NetworkError.NO_ERROR, ""


def _cache_read_owner(field: str) -> tuple[str, str] | None:
    """(beamtime, data source) named by a cache read's stream field
    (``instance§step§beamtime§source§stream``); None when it names none."""
    parts = field.split("\u00a7")
    return (parts[2], parts[3]) if len(parts) >= 5 else None
