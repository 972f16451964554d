"""AsapoService: the whole ASAPO-compatible service — broker (HTTP) plus receiver (TCP).

Start it, give its :attr:`AsapoService.server_name` to the real ``asapo_consumer`` /
``asapo_producer`` clients, stop it. :func:`serve` runs one until SIGINT/SIGTERM, for
``shmpipe asapo-standalone`` and ``python -m shmpipe.asapo``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from shmpipe.asapo.auth import RedactingFilter, TokenPolicy
from shmpipe.asapo.broker import Broker, BrokerServer
from shmpipe.asapo.handle import ServiceHandle
from shmpipe.asapo.journal import SqliteJournal
from shmpipe.asapo.limits import Limits
from shmpipe.asapo.payloads import STATE_DIR, PayloadStore, remove_partial_files
from shmpipe.asapo.receiver import Receiver, ReceiverServer
from shmpipe.asapo.store import MessageStore

log = logging.getLogger(__name__)


class AsapoService(ServiceHandle):
    """An ASAPO-compatible service on two ports: HTTP (discovery/broker/files) and receiver.

    Parameters
    ----------
    host
        Address to listen on; loopback by default.
    port, receiver_port
        HTTP and receiver ports; 0 picks free ones. After the first :meth:`start` the bound
        ports are kept, so :meth:`restart` (or ``stop`` then ``start``) comes back on the same
        ports, as a restarted ASAPO would.
    data_dir
        Folder for payload files (``data_dir/<beamtime>/<name>``) and, when given, the
        persistent state (records, payloads,
        streams, group pointers, acks survive a restart). ``None``: state in memory and
        payload files in a temporary folder removed by :meth:`stop`.
    tokens
        ``None`` accepts every token; see :class:`~shmpipe.asapo.auth.TokenPolicy`.
    cache_bytes
        Size of the receiver's cache window; older file-system payloads answer "not in cache"
        and the clients read the file (``has_filesystem``) or use the file transfer.
    advertise_host
        Host name written into discovery answers and records, when ``host`` is a wildcard.
    limits
        Sizes, connection limits, idle timeout, file mode (see
        :class:`~shmpipe.asapo.limits.Limits`; the defaults fit detector frames).

    Examples
    --------
    >>> with AsapoService() as service:          # doctest: +SKIP
    ...     consumer = asapo_consumer.create_consumer(service.server_name, ...)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        receiver_port: int = 0,
        data_dir: str | Path | None = None,
        tokens: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
        cache_bytes: int = 1 << 30,
        advertise_host: str | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.host = host
        self.port = port
        self.receiver_port = receiver_port
        self.persistent = data_dir is not None
        # absolute: the folder-token check compares it with the folders clients name
        self._given_data_dir = Path(os.path.abspath(data_dir)) if data_dir is not None else None
        self.tokens = TokenPolicy(tokens)
        self.cache_bytes = cache_bytes
        if advertise_host is None:
            advertise_host = socket.getfqdn() if host in ("", "0.0.0.0", "::") else host
        self.advertise_host = advertise_host
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._journal: SqliteJournal | None = None
        self._servers: list[BrokerServer | ReceiverServer] = []
        self._threads: list[threading.Thread] = []
        self.store: MessageStore | None = None
        self._receiver: Receiver | None = None
        self._broker: Broker | None = None
        self.data_dir: Path | None = self._given_data_dir

    # ------------------------------------------------ state (the endpoints: ServiceHandle)
    @property
    def stats(self) -> dict[str, int]:
        """Diagnostic counters since the last start: ``cache_hits``, ``cache_misses`` (op 6
        reads) and ``file_transfers`` (HTTP file-transfer downloads)."""
        out: dict[str, int] = {"cache_hits": 0, "cache_misses": 0, "file_transfers": 0}
        for part in (self._receiver, self._broker):
            if part is not None:
                out.update(part.stats)
        return out

    @property
    def running(self) -> bool:
        """Whether the service is listening."""
        return bool(self._servers)

    # ------------------------------------------------------------ life cycle
    def start(self) -> AsapoService:
        """Load state (if persistent), bind both ports and serve in background threads."""
        if self.running:
            raise RuntimeError("service already running")
        if self._given_data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="shmpipe-asapo-")
            self.data_dir = Path(self._tmp.name)
        else:
            self.data_dir = self._given_data_dir
            self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except BaseException:
            self.stop()
            raise
        return self

    def _build(self) -> None:
        assert self.data_dir is not None
        if self.persistent:
            self._journal = SqliteJournal(self.data_dir / STATE_DIR)
        for leftover in remove_partial_files(self.data_dir):
            log.warning("removed %s, a payload left half written by a killed service", leftover)
        self.store = MessageStore(self._journal)
        payloads = PayloadStore(
            self.data_dir, self.cache_bytes, self._journal, file_mode=self.limits.file_mode
        )
        if self._journal is not None:
            self._journal.load_into(self.store, payloads)
        receiver = Receiver(self.store, payloads, self.tokens, limits=self.limits)
        receiver_server = ReceiverServer((self.host, self.receiver_port), receiver)
        self._servers.append(receiver_server)
        self.receiver_port = receiver_server.server_address[1]
        receiver.advertised = self.receiver_address
        broker = Broker(
            self.store,
            self.data_dir,
            self.tokens,
            receiver_address=self.receiver_address,
            on_delete=receiver.store_delete,
            limits=self.limits,
        )
        broker_server = BrokerServer((self.host, self.port), broker)
        self._servers.append(broker_server)
        self.port = broker_server.server_address[1]
        broker.advertised = self.server_name
        if self._journal is not None:
            receiver.sync = broker.sync = self._journal.commit
        self._receiver, self._broker = receiver, broker
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"asapo-{type(server).__name__}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        log.info(
            "ASAPO service on %s (receiver %s), data in %s",
            self.server_name,
            self.receiver_address,
            self.data_dir,
        )

    def stop(self) -> None:
        """Stop serving: close listeners and live connections, join threads, close state.

        Idempotent. A memory-only service forgets everything and removes its temporary folder.
        """
        servers, self._servers = self._servers, []
        for server, thread in zip(servers, self._threads, strict=False):
            server.shutdown()
            thread.join()
        for server in servers:
            server.close_all()
            server.server_close()  # also joins the connection threads
        self._threads = []
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    port: int,
    data_dir: str | None,
    host: str = "127.0.0.1",
    *,
    tokens: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    receiver_port: int | None = None,
    limits: Limits | None = None,
) -> None:
    """Run the service until SIGINT or SIGTERM (the ``asapo-standalone`` command).

    Tokens are redacted from every log line while it runs.

    Parameters
    ----------
    port
        HTTP port the clients are given as ``server_name``; the receiver takes ``port + 1``
        when free, else any free port (producers find it through discovery).
    data_dir
        Persistent data folder, or ``None`` for memory-only state.
    host
        Listen address (loopback by default).
    tokens
        Accept only these tokens (default: any); see :class:`~shmpipe.asapo.auth.TokenPolicy`.
    receiver_port
        Receiver port; by default ``port + 1`` when free, else any free port.
    limits
        See :class:`~shmpipe.asapo.limits.Limits`.
    """
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    if receiver_port is None:
        receiver_port = _free_or_zero(host, port + 1) if port else 0
    service = AsapoService(
        host, port, receiver_port=receiver_port, data_dir=data_dir, tokens=tokens, limits=limits
    )
    redacting = RedactingFilter(service.tokens.secrets)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(redacting)
    try:
        service.start()
        print(
            f"ASAPO standalone service: server_name={service.server_name} "
            f"receiver={service.receiver_address} data_dir={service.data_dir}",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        service.stop()
        for sig, previous_handler in previous.items():
            signal.signal(sig, previous_handler)
        for handler in handlers:
            handler.removeFilter(redacting)


def _free_or_zero(host: str, port: int) -> int:
    if port <= 1 or port > 65535:
        return 0
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return 0
    return port
