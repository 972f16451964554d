"""ServiceHandle: what the in-process service and the child-process one share."""

from __future__ import annotations

from typing import Self


class ServiceHandle:
    """The two endpoints of an ASAPO service and the life cycle around ``start``/``stop``.

    :class:`~shmpipe.asapo.service.AsapoService` (threads of this process) and
    :class:`~shmpipe.asapo.process.AsapoProcess` (a child process) set ``advertise_host``,
    ``port`` and ``receiver_port`` and define ``start`` (returning the handle), ``stop``,
    ``running`` and ``__exit__``, so a test can use either.
    """

    advertise_host: str
    port: int
    receiver_port: int
    running: bool  # a property of each subclass

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def server_name(self) -> str:
        """``host:port`` the clients are given (discovery, broker, file transfer)."""
        return f"{self.advertise_host}:{self.port}"

    @property
    def receiver_address(self) -> str:
        """``host:port`` of the receiver (producers and cache reads)."""
        return f"{self.advertise_host}:{self.receiver_port}"

    def restart(self) -> None:
        """Stop cleanly and start again on the same ports and data folder."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start() if not self.running else self
