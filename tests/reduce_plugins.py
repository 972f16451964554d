"""A source for the reducer tests: the simulated detector whose acknowledgement of one
message SIGKILLs the publisher, once: the instant after the sinks committed and the reducers'
checkpoint was written, before the source heard of it (the frames of that commit are then
published again by the replacement, and must not be added twice)."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from shmpipe.api.source import Acknowledger
from shmpipe.plugins.sources.sim import SimParams, SimSource


@dataclass
class KillOnAckParams(SimParams):
    kill_at: int = 0
    """Message id whose acknowledgement kills the publisher (0: never)."""
    marker: str = ""
    """A file made at the kill: the replacement publisher acknowledges normally."""


class _Killer(Acknowledger):
    def __init__(self, params: KillOnAckParams) -> None:
        self.params = params

    def ack(self, stream: str, message_id: int) -> None:
        p = self.params
        if message_id == p.kill_at and not os.path.exists(p.marker):
            Path(p.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)


class KillOnAck(SimSource):
    Params = KillOnAckParams

    def acknowledger(self) -> Acknowledger:
        return _Killer(self.params)
