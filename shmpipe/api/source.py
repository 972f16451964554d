"""The source protocol: where messages come from, and how they are acknowledged.

A source is created in the supervisor (so configuration errors surface before any process
starts), opened in the dispatcher process, and asked for an ``Acknowledger`` in the publisher
process, which confirms each message only after every sink has committed its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.message import Message, StreamFinished


class EndOfSource(Exception):
    """The source has nothing more and will have nothing more (a finite run is complete)."""


class SourceConfigError(ValueError):
    """The source's settings are wrong in a way found only by contacting it (bad token, ...)."""


@dataclass
class SourceLayout:
    """What the dispatcher and the kernels may know before the first message.

    Attributes
    ----------
    parts : list of ArraySpec or None
        Shape and dtype of each part, when fixed (a raw LAMBDA frame: twelve modules).
    max_payload_bytes : int
        The largest payload expected; sizes the input ring when ``ring.slot_bytes`` is 0.
    detector : native_kernels.geometry.DetectorGeometry or None
        The layout of the detector the parts come from, when the source knows it (the
        simulated detector): the run's detector when the configuration declares none.
    """

    parts: list[ArraySpec] | None
    max_payload_bytes: int
    detector: Any = None


class Acknowledger:
    """Confirms messages to their origin once their results are committed."""

    def ack(self, stream: str, message_id: int) -> None:  # noqa: B027 - no-op default
        """The message's results are committed; the source may forget it."""

    def nack(self, stream: str, message_id: int, delay_ms: int = 0) -> None:  # noqa: B027
        """The message failed in a way worth retrying later; ask for a redelivery."""

    def retry_elsewhere(self, stream: str, message_id: int) -> bool:
        """A frame was quarantined (it killed workers ``run.max_attempts`` times): hand it
        back for another try later (return True), or let it become an error record (False).
        Sources that cannot redeliver return False."""
        return False

    def close(self) -> None:  # noqa: B027
        pass


class Source:
    """Base class of every source.

    Parameters
    ----------
    params : Params
        The validated ``[source]`` table.
    run_name : str
        The run's name (sources use it for consumer-group defaults and logs).
    """

    Params: ClassVar[type]
    bounded_wait: ClassVar[bool] = False
    """True when ``next(timeout)`` returns within about ``timeout`` even when nothing comes,
    so the engine may call it with very short timeouts. Leave it False for a source whose
    client waits longer (ASAPO's consumer waits its own ``timeout_ms``, and cutting that short
    would declare datasets still arriving incomplete); the engine then never relies on it."""

    def __init__(self, params: Any, run_name: str = "") -> None:
        self.params = params
        self.run_name = run_name

    def layout(self) -> SourceLayout:
        """Declare the parts' layout before any process starts."""
        raise NotImplementedError

    def check(self) -> None:  # noqa: B027
        """Validate settings against the world (files exist, the service answers)."""

    def open(self) -> None:  # noqa: B027
        """Connect; runs in the dispatcher process."""

    def next(self, timeout: float) -> Message | StreamFinished | None:
        """The next message, a stream-finished marker, or None when nothing came in time.

        Raises
        ------
        EndOfSource
            When the source is exhausted.
        """
        raise NotImplementedError

    def resume(self, delivered: int) -> None:
        """Continue after the first ``delivered`` items; runs after ``open`` in a dispatcher
        that replaces one that died.

        ``delivered`` counts every item ``next`` returned to the dead dispatcher whose slot was
        filled (messages and stream-finished markers alike); the rest, up to the one it was
        reading, must come again. A positional source (files, the simulator) skips to that
        position. A source whose service hands back what was not acknowledged (ASAPO's
        resend) does nothing. The default refuses, and the run stops with this message.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot resume after {delivered} items: "
            "the dispatcher cannot be replaced"
        )

    def close(self) -> None:  # noqa: B027
        pass

    def acknowledger(self) -> Acknowledger:
        """Create the acknowledger; runs in the publisher process."""
        return Acknowledger()
