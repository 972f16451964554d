"""AsapoSource: messages from an ASAPO broker through the real ``asapo_consumer`` client.

One frame of a multi-module detector is a dataset (one part per module); the dispatcher copies
each part once into its slot, or, with ``has_filesystem``, reads the part's file straight into
the slot. Acknowledgement happens in the publisher, after the sinks commit, through a second
consumer of the same group; resend of unacknowledged messages is switched on, so whatever a
crashed run held comes back to the next one (at-least-once; the sinks drop duplicates).

Stream following: a finished flag names the next stream; without one, a naming scheme finds it
in the stream list (``stream_naming``). Temporary errors (service unavailable,
interrupted transaction) are retried with a growing delay while the pipeline stays up; wrong
input (bad token, unknown beamtime) is a configuration error.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.api.message import Message, StreamFinished, payload_bytes
from shmpipe.api.params import ParamError
from shmpipe.api.source import Acknowledger, EndOfSource, Source, SourceConfigError, SourceLayout
from shmpipe.plugins.asapo_connection import AsapoConnectionParams
from shmpipe.plugins.sources.stream_naming import next_stream

log = logging.getLogger("shmpipe.dispatcher.asapo")


@dataclass
class AsapoSourceParams(AsapoConnectionParams):
    data_source: str = "detector"
    """Data source (the detector's) within the beamtime."""
    stream: str = "default"
    """Stream to start with."""
    group_id: str = ""
    """Consumer group; empty: a new group is generated (set one to resume after a restart and
    to share the stream with other nodes)."""
    reprocess: bool = False
    """Read the streams again from their first message, in a fresh consumer group (what
    ``shmpipe run --reprocess`` sets); group_id's own progress is left as it was."""
    timeout_ms: int = 1000
    """How long one request to the broker may wait for data."""
    has_filesystem: bool = False
    """Read payloads from the shared file system at source_path instead of over the network."""
    source_path: str = ""
    """The beamtime's folder when has_filesystem is true."""
    dataset: bool = True
    """Messages are datasets of parts (one per detector module)."""
    parts: int = 12
    """Parts per message (modules of a LAMBDA 9M); 1 for plain messages."""
    part_shape: list[int] = field(default_factory=list)
    """Shape of each raw part, e.g. [516, 1556]; empty: parts are opaque bytes (compressed)."""
    part_dtype: str = "uint16"
    """dtype of each raw part when part_shape is set."""
    max_payload_bytes: int = 0
    """Largest message (all parts) when part_shape is empty; sizes the ring."""
    partial: Literal["error", "process"] = "error"
    """An incomplete dataset becomes an error record, or is processed with missing parts zeroed
    (their indices in meta["missing_parts"])."""
    follow: Literal["finished", "numeric", "date", "basename", "none"] = "finished"
    """After a stream: the next one its finished flag names, or the next by a naming scheme."""
    until: Literal["forever", "finished"] = "forever"
    """finished: exit once a stream is finished and drained with no stream to follow."""
    idle_timeout_s: float = 0.0
    """Exit after this long without a message; 0: wait for ever."""
    resend_delay_ms: int = 10000
    """Unacknowledged messages come back after this long (those of a crashed run, too)."""
    resend_attempts: int = 0
    """Redeliveries of one unacknowledged message; 0: unlimited (the default: a message held
    unacknowledged longer than a bounded number of delays, in a deep backlog, would never come
    back after a crash)."""
    nack_delay_ms: int = 1000
    """Delay of the redelivery asked for by a negative acknowledgement."""
    retry_quarantined: int = 1
    """Times a frame quarantined here (it killed workers run.max_attempts times) is handed
    back to the broker with a negative acknowledgement, to be tried again later or on another
    node, before it is recorded as an error; 0: record it at once."""
    metadata_source: str = ""
    """A companion data source whose stream metadata (and last message's meta) become the
    per-scan kernel parameters; empty: the stream's own metadata."""
    retry_max_s: float = 30.0
    """Longest delay between retries of a temporarily unavailable service."""
    poll_streams_s: float = 1.0
    """How often to look for a next stream when following by naming scheme."""

    def validate(self) -> None:
        for key in ("parts", "timeout_ms"):
            if getattr(self, key) < 1:
                raise ParamError(key, f"must be 1 or more, got {getattr(self, key)}")
        if self.has_filesystem and not self.source_path:
            raise ParamError("source_path", "has_filesystem = true needs the beamtime's folder")


def _client():
    import asapo_consumer

    return asapo_consumer


class _FilePart:
    """A part read from the beamtime folder straight into the slot."""

    __slots__ = ("path", "nbytes", "dtype", "shape")

    def __init__(self, path: str, nbytes: int, dtype: str, shape: tuple[int, ...]) -> None:
        self.path, self.nbytes, self.dtype, self.shape = path, nbytes, dtype, shape

    def read_into(self, dest: np.ndarray) -> None:
        with open(self.path, "rb", buffering=0) as f:
            got = f.readinto(memoryview(dest))
        if got != self.nbytes:
            raise OSError(f"{self.path}: read {got} of {self.nbytes} bytes")


class AsapoSource(Source):
    """``[source] kind = "asapo"``."""

    Params = AsapoSourceParams

    def __init__(self, params: AsapoSourceParams, run_name: str = "") -> None:
        super().__init__(params, run_name)
        self._consumer = None
        self._meta_consumer = None

    # -- set-up (supervisor) -----------------------------------------------------------
    def _consumer_for(self, data_source: str):
        p = self.params
        return _client().create_consumer(
            p.endpoint,
            p.source_path,
            p.has_filesystem,
            p.beamtime,
            data_source,
            p.token,
            p.timeout_ms,
        )

    def _part_specs(self) -> list[ArraySpec] | None:
        p = self.params
        if not p.part_shape:
            return None
        return [
            ArraySpec(f"module_{i:02d}", tuple(p.part_shape), p.part_dtype) for i in range(p.parts)
        ]

    def layout(self) -> SourceLayout:
        specs = self._part_specs()
        if specs is not None:
            return SourceLayout(specs, payload_bytes(specs))
        if self.params.max_payload_bytes <= 0:
            raise SourceConfigError(
                "source.max_payload_bytes: set it (or source.part_shape) so the ring can be sized"
            )
        return SourceLayout(None, self.params.max_payload_bytes + 64 * self.params.parts)

    def check(self) -> None:
        """Reach the broker once: wrong input is a configuration error, found before start."""
        asapo = _client()
        try:
            consumer = self._consumer_for(self.params.data_source)
            consumer.get_stream_list(from_stream="", filter="all", detailed=False)
            if self.params.reprocess:
                old_group = self.params.group_id
                self.params.group_id = consumer.generate_group_id()
                log.info(
                    "reprocessing: the fresh consumer group %s reads from the first message of "
                    "stream %s%s",
                    self.params.group_id,
                    self.params.stream,
                    f" (group {old_group!r} is left as it was)" if old_group else "",
                )
            elif not self.params.group_id:
                self.params.group_id = consumer.generate_group_id()
                log.warning(
                    "no source.group_id: using the new group %s (set it to resume after a restart)",
                    self.params.group_id,
                )
        except asapo.AsapoWrongInputError as exc:
            raise SourceConfigError(
                f"ASAPO at {self.params.endpoint} refused beamtime {self.params.beamtime!r} / "
                f"data source {self.params.data_source!r}: {exc} (check source.token, "
                "source.beamtime)"
            ) from exc
        except asapo.AsapoUnavailableServiceError as exc:
            if not self.params.group_id:
                raise SourceConfigError(
                    f"ASAPO at {self.params.endpoint} is unavailable ({exc}) and no "
                    "source.group_id is set to start with"
                ) from exc
            log.warning(
                "ASAPO at %s is unavailable (%s); will keep trying", self.params.endpoint, exc
            )
        except asapo.AsapoConsumerError as exc:
            raise SourceConfigError(f"ASAPO at {self.params.endpoint}: {exc}") from exc

    # -- reading (dispatcher) ----------------------------------------------------------
    def open(self) -> None:
        p = self.params
        self._consumer = self._reading_consumer()
        if p.metadata_source:
            self._meta_consumer = self._consumer_for(p.metadata_source)
        self._stream = p.stream
        self._scans: dict[str, dict[str, Any]] = {}
        self._last_data = time.monotonic()
        self._retry_delay = 0.0
        self._retry_until = 0.0
        self._next_poll = 0.0
        self._ended = False
        self._pending: tuple | None = None
        self._end_at = 0.0
        self._finished_streams: set[str] = set()
        self._known_streams: set[str] = set()
        self._delivered: dict[str, int] = {}

    def _reading_consumer(self):
        p = self.params
        consumer = self._consumer_for(p.data_source)
        # Without resend, a message delivered to a run that then died would be lost for good.
        consumer.set_resend_nacs(True, p.resend_delay_ms, p.resend_attempts)
        return consumer

    def resume(self, delivered: int) -> None:  # noqa: ARG002 - the broker knows the position
        """Nothing to skip: the group's pointer is kept by the broker, and what the dead
        dispatcher took but the run never acknowledged comes back by the group's resend."""

    def _scan(self, stream: str) -> dict[str, Any]:
        if stream not in self._scans:
            scan: dict[str, Any] = {}
            for consumer in (self._consumer, self._meta_consumer):
                if consumer is None:
                    continue
                try:
                    raw = consumer.get_stream_meta(stream)
                    if raw:
                        scan.update(json.loads(raw) if isinstance(raw, str) else dict(raw))
                except (_client().AsapoConsumerError, ValueError):
                    pass
            if self._meta_consumer is not None:
                try:
                    _, meta = self._meta_consumer.get_last(meta_only=True, stream=stream)
                    scan.update(meta.get("meta") or {})
                except _client().AsapoConsumerError:
                    pass
            self._scans[stream] = scan
        return self._scans[stream]

    def _part(self, meta: dict[str, Any], index: int) -> Any:
        p = self.params
        size = int(meta["size"])
        if p.part_shape:
            expected = int(np.prod(p.part_shape)) * np.dtype(p.part_dtype).itemsize
            if size != expected:
                raise _BadMessage(
                    f"part {index} ({meta.get('name')}) has {size} bytes, expected {expected} "
                    f"for shape {list(p.part_shape)} {p.part_dtype}"
                )
            dtype, shape = np.dtype(p.part_dtype).str, tuple(p.part_shape)
        else:
            dtype, shape = "|u1", (size,)
        if p.has_filesystem:
            return _FilePart(os.path.join(p.source_path, meta["name"]), size, dtype, shape)
        data = self._consumer.retrieve_data(meta)
        return np.asarray(data).view(np.uint8).view(dtype).reshape(shape)

    def _message(
        self,
        stream: str,
        msg_id: int,
        metas: list[dict[str, Any]],
        expected: int,
        error: str | None = None,
    ) -> Message:
        p = self.params
        metas = sorted(metas, key=lambda m: int(m.get("dataset_substream") or 0))
        first = metas[0] if metas else {}
        user_meta = first.get("meta") if isinstance(first.get("meta"), dict) else {}
        msg = Message(
            stream=stream,
            message_id=msg_id,
            name=str(first.get("name", "")),
            meta=dict(user_meta or {}),
            scan=self._scan(stream),
            timestamp=float(first.get("timestamp", 0)) / 1e9,
            error=error,
        )
        if error:
            return msg
        try:
            if p.dataset and len(metas) != p.parts and expected == len(metas):
                raise _BadMessage(f"dataset has {len(metas)} parts, expected {p.parts}")
            by_sub = {int(m.get("dataset_substream") or 1): m for m in metas}
            missing = [i for i in range(1, p.parts + 1) if i not in by_sub] if p.dataset else []
            parts = []
            for i in range(1, (p.parts if p.dataset else 1) + 1):
                m = by_sub.get(i) if p.dataset else metas[0]
                if m is None:
                    parts.append(np.zeros(tuple(p.part_shape), dtype=p.part_dtype))
                else:
                    parts.append(self._part(m, i - 1))
            if missing:
                msg.meta["missing_parts"] = [i - 1 for i in missing]
            msg.parts = parts
        except _BadMessage as exc:
            msg.error = str(exc)
        return msg

    def _retry_later(self, exc: Exception) -> None:
        # A fresh client for the next try: after a failed transfer the client (25.3) can be
        # left with a bad pooled connection to the receiver (seen: one whose descriptor its
        # own HTTP connection had taken over, so that a read waited on the wrong socket).
        # The group's position is the broker's, and a message already taken is kept in
        # self._pending, so nothing is lost by starting anew.
        self._consumer = None
        self._consumer = self._reading_consumer()
        self._retry_delay = min(self.params.retry_max_s, max(0.5, self._retry_delay * 2))
        self._retry_until = time.monotonic() + self._retry_delay
        log.warning(
            "ASAPO at %s: %s: %s; retrying in %.1f s",
            self.params.endpoint,
            type(exc).__name__,
            exc,
            self._retry_delay,
        )

    def next(self, timeout: float) -> Message | StreamFinished | None:
        asapo = _client()
        p = self.params
        now = time.monotonic()
        if self._ended or (self._end_at and now >= self._end_at):
            raise EndOfSource
        if now < self._retry_until:
            time.sleep(min(timeout, self._retry_until - now))  # backing off a failed service
            return None
        stream = self._stream
        try:
            item = self._fetch(stream)
        except asapo.AsapoStreamFinishedError as exc:
            if stream in self._finished_streams:
                # Known to be finished: only redeliveries may still come, and the broker
                # answers a finished stream at once, so pace the polling.
                time.sleep(min(timeout, 0.1))
                return self._idle(stream)
            self._finished_streams.add(stream)
            nxt = exc.next_stream or ""
            # The broker names "no next stream" with this sentinel rather than an empty name.
            nxt = "" if nxt == "asapo_no_next" else nxt
            return self._finished(stream, nxt, int(exc.id_max or 0))
        except asapo.AsapoEndOfStreamError:
            self._check_exists(stream)
            return self._idle(stream)
        except asapo.AsapoNoDataError:
            return None
        except (
            asapo.AsapoUnavailableServiceError,
            asapo.AsapoInterruptedTransactionError,
            asapo.AsapoDataNotInCacheError,
        ) as exc:
            self._retry_later(exc)
            return None
        except asapo.AsapoWrongInputError as exc:
            raise SourceConfigError(f"ASAPO refused the request: {exc}") from exc
        self._retry_delay = 0.0
        self._last_data = time.monotonic()
        self._delivered[stream] = self._delivered.get(stream, 0) + 1
        if self._end_at:
            self._end_at = self._last_data + p.resend_delay_ms / 1000 + 0.5
        return item

    def _fetch(self, stream: str) -> Message:
        """The next message, its payload read; a failed read is retried on the next call."""
        asapo, p = _client(), self.params
        if self._pending is None:
            # The broker's group pointer moves past a message when it hands it out, so keep
            # it until its payload is read: a failed read must be retried, not dropped.
            try:
                if p.dataset:
                    ds = self._consumer.get_next_dataset(
                        p.group_id, min_size=0, stream=stream, ordered=False
                    )
                    self._pending = (
                        stream,
                        int(ds["id"]),
                        ds["content"],
                        int(ds.get("expected_size") or 0),
                        None,
                    )
                else:
                    _, meta = self._consumer.get_next(
                        p.group_id, meta_only=True, stream=stream, ordered=False
                    )
                    self._pending = (stream, int(meta["_id"]), [meta], 1, None)
            except asapo.AsapoPartialDataError as exc:
                self._pending = self._partial(stream, exc.partial_data)
        item = self._message(*self._pending)
        self._pending = None
        return item

    def _partial(self, stream: str, partial: Any) -> tuple:
        data = partial if isinstance(partial, dict) else {}
        metas = list(data.get("content") or [])
        msg_id = int(data.get("id") or (metas[0].get("_id") if metas else 0))
        have = sorted(int(m.get("dataset_substream") or 0) for m in metas)
        expected = int(data.get("expected_size") or self.params.parts)
        if self.params.partial == "process" and self.params.part_shape:
            return (stream, msg_id, metas, expected, None)
        missing = [i for i in range(1, expected + 1) if i not in have]
        error = (
            f"incomplete dataset: {len(metas)} of {expected} parts (missing substreams {missing})"
        )
        return (stream, msg_id, metas, expected, error)

    def _finished(self, stream: str, nxt: str, last_id: int) -> StreamFinished:
        p = self.params
        follow = p.follow != "none" and bool(nxt)
        log.info("stream %s finished%s", stream, f"; next: {nxt}" if nxt else "")
        if last_id > 0 and not self._delivered.get(stream):
            log.warning(
                "consumer group %r has already consumed stream %s (%d messages, ids 1-%d; 0 "
                "for this run): nothing to do there. To process it again: shmpipe run "
                "--reprocess (a fresh group from its first message), or another source.group_id",
                p.group_id,
                stream,
                self._stream_size(stream, last_id),
                last_id,
            )
        if follow:
            self._stream = nxt
        elif p.follow in ("numeric", "date", "basename"):
            self._next_poll = 0.0  # look for a successor by name at once
        elif p.until == "finished":
            self._drain(stream)
        return StreamFinished(stream, nxt, last_id)

    def _drain(self, stream: str) -> None:
        """End once ``stream`` stays quiet for a resend period: messages a crashed run held
        unacknowledged come back within it, and must not be left for a later run."""
        wait = self.params.resend_delay_ms / 1000 + 0.5
        self._end_at = time.monotonic() + wait
        log.info(
            "stream %s finished: waiting %.1f s for redeliveries of unacknowledged messages "
            "(source.resend_delay_ms = %d) before ending",
            stream,
            wait,
            self.params.resend_delay_ms,
        )

    def _check_exists(self, stream: str) -> None:
        """Say once, clearly, when the stream read from does not exist (yet): a typo in
        ``source.stream`` would otherwise look like a quiet detector."""
        if stream in self._known_streams:
            return
        self._known_streams.add(stream)
        names = self._stream_names()
        if names is not None and stream not in names:
            p = self.params
            log.warning(
                "stream %r does not exist (yet) in beamtime %r, data source %r: waiting for it%s"
                " (streams there: %s)",
                stream,
                p.beamtime,
                p.data_source,
                f" for at most {p.idle_timeout_s} s (source.idle_timeout_s)"
                if p.idle_timeout_s
                else "",
                ", ".join(names[:10]) or "none",
            )

    def _stream_size(self, stream: str, default: int) -> int:
        try:
            return int(self._consumer.get_current_size(stream=stream))
        except (_client().AsapoConsumerError, TypeError, ValueError):
            return default

    def _stream_names(self) -> list[str] | None:
        """Names of the data source's streams; None when the broker cannot say now."""
        try:
            listed = self._consumer.get_stream_list(from_stream="", filter="all", detailed=False)
        except _client().AsapoConsumerError:
            return None
        return [s["name"] for s in listed]

    def _idle(self, stream: str) -> StreamFinished | None:
        p = self.params
        now = time.monotonic()
        if p.follow in ("numeric", "date", "basename") and now >= self._next_poll:
            self._next_poll = now + p.poll_streams_s
            nxt = next_stream(p.follow, stream, self._stream_names() or [])
            if nxt:
                log.info("following stream %s -> %s (%s naming)", stream, nxt, p.follow)
                self._stream = nxt
                self._last_data = now
                if stream in self._finished_streams:
                    return None  # its finished flag was already passed on
                return StreamFinished(stream, nxt)
            if stream in self._finished_streams and p.until == "finished":
                if not self._end_at:
                    self._drain(stream)
        if p.idle_timeout_s and now - self._last_data > p.idle_timeout_s:
            log.info("no message for %.1f s (source.idle_timeout_s): stopping", p.idle_timeout_s)
            self._ended = True
        return None

    def close(self) -> None:
        self._consumer = self._meta_consumer = None

    # -- acknowledging (publisher) -----------------------------------------------------
    def acknowledger(self) -> Acknowledger:
        return AsapoAcknowledger(self._consumer_for(self.params.data_source), self.params)


class _BadMessage(ValueError):
    pass


class AsapoAcknowledger(Acknowledger):
    """Acknowledges through its own consumer of the same group (in the publisher process)."""

    def __init__(self, consumer, params: AsapoSourceParams) -> None:
        self.consumer, self.params = consumer, params
        self._handed_back: dict[tuple[str, int], int] = {}

    def retry_elsewhere(self, stream: str, message_id: int) -> bool:
        key = (stream, message_id)
        n = self._handed_back.get(key, 0)
        if n >= self.params.retry_quarantined:
            self._handed_back.pop(key, None)
            return False
        self._handed_back[key] = n + 1
        self.nack(stream, message_id, self.params.nack_delay_ms)
        return True

    def ack(self, stream: str, message_id: int) -> None:
        asapo = _client()
        delay = 0.5
        while True:
            try:
                self.consumer.acknowledge(self.params.group_id, message_id, stream=stream)
                return
            except asapo.AsapoWrongInputError:
                return  # acknowledged already (a redelivered duplicate): nothing to do
            except (
                asapo.AsapoUnavailableServiceError,
                asapo.AsapoInterruptedTransactionError,
            ) as exc:
                # Not acknowledging would redeliver the message, which is safe but wasteful;
                # the service is usually back within seconds.
                if delay > self.params.retry_max_s:
                    raise
                log.warning(
                    "acknowledging %s/%d: %s; retrying in %.1f s", stream, message_id, exc, delay
                )
                time.sleep(delay)  # backing off an unavailable service
                delay *= 2

    def nack(self, stream: str, message_id: int, delay_ms: int = 0) -> None:
        try:
            self.consumer.neg_acknowledge(
                self.params.group_id,
                message_id,
                delay_ms or self.params.nack_delay_ms,
                stream=stream,
            )
        except _client().AsapoConsumerError as exc:
            log.warning("negative acknowledgement of %s/%d failed: %s", stream, message_id, exc)

    def close(self) -> None:
        self.consumer = None
