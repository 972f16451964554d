"""The engine: the supervisor and the processes it runs around the shared memory."""

from typing import Any

_PUBLIC = {"Pipeline", "RunSummary", "StartupError"}


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one engine module does not import the supervisor and all it forks.
    if name in _PUBLIC:
        from shmpipe.engine import supervisor

        return getattr(supervisor, name)
    raise AttributeError(f"module 'shmpipe.engine' has no attribute {name!r}")
