"""Test helpers: run the ASAPO-compatible service on free loopback ports for the real clients.

In a test::

    from shmpipe.asapo.testing import running_asapo

    def test_roundtrip(tmp_path):
        with running_asapo(tmp_path / "asapo") as asapo:
            producer = asapo.producer("src")            # a real asapo_producer.PyProducer
            consumer = asapo.consumer("src")            # a real asapo_consumer.PyConsumer
            ...
            asapo.restart()                             # same ports, same data folder

or as a fixture (``conftest.py`` or a test module)::

    from shmpipe.asapo.testing import asapo_fixture
    asapo = asapo_fixture()                   # function scope, persistent, under tmp_path
    asapo_module = asapo_fixture(scope="module")

The service runs in threads of the test process; leaving the ``with`` block (or the fixture)
cleans up the producers made by :meth:`AsapoEndpoint.producer`, stops the service, joins its
threads, closes its sockets and, for a memory-only service, removes its temporary folder.

With ``running_asapo(..., in_process=False)`` the service runs as a child process
(``python -m shmpipe.asapo``) instead, and ``asapo.kill()`` crashes it (SIGKILL) for
fault-injection tests; ``asapo.start()`` brings it back on the same ports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shmpipe.asapo.limits import Limits
from shmpipe.asapo.process import AsapoProcess
from shmpipe.asapo.service import AsapoService

DEFAULT_BEAMTIME = "test_bt"
DEFAULT_TOKEN = "test_token"


@dataclass
class AsapoEndpoint:
    """A running service and what clients need to reach it.

    Attributes
    ----------
    service
        The :class:`~shmpipe.asapo.service.AsapoService` itself (in-process), or the
        :class:`~shmpipe.asapo.process.AsapoProcess` running it in a child process.
    beamtime, token
        Defaults used by :meth:`producer` and :meth:`consumer`.
    """

    service: AsapoService | AsapoProcess
    beamtime: str = DEFAULT_BEAMTIME
    token: str = DEFAULT_TOKEN
    producers: list[Any] = field(default_factory=list)  # made by producer(), cleaned up at exit

    @property
    def server_name(self) -> str:
        """``host:port`` to pass as the clients' ``endpoint`` / ``server_name``."""
        return self.service.server_name

    @property
    def data_dir(self) -> Path:
        """The data folder; each beamtime's files are in a folder of it (:meth:`beamtime_dir`)."""
        assert self.service.data_dir is not None
        return self.service.data_dir

    def beamtime_dir(self, beamtime: str | None = None) -> Path:
        """The beamtime's folder: ``source_path`` for ``has_filesystem=True`` consumers."""
        return self.data_dir / (beamtime or self.beamtime)

    @property
    def receiver_address(self) -> str:
        """``host:port`` of the receiver (what producers find through discovery)."""
        return self.service.receiver_address

    def stop(self) -> None:
        """Stop the service (the ports stay reserved for :meth:`start`)."""
        self.service.stop()

    def start(self) -> None:
        """Start the stopped service again on the same ports and data folder."""
        self.service.start()

    def restart(self) -> None:
        """Stop and start again: a persistent service keeps every record, ack and pointer."""
        self.service.restart()

    def kill(self) -> None:
        """Crash the service (SIGKILL); :meth:`start` brings it back. Child process only."""
        if not isinstance(self.service, AsapoProcess):
            raise TypeError("kill() needs running_asapo(..., in_process=False)")
        self.service.kill()

    def producer(
        self,
        data_source: str,
        *,
        beamtime: str | None = None,
        token: str | None = None,
        nthreads: int = 1,
        timeout_ms: int = 5000,
        producer_type: str = "processed",
    ) -> Any:
        """A real ``asapo_producer`` producer connected to this service."""
        import asapo_producer

        producer = asapo_producer.create_producer(
            self.server_name,
            producer_type,
            beamtime or self.beamtime,
            "auto",
            data_source,
            token if token is not None else self.token,
            nthreads,
            timeout_ms,
        )
        # Its JSON log lines would fill the test output; tests check the send callbacks.
        producer.set_log_level("none")
        self.producers.append(producer)
        return producer

    def close_producers(self) -> None:
        """Stop the threads of every producer made by :meth:`producer` (idempotent)."""
        for producer in self.producers:
            producer.cleanup()
        self.producers.clear()

    def consumer(
        self,
        data_source: str,
        *,
        beamtime: str | None = None,
        token: str | None = None,
        timeout_ms: int = 500,
        has_filesystem: bool = False,
        source_path: str | Path | None = None,
    ) -> Any:
        """A real ``asapo_consumer`` consumer of this service.

        With ``has_filesystem=True`` the source path defaults to the beamtime's folder.
        """
        import asapo_consumer

        if source_path is None:
            source_path = self.beamtime_dir(beamtime) if has_filesystem else ""
        return asapo_consumer.create_consumer(
            self.server_name,
            str(source_path),
            has_filesystem,
            beamtime or self.beamtime,
            data_source,
            token if token is not None else self.token,
            timeout_ms,
        )


@contextmanager
def running_asapo(
    data_dir: str | Path | None = None,
    *,
    tokens: Iterable[str] | Mapping[str, Iterable[str]] | None = None,
    cache_bytes: int = 1 << 30,
    beamtime: str = DEFAULT_BEAMTIME,
    token: str = DEFAULT_TOKEN,
    in_process: bool = True,
    limits: Limits | None = None,
) -> Iterator[AsapoEndpoint]:
    """Run the service on free loopback ports for the duration of a block.

    Parameters
    ----------
    data_dir
        Persistent data folder (records, acks and pointers survive :meth:`restart`), or
        ``None`` for memory-only state with payload files in a temporary folder.
    tokens
        Restrict accepted tokens (see :class:`~shmpipe.asapo.auth.TokenPolicy`); by default
        any token is accepted.
    cache_bytes
        Receiver cache window; 0 forces consumers onto the file system / file transfer.
    beamtime, token
        Defaults for the endpoint's :meth:`~AsapoEndpoint.producer` / ``consumer`` helpers.
    in_process
        Serve from threads of this process (default; gives access to ``service.store`` and
        ``service.stats``), or from a child process (``python -m shmpipe.asapo``), which can
        also be killed (:meth:`AsapoEndpoint.kill`). ``cache_bytes`` applies in-process only.
    limits
        Sizes, connections, timeouts (:class:`~shmpipe.asapo.limits.Limits`); in-process only.

    Yields
    ------
    AsapoEndpoint
    """
    service: AsapoService | AsapoProcess
    if in_process:
        service = AsapoService(
            "127.0.0.1",
            0,
            data_dir=data_dir,
            tokens=tokens,
            cache_bytes=cache_bytes,
            limits=limits,
        )
    else:
        service = AsapoProcess(data_dir, tokens=tokens)
    endpoint = AsapoEndpoint(service, beamtime, token)
    try:
        service.start()
        yield endpoint
    finally:
        # the producers first: their threads would otherwise keep polling a dead service
        endpoint.close_producers()
        if isinstance(service, AsapoProcess):
            service.close()
        else:
            service.stop()


def asapo_fixture(
    scope: str = "function", *, persistent: bool = True, **kwargs: Any
) -> Callable[..., Any]:
    """Make a pytest fixture yielding an :class:`AsapoEndpoint`.

    Parameters
    ----------
    scope
        pytest fixture scope.
    persistent
        Give the service a data folder under pytest's temporary directory.
    **kwargs
        Passed to :func:`running_asapo`.
    """
    import pytest

    @pytest.fixture(scope=scope)
    def _asapo(tmp_path_factory: Any) -> Iterator[AsapoEndpoint]:
        data_dir = tmp_path_factory.mktemp("asapo") if persistent else None
        with running_asapo(data_dir, **kwargs) as endpoint:
            yield endpoint

    return _asapo


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; return it.

    Raises
    ------
    TimeoutError
        When ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)
