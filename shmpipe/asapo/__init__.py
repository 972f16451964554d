"""An ASAPO-compatible standalone service for the unmodified ``asapo_consumer`` and
``asapo_producer`` 25.3 clients (the way moto serves boto3).

Modules: :mod:`~shmpipe.asapo.store` (streams, records, groups, acks),
:mod:`~shmpipe.asapo.journal` (their persistence), :mod:`~shmpipe.asapo.payloads` (payload
files and the cache window), :mod:`~shmpipe.asapo.broker` (HTTP: discovery, broker,
authorizer, file transfer), :mod:`~shmpipe.asapo.receiver` (the producer TCP protocol and
cache reads), :mod:`~shmpipe.asapo.service` (both together), :mod:`~shmpipe.asapo.auth`
(tokens, folder tokens, log redaction), :mod:`~shmpipe.asapo.limits` (what a request may
claim), :mod:`~shmpipe.asapo.command` (the command line), :mod:`~shmpipe.asapo.testing`
(pytest helpers). What each port exposes and what is protected: ``docs/security.md``.
"""

from shmpipe.asapo.service import AsapoService, serve

__all__ = ["AsapoService", "serve"]
