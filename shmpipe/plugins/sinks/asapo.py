"""AsapoSink: results to ASAPO output streams through the real ``asapo_producer`` client.

Each ``[[sinks]] kind = "asapo"`` table is one output: a data source (``azint``, ``image``,
``errors``), a stream name derived from the input's, and the kernel outputs it carries. Every
output record keeps the input's id (so a redelivered input maps to the same output id, which
the service refuses as a duplicate: the sink is idempotent) and user meta with lineage.

``commit`` waits for the confirmation of every send, so the publisher acknowledges an input
only once its outputs are stored — never lost in silence. A send that timed out (the service
restarting, or gone for a while) is sent again, with a growing delay, until the service takes
it: the ring fills meanwhile and the pipeline waits, as the source does. A send the service
refused for good (a wrong token or beamtime) fails the run.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shmpipe.api.params import ParamError
from shmpipe.api.sink import ErrorRecord, Record, ReducedRecord, RunInfo, Sink
from shmpipe.plugins.asapo_connection import AsapoConnectionParams

log = logging.getLogger("shmpipe.publisher.asapo")


@dataclass
class AsapoSinkParams(AsapoConnectionParams):
    data_source: str = "processed"
    """Output data source, e.g. azint, image, errors."""
    stream: str = "{stream}"
    """Output stream name; {stream} is the input's stream, {run} the run's name (give each
    node its own stream of reducer results: "{stream}-{run}")."""
    name: str = "{data_source}/{name}"
    """Output message name; {name} is the input's name, {id} its id, {stream} its stream,
    {data_source} this output's. Keep it distinct from the input's name: stored payloads are
    files named after their messages."""
    carry: Literal["results", "errors", "reduced"] = "results"
    """What this output carries: kernel results, the error records, or the results of one
    reducer (``reducer``): one record per window (id: window + 1) or stream (id 1), its
    meta naming the message ids it covers; the data holds the outputs and the state (for a
    merge downstream)."""
    reducer: str = ""
    """With carry = "reduced": the reducer (``[reducers.NAME]``) this output carries."""

    outputs: list[str] | None = None
    """Kernel outputs to carry (kernel.output); default all. One output is sent as its raw
    bytes; several are concatenated, each described in meta["arrays"]."""
    timeout_ms: int = 10000
    """How long one send may take before it counts as failed (and is sent again)."""
    retry_max_s: float = 30.0
    """Longest delay between two attempts to send what the service did not take in time."""
    nthreads: int = 1
    """Producer sending threads."""
    allow_other_config: bool = False
    """Write into an output stream whose records were made with another result-shaping
    configuration (kernels and their parameters). Off: such a stream is refused, so that one
    stream never mixes results made differently."""

    def validate(self) -> None:
        if (self.carry == "reduced") != bool(self.reducer):
            raise ParamError("reducer", 'carry = "reduced" and reducer = "NAME" go together')


def client_log_level(level: int) -> str:
    """The ASAPO client log level that keeps its own lines below shmpipe's ``level``.

    The clients print JSON lines straight to stderr (no Python logging to route them through),
    mostly retries they recover from (``receiver list empty, put back to the queue``) and
    whose lasting failures shmpipe reports itself. So they show only when shmpipe logs at
    debug level (``run.log_level = "debug"``), and at the client's ``error`` level otherwise.
    """
    if level <= logging.DEBUG:
        return "info"
    if level >= logging.ERROR:
        return "none"
    return "error"


class AsapoSinkError(RuntimeError):
    """A send to ASAPO failed; the inputs concerned were not acknowledged."""


class AsapoSink(Sink):
    """``[[sinks]] kind = "asapo"``."""

    Params = AsapoSinkParams

    def written(self, run_name: str, streams: list[str]) -> list[str]:
        p = self.params
        names = sorted({p.stream.format(stream=s, run=run_name) for s in streams})
        return [f"ASAPO {p.endpoint} {p.beamtime}/{p.data_source}: {', '.join(names)}"]

    def _out_stream(self, stream: str) -> str:
        return self.params.stream.format(stream=stream, run=self.run.run_name)

    def check_rerun(self, run: RunInfo) -> None:
        reducers = run.config.get("reducers", {})
        if self.params.carry == "reduced" and self.params.reducer not in reducers:
            raise ValueError(
                f"sinks: asapo reducer = {self.params.reducer!r} names no [reducers.*] table "
                f"(reducers: {', '.join(reducers) or 'none'})"
            )

    def stored(self, run: RunInfo, published: dict[str, int]) -> list[str]:
        """``ASAPO host:port beamtime/azint: scan_0001 100 records sent, ...``; a stream whose
        newest record predates the run got nothing new: the service already held a record
        of each id sent (a stream read again, ``--reprocess``), and says so."""
        p = self.params
        where = f"ASAPO {p.endpoint} {p.beamtime}/{p.data_source}"
        if p.carry == "errors":
            return [f"{where}: error records"]
        if p.carry == "reduced":
            return [f"{where}: results of reducer {p.reducer}"]
        sent: dict[str, int] = {}
        for stream, n in published.items():
            if n > 0:
                out = p.stream.format(stream=stream, run=run.run_name)
                sent[out] = sent.get(out, 0) + n
        if not sent:
            return [f"{where}: nothing sent (no results were published)"]
        untouched = self._streams_older_than(run.started, list(sent))
        parts = []
        for out, n in sorted(sent.items()):
            if out in untouched:
                parts.append(f"{out} 0 records stored, {n} skipped (already stored)")
            else:
                parts.append(f"{out} {n} records sent")
        text = f"{where}: " + ", ".join(parts)
        if untouched:
            text += (
                "; the service keeps one record per input id: to keep results read again, "
                'give this sink another stream, e.g. stream = "{stream}-reprocessed"'
            )
        return [text]

    def _streams_older_than(self, started: float, streams: list[str]) -> set[str]:
        """The output streams whose newest record came before ``started`` (Unix time)."""
        p = self.params
        try:
            import asapo_consumer

            c = asapo_consumer.create_consumer(
                p.endpoint, "", False, p.beamtime, p.data_source, p.token, p.timeout_ms
            )
            infos = {s: c.get_stream_info(s) for s in streams}
        except Exception as exc:  # noqa: BLE001 - the summary then only says what was sent
            log.debug("cannot read the ASAPO output streams for the summary: %s", exc)
            return set()
        return {
            s
            for s, info in infos.items()
            if int(info.get("lastId", 0)) > 0 and int(info.get("timestampLast", 0)) < started * 1e9
        }

    def open(self, run: RunInfo) -> None:
        import asapo_producer

        p = self.params
        self.run = run
        known = [s.name for s in run.outputs]
        if p.outputs:
            bad = [o for o in p.outputs if o not in known]
            if bad:
                raise ValueError(f"sinks: outputs {bad} are not written by the chain ({known})")
        self.names = p.outputs or known
        if p.carry == "reduced" and p.reducer not in [r.name for r in run.reducers]:
            raise ValueError(
                f'sinks: carry = "reduced" needs reducer = the name of a [reducers.*] table, '
                f"got {p.reducer!r} (reducers: {[r.name for r in run.reducers]})"
            )
        # Units, axes and errors travel with each record so a view can label what it shows.
        self._labels = {
            s.name: {"unit": s.unit, "axis": s.axis, "errors": s.errors, "long_name": s.long_name}
            for s in [*run.outputs, *(o for r in run.reducers for o in r.outputs)]
        }
        self.producer = asapo_producer.create_producer(
            p.endpoint,
            "processed",
            p.beamtime,
            "auto",
            p.data_source,
            p.token,
            p.nthreads,
            p.timeout_ms,
        )
        self.producer.set_log_level(client_log_level(log.getEffectiveLevel()))
        # Completion is tracked through the send callbacks: the client's own
        # wait_requests_finished polls every 100 ms, which would cap commits at 10/s.
        self._done = threading.Condition()
        self._in_flight = 0
        self._failures: list[tuple[bool, str]] = []  # (temporary, description)
        # What was sent since the last commit, to send again after a temporary failure
        # (each record keeps its id, so what did arrive is refused as a duplicate).
        self._batch: list[tuple[str, dict[str, Any]]] = []
        self._attempt = 0  # answers to the sends of an earlier attempt are not counted
        self._last_id: dict[str, int] = {}
        self._checked: set[str] = set()
        self._duplicates = 0  # sends the service answered with "already stored"

    def _callback(
        self, attempt: int, record: bool, payload: dict[str, Any], err: Exception | None
    ) -> None:
        import asapo_producer

        with self._done:
            if attempt != self._attempt:
                return  # a late answer to a send made again since
            self._in_flight -= 1
            # A server warning is e.g. a duplicate of a record already stored: idempotent by id.
            if isinstance(err, asapo_producer.AsapoServerWarning):
                self._duplicates += record  # not a finished flag sent again
            elif err is not None:
                temporary = isinstance(
                    err, asapo_producer.AsapoTimeOutError | asapo_producer.AsapoRequestsPoolIsFull
                )
                described = f"{payload.get('original_header', payload)}: {err}"
                self._failures.append((temporary, described))
            self._done.notify_all()

    def _lineage(self, stream: str, ids: list[int], names: list[str]) -> dict[str, Any]:
        extra = self.run.config.get("run", {}).get("provenance")  # e.g. shmpipe serve's version
        return {
            "input_stream": stream,
            "input_ids": ids,
            "input_names": names,
            "kernel_chain": self.run.chain,
            "config_hash": self.run.config_hash,
            "result_hash": self.run.result_hash,
            "run": self.run.run_name,
            **({"provenance": extra} if extra else {}),
        }

    def _check_stream(self, out_stream: str) -> None:
        """Refuse an output stream holding results of another result-shaping configuration."""
        self._checked.add(out_stream)
        if self.params.allow_other_config:
            return
        import asapo_consumer

        p = self.params
        c = asapo_consumer.create_consumer(
            p.endpoint, "", False, p.beamtime, p.data_source, p.token, p.timeout_ms
        )
        if out_stream not in [s["name"] for s in c.get_stream_list(from_stream="", filter="all")]:
            return  # a new stream: nothing to mix with
        last = int(c.get_stream_info(out_stream)["lastId"])
        meta = {}
        for i in (last, last - 1):  # the newest record, or the one before a finished flag
            if i < 1:
                break
            try:
                _, meta = c.get_by_id(i, meta_only=True, stream=out_stream)
                break
            except (asapo_consumer.AsapoStreamFinishedError, asapo_consumer.AsapoNoDataError):
                continue
            except asapo_consumer.AsapoEndOfStreamError:
                continue
        theirs = ((meta.get("meta") or {}).get("lineage") or {}).get("result_hash")
        if theirs is not None and theirs != self.run.result_hash:
            raise AsapoSinkError(
                f"ASAPO output {p.data_source}, stream {out_stream}: its records were made with "
                f"another result-shaping configuration (result hash {theirs}, this run "
                f"{self.run.result_hash}); write to another stream or data source, or set the "
                "sink's allow_other_config = true"
            )

    def _send(self, stream: str, mid: int, name: str, data: np.ndarray, meta: dict) -> None:
        out_stream = self._out_stream(stream)
        if out_stream not in self._checked:
            self._check_stream(out_stream)
        self._submit(
            "send",
            {
                "id": mid,
                "exposed_path": self.params.name.format(
                    name=name, id=mid, stream=stream, data_source=self.params.data_source
                ),
                "data": data,
                "user_meta": json.dumps(meta, default=str),
                "stream": out_stream,
            },
        )
        self._last_id[out_stream] = max(self._last_id.get(out_stream, 0), mid)

    def _submit(self, method: str, kwargs: dict[str, Any]) -> None:
        self._batch.append((method, kwargs))
        with self._done:
            self._in_flight += 1
            callback = functools.partial(self._callback, self._attempt, method == "send")
        if method == "send":
            self.producer.send(**kwargs, callback=callback)
        else:
            self.producer.send_stream_finished_flag(**kwargs, callback=callback)

    def _pack(self, named: dict[str, np.ndarray]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Arrays as one payload and its description (name, dtype, shape, offset, labels)."""
        arrays, described, offset = [], [], 0
        for n, src in named.items():
            a = np.ascontiguousarray(src)  # a scalar comes back 1-D: its shape is src's
            arrays.append(a.reshape(-1).view(np.uint8))
            described.append(
                {
                    "name": n,
                    "dtype": a.dtype.str,
                    "shape": list(np.shape(src)),
                    "offset": offset,
                    **self._labels.get(n, {}),
                }
            )
            offset += a.nbytes
        # One array goes out as a view of the result slot (kept until commit); several are
        # joined, which costs one copy of what are usually small profiles.
        return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), described

    def write_reduced(self, result: ReducedRecord) -> None:
        if self.params.carry != "reduced" or result.reducer != self.params.reducer:
            return
        state = {f"state.{k}": v for k, v in result.state.items()}
        data, described = self._pack({**result.arrays, **state})
        window = {
            "reducer": result.reducer,
            "window": result.window,
            "first_id": result.first_id,
            "last_id": result.last_id,
            "frames": result.frames,
            "id_runs": [list(r) for r in result.ids],
        }
        meta = {
            "arrays": described,
            "reduced": window,
            "lineage": {**self._lineage(result.stream, [], []), "input_id_runs": window["id_runs"]},
        }
        name = f"{result.reducer}_window_{result.window:06d}"
        self._send(result.stream, result.window + 1, name, data, meta)

    def write(self, record: Record) -> None:
        if self.params.carry != "results":
            return
        data, described = self._pack({n: record.arrays[n] for n in self.names})
        meta = {
            "arrays": described,
            "source_meta": record.meta,
            "lineage": self._lineage(record.stream, [record.message_id], [record.name]),
        }
        self._send(record.stream, record.message_id, record.name, data, meta)

    def write_error(self, error: ErrorRecord) -> None:
        if self.params.carry != "errors":
            return
        doc = {
            "stream": error.stream,
            "message_id": error.message_id,
            "name": error.name,
            "kernel": error.kernel,
            "error": error.error,
            "traceback": error.traceback,
            "quarantined": error.quarantined,
            "attempt": error.attempt,
        }
        data = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
        meta = {
            "error": doc,
            "lineage": self._lineage(error.stream, [error.message_id], [error.name]),
        }
        self._send(error.stream, error.message_id, error.name, data, meta)

    def stream_finished(self, stream: str, next_stream: str, last_id: int = 0) -> None:
        out_stream = self._out_stream(stream)
        if self.params.carry == "reduced":
            last_id = 0  # its ids count windows, not input messages
        last = max(last_id, self._last_id.get(out_stream, 0))
        if last <= 0:
            return  # nothing was ever sent to this output: there is no stream to finish
        nxt = self._out_stream(next_stream) if next_stream else ""
        self._submit("finish", {"stream": out_stream, "last_id": last, "next_stream": nxt or None})

    def commit(self) -> None:
        p = self.params
        delay = 0.0
        while True:
            with self._done:
                # The client answers every send, timing it out after timeout_ms; twice that
                # without an answer counts as a timeout too.
                answered = self._done.wait_for(
                    lambda: self._in_flight <= 0, timeout=2 * p.timeout_ms / 1000
                )
                failures, self._failures = self._failures, []
                unanswered = self._in_flight
            if answered and not failures:
                self._batch.clear()
                return
            refused = [d for temporary, d in failures if not temporary]
            if refused:
                raise AsapoSinkError(
                    f"ASAPO output {p.data_source}: {len(refused)} sends refused; first: "
                    f"{refused[0]}"
                )
            delay = min(p.retry_max_s, max(0.5, delay * 2))
            log.warning(
                "ASAPO output %s: %d of %d sends not taken in time (%s); sending them again "
                "in %.1f s",
                p.data_source,
                len(failures) + unanswered,
                len(self._batch),
                failures[0][1] if failures else f"{unanswered} unanswered",
                delay,
            )
            time.sleep(delay)  # backing off a service that is restarting or gone
            batch, self._batch = self._batch, []
            with self._done:
                self._attempt += 1
                self._in_flight = 0
                self._failures = []
            for method, kwargs in batch:
                self._submit(method, kwargs)

    def close(self) -> None:
        producer = getattr(self, "producer", None)
        if producer is not None:
            try:
                self.commit()
            finally:
                self.producer = None
            if self._duplicates:
                log.info(
                    "ASAPO output %s: %d records were stored already (the same input ids) "
                    "and were not stored again",
                    self.params.data_source,
                    self._duplicates,
                )
