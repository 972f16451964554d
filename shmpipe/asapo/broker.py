"""Broker: the HTTP side of the service — discovery, broker, authorizer and file transfer.

The clients are given one ``server_name`` (``host:port``) and reach every HTTP service through
it, as they do through ASAPO's nginx front: discovery answers with this same address for the
broker and the file-transfer service, and with the receiver's address for producers.

Routes::

    GET  /asapo-discovery/v0.1/{asapo-broker|asapo-file-transfer|asapo-receiver|version}
    POST /asapo-authorizer/v0.2/folder          folder token for the file transfer
    POST /v0.2/transfer                         raw file bytes ({"Folder","FileName"})
    POST /v0.7/creategroup                      new group id
    /v0.7/beamtime/{bt}/{source}/{stream}/...   next, by id, last, acks, nacks, lastack, size,
                                                meta, streams, sources, delete, resetcounter

Hostile input: a request's token (query ``token`` for beamtime routes, the folder token for a
transfer) is checked before its body is read; bodies are bounded
(:class:`~shmpipe.asapo.limits.Limits`); every malformed request is answered 4xx with a short
message and no traceback; URLs are logged with their tokens redacted.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from shmpipe.asapo.auth import FolderTokens, TokenPolicy, bearer_token, redact
from shmpipe.asapo.connections import TrackedConnections
from shmpipe.asapo.errors import BrokerError, UnauthorizedError, WrongInputError
from shmpipe.asapo.limits import (
    MAX_DELAY_MS,
    MAX_HEADER_BYTES,
    MAX_UNAUTHENTICATED_BODY_BYTES,
    Limits,
    check_int,
    json_object,
)
from shmpipe.asapo.payloads import PayloadError, check_folder_name, resolve_name
from shmpipe.asapo.store import MessageStore

log = logging.getLogger(__name__)

API_VERSION = "v0.7"
SUPPORTED_PROTOCOLS = ("v0.7",)
SOFTWARE_VERSION = "25.3.0 (shmpipe standalone)"


class _Reply(Exception):
    """Raised by a route to send a complete answer."""

    def __init__(self, status: int, body: bytes | str = b"", content_type: str = "text/plain"):
        super().__init__(status)
        self.status = status
        # backslashreplace: a message may quote a client's lone surrogate ("\\ud800" in JSON)
        self.body = body.encode("utf-8", "backslashreplace") if isinstance(body, str) else body
        self.content_type = content_type


def _json(obj: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(obj), "application/json")


def _flag(query: dict[str, str], name: str) -> bool:
    return query.get(name, "").lower() == "true"


def _int(query: dict[str, str], name: str, default: int = 0) -> int:
    return check_int(name, query.get(name) or default)


def _bool(params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise WrongInputError(f"{name} must be true or false")
    return value


class BrokerServer(TrackedConnections, ThreadingHTTPServer):
    """The HTTP listener; tracks live connections so :meth:`close_all` can end keep-alives."""

    def __init__(self, address: tuple[str, int], broker: Broker) -> None:
        self.broker = broker
        self._init_tracking(broker.limits)
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the clients reuse connections
    server: BrokerServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # called for every answer: format (and redact the ?token=... of the request line)
        # only when the line is wanted
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), self._redact(format % args))

    def _redact(self, text: str) -> str:
        return redact(text, self.server.broker.tokens.secrets)

    def handle_one_request(self) -> None:
        # A request line starts with a method name (ASCII capitals). Anything else is not
        # HTTP, and waiting for its end of line could take until the idle timeout: the
        # ASAPO client (25.3) can send its binary receiver request down an HTTP connection
        # when it reuses a closed socket's descriptor, and then waits for the answer.
        first = self.rfile.peek(1)[:1]
        if first and not (b"A" <= first <= b"Z"):
            self.close_connection = True
            self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
            self.send_error(400, "not an HTTP request")
            return
        super().handle_one_request()

    def parse_request(self) -> bool:
        # the stdlib reads up to 100 header lines of 64 KiB each: bound them all together
        rfile, self.rfile = self.rfile, _HeaderBudget(self.rfile, MAX_HEADER_BYTES)
        try:
            return super().parse_request()
        finally:
            self.rfile = rfile

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        if code == 501:  # the stdlib's answer to an unknown method: a client error, not ours
            code, message = 405, "method not allowed"
        super().send_error(code, message, explain)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        broker = self.server.broker
        url = urlsplit(self.path)
        # until the body is read, an answer must end the connection: the unread body
        # would otherwise be taken for the next request
        asked_to_close, self.close_connection = self.close_connection, True
        try:
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            parts = [unquote(p) for p in url.path.split("/")[1:]]
            # before a byte of the body is read; a body whose sender is not known yet (the
            # folder-token request carries its token inside) gets a small limit
            known = broker.authorize(parts, query, self.headers)
            limit = broker.limits.max_body_bytes if known else MAX_UNAUTHENTICATED_BODY_BYTES
            body = self._read_body(limit)
            self.close_connection = asked_to_close  # as parse_request() decided
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s", self._redact(f"{method} {self.path} body={body[:200]!r}"))
            broker.route(self, method, parts, query, body)
            raise _Reply(404, f"no route for {method} {url.path}")
        except _Done:
            return
        except _Reply as reply:
            if reply.status == 404:
                log.warning("unhandled request %s %s", method, self._redact(url.path))
            answer = (reply.status, reply.body, reply.content_type)
        except BrokerError as exc:
            answer = (exc.status, exc.body.encode("utf-8", "backslashreplace"), "application/json")
        except Exception as exc:  # a bug: logged here, and the client gets no traceback
            log.error(
                "error serving %s %s: %s: %s",
                method,
                self._redact(url.path),
                type(exc).__name__,
                self._redact(str(exc)),
            )
            answer = (500, b"internal error", "text/plain")
        broker.sync()  # what the answer reports (a pointer move, an ack) is on disk first
        self._send(*answer)

    def _read_body(self, limit: int) -> bytes:
        """The request body, after checking its announced length against ``limit``."""
        if "Transfer-Encoding" in self.headers:
            raise _Reply(411, "send the body with a Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        if not raw.strip().isdigit() or not raw.isascii():
            raise _Reply(400, "Content-Length must be a non-negative integer")
        length = int(raw)
        if length > limit:
            raise _Reply(413, f"request body over {limit} bytes")
        body = self.rfile.read(length) if length else b""
        if body is None or len(body) < length:  # the sender stalled past the idle timeout
            raise _Reply(408, "request body incomplete")
        return body

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # headers and body in one send: one syscall and one segment per answer
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def send_file(self, path: Path, size: int) -> None:
        """Answer 200 with the file's bytes, sent with ``sendfile``."""
        with open(path, "rb") as f:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            sent, fd = 0, f.fileno()
            while sent < size:  # a blocking socket: os.sendfile needs no selector
                n = os.sendfile(self.connection.fileno(), fd, sent, size - sent)
                if n == 0:
                    break  # the file shrank: the client sees a short answer
                sent += n


class _HeaderBudget:
    """A read-line view of a request's stream that fails once ``budget`` bytes are read."""

    def __init__(self, rfile: Any, budget: int) -> None:
        self._rfile, self._left = rfile, budget

    def readline(self, limit: int = -1) -> bytes:
        cap = self._left + 1 if limit < 0 else min(limit, self._left + 1)
        line = self._rfile.readline(cap)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("request headers")
        return line


class Broker:
    """Routes HTTP requests onto the store.

    Parameters
    ----------
    store
        The state.
    data_dir
        Root of payload files for the file-transfer service (a beamtime's files are in
        ``data_dir/<beamtime>``).
    tokens
        Token policy applied to every beamtime request.
    limits
        Bounds on bodies, connections, idle time and folder-token lifetime.
    advertised, receiver_address
        ``host:port`` of this HTTP service and of the receiver, as the clients should dial them.
    """

    def __init__(
        self,
        store: MessageStore,
        data_dir: Path,
        tokens: TokenPolicy,
        advertised: str = "",
        receiver_address: str = "",
        on_delete: Any = None,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.store = store
        self.data_dir = Path(data_dir)
        self.tokens = tokens
        self.advertised = advertised
        self.receiver_address = receiver_address
        # called as on_delete(key, stream, error_on_not_exist, delete_meta) so the payload
        # files of a deleted stream go too; defaults to deleting records only
        self.on_delete = on_delete
        # commits the journal before each answer; replaced by the service when persistent
        self.sync: Callable[[], None] = lambda: None
        self.folder_tokens = FolderTokens(self.limits.folder_token_s)
        self.stats: Counter[str] = Counter()  # file_transfers (diagnostic)

    def authorize(self, parts: list[str], query: dict[str, str], headers: Any) -> bool:
        """Refuse a request whose credentials are wrong, before its body is read.

        Returns whether the request was authorized by a token (False: a route that needs
        none, or whose token is in the body).

        Raises
        ------
        UnauthorizedError
            A beamtime route whose ``token`` is not valid for the beamtime, or a transfer
            without a valid folder token.
        """
        if len(parts) >= 6 and parts[0] == API_VERSION and parts[1] == "beamtime":
            if not self.tokens.allows(query.get("token", ""), parts[2]):
                raise UnauthorizedError(f"token not valid for beamtime {parts[2]}")
            return True
        if parts[-2:] == ["v0.2", "transfer"]:
            token = bearer_token(headers.get("Cookie", ""), headers.get("Authorization", ""))
            if not token or self.folder_tokens.grant(token) is None:
                raise UnauthorizedError("missing, unknown or expired folder token")
            return True
        return False

    def route(
        self, handler: _Handler, method: str, parts: list[str], query: dict[str, str], body: bytes
    ) -> None:
        """Serve one request by raising :class:`_Reply` or a :class:`BrokerError`."""
        if parts[:2] == ["asapo-discovery", "v0.1"] and len(parts) == 3:
            self._discovery(parts[2], query)
        if parts[:2] == ["asapo-authorizer", "v0.2"] and parts[2:] == ["folder"]:
            self._folder_token(body)
        if parts[-2:] == ["v0.2", "transfer"]:
            self._transfer(handler, query, body)
        if not parts or parts[0] != API_VERSION:
            return
        if parts[1:] == ["creategroup"] and method == "POST":
            raise _Reply(200, self.store.create_group())
        if len(parts) >= 6 and parts[1] == "beamtime":
            beamtime, source, stream = parts[2:5]
            if not self.tokens.allows(query.get("token", ""), beamtime):
                raise UnauthorizedError(f"token not valid for beamtime {beamtime}")
            self._beamtime(handler, method, (beamtime, source), stream, parts[5:], query, body)

    # ------------------------------------------------------------ discovery & files
    def _discovery(self, service: str, query: dict[str, str]) -> None:
        protocol = query.get("protocol", API_VERSION)
        if service == "version":
            supported = protocol in SUPPORTED_PROTOCOLS
            raise _json(
                {
                    "softwareVersion": SOFTWARE_VERSION,
                    "clientProtocol": {"versionInfo": protocol, "supported": supported},
                    "clientSupported": "yes" if supported else "no",
                    "supportedProtocols": list(SUPPORTED_PROTOCOLS),
                }
            )
        if protocol not in SUPPORTED_PROTOCOLS:
            raise _Reply(415, f"protocol {protocol} not supported")
        if service in ("asapo-broker", "asapo-file-transfer"):
            raise _Reply(200, self.advertised)
        if service == "asapo-receiver":
            raise _json({"MaxConnections": 32, "Uris": [self.receiver_address]})

    def _folder_token(self, body: bytes) -> None:
        request = json_object(body, "folder request")
        beamtime, folder = request.get("BeamtimeId", ""), request.get("Folder", "")
        token = request.get("Token", "")
        if not all(isinstance(v, str) for v in (beamtime, folder, token)):
            raise WrongInputError("BeamtimeId, Folder and Token must be strings")
        if not self.tokens.allows(token, beamtime):
            raise UnauthorizedError(f"token not valid for beamtime {beamtime}")
        try:
            own = self.data_dir / check_folder_name("beamtime", beamtime)
        except PayloadError as exc:
            raise WrongInputError(str(exc)) from exc
        # as ASAPO's authorizer: the folder asked for must be the beamtime's own ("" and
        # "auto" stand for it; the 25.3 consumer sends its source_path)
        if folder not in ("", "auto") and os.path.realpath(folder) != os.path.realpath(own):
            raise UnauthorizedError(f"folder {folder} is not the folder of beamtime {beamtime}")
        raise _Reply(200, self.folder_tokens.issue(beamtime, folder))

    def _transfer(self, handler: _Handler, query: dict[str, str], body: bytes) -> None:
        headers = handler.headers
        token = bearer_token(headers.get("Cookie", ""), headers.get("Authorization", ""))
        grant = self.folder_tokens.grant(token)
        if grant is None:  # checked in authorize(); it may have expired since
            raise UnauthorizedError("missing, unknown or expired folder token")
        request = json_object(body, "transfer request")
        name, folder = request.get("FileName", ""), request.get("Folder", "")
        if not isinstance(name, str) or not isinstance(folder, str):
            raise WrongInputError("FileName and Folder must be strings")
        if folder != grant.folder:
            raise UnauthorizedError("the folder token was issued for another folder")
        try:
            # the token's beamtime decides the folder: a name cannot reach another beamtime
            root = self.data_dir / check_folder_name("beamtime", grant.beamtime)
            path = resolve_name(root, name)
        except PayloadError as exc:
            raise WrongInputError(str(exc)) from exc
        if path.is_symlink() or not path.is_file():
            raise _Reply(404, f"no file {name}")
        size = path.stat().st_size
        if _flag(query, "sizeonly"):
            raise _json({"file_size": size})
        self.stats["file_transfers"] += 1
        handler.send_file(path, size)
        raise _Done

    # ------------------------------------------------------------ the broker proper
    def _beamtime(
        self,
        handler: _Handler,
        method: str,
        key: tuple[str, str],
        stream: str,
        rest: list[str],
        query: dict[str, str],
        body: bytes,
    ) -> None:
        store = self.store
        # the dataset count asks for size with incomplete=true|false and no dataset flag
        dataset = _flag(query, "dataset") or (rest == ["size"] and "incomplete" in query)
        minsize = _int(query, "minsize")
        if rest == ["streams"]:
            self._streams(key, query)
        if rest == ["sources"]:
            raise _json({"sources": store.sources(key[0])})
        if rest == ["size"]:
            raise _json({"size": store.size(key, stream, dataset, _flag(query, "incomplete"))})
        if rest == ["delete"] and method == "POST":
            params = json_object(body, "delete request", empty_ok=True)
            err_on_missing = _bool(params, "ErrorOnNotExist", True)
            delete_meta = _bool(params, "DeleteMeta", True)
            if self.on_delete is not None:
                self.on_delete(key, stream, err_on_missing, delete_meta)
            else:
                store.delete_stream(key, stream, err_on_missing, delete_meta)
            raise _Reply(200, "")
        if rest == ["persist"] and method == "POST":
            # ASAPO may expire non-persistent streams; this service never expires any
            raise _Reply(200, "")
        if len(rest) == 3 and rest[:2] == ["0", "meta"]:
            meta = store.get_meta(key, None if rest[2] == "0" else stream)
            # "null": the consumer's get_*_meta then returns None (an empty body makes it fail)
            raise _json(meta)
        if len(rest) != 2:
            return
        group, op = rest
        if method == "GET" and op == "next":
            resend = None
            if _flag(query, "resend_nacks"):
                resend = (_int(query, "delay_ms"), _int(query, "resend_attempts"))
            record = store.next(
                key, stream, group, query.get("id_key", "_id"), dataset, minsize, resend
            )
            raise _json(record)
        if method == "GET" and op == "last":
            raise _json(store.last(key, stream, dataset, minsize))
        if method == "GET" and op == "groupedlast":
            raise _json(store.last(key, stream, dataset, minsize, group=group))
        if method == "GET" and op == "nacks":
            ids = store.unacknowledged(key, stream, group, _int(query, "from"), _int(query, "to"))
            raise _json({"unacknowledged": ids})
        if method == "GET" and op == "lastack":
            raise _json({"lastAckId": store.last_ack(key, stream, group)})
        if method == "POST" and op == "resetcounter":
            store.set_pointer(key, stream, group, _int(query, "value"))
            raise _Reply(200, "")
        if op == "querymessages":
            raise WrongInputError("query_messages is not supported by the standalone service")
        if op.isascii() and op.isdigit():
            if method == "GET":
                raise _json(store.by_id(key, stream, int(op), dataset, minsize))
            if method == "POST":
                self._ack(key, stream, group, int(op), body)

    def _ack(self, key: tuple[str, str], stream: str, group: str, id_: int, body: bytes) -> None:
        request = json_object(body, "ack body")
        op = request.get("Op")
        if op == "ackmessage":
            self.store.ack(key, stream, group, id_)
        elif op == "negackmessage":
            params = request.get("Params")
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise WrongInputError("Params must be a JSON object")
            delay = check_int("DelayMs", params.get("DelayMs", 0), 0, MAX_DELAY_MS)
            self.store.neg_ack(key, stream, group, id_, delay)
        else:
            raise WrongInputError(f"unknown op {str(op)[:64]}")
        raise _Reply(200, "")

    def _streams(self, key: tuple[str, str], query: dict[str, str]) -> None:
        infos = self.store.streams(key)
        start = query.get("from", "")
        if _flag(query, "last"):
            infos = infos[-1:]
        elif _flag(query, "single"):
            infos = [s for s in infos if s["name"] == start]
        else:
            if start:
                names = [s["name"] for s in infos]
                infos = infos[names.index(start) :] if start in names else []
            wanted = query.get("filter", "all")
            if wanted == "finished":
                infos = [s for s in infos if s["finished"]]
            elif wanted == "unfinished":
                infos = [s for s in infos if not s["finished"]]
            elif wanted != "all":
                raise WrongInputError(f"unknown stream filter {wanted}")
        raise _json({"streams": infos})


class _Done(_Reply):
    """The answer was already written (a streamed file)."""

    def __init__(self) -> None:
        super().__init__(0)
