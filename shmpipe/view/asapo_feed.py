"""AsapoFeed: the view of a run spread over nodes, read from ASAPO with the real consumer.

The output data sources (what the ``asapo`` sinks of every node publish) are read with a
consumer group of the view's own, so the view sees every record once whichever node wrote
it, and the pipelines' own groups are untouched. The detector's raw data source is read with
``get_last`` (the latest dataset only, never the whole stream), at most ``max_hz`` a second.

Each output record carries its arrays' names, dtypes and shapes (and units, axes, errors)
in its metadata, so the feed learns the outputs from the first record it reads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from shmpipe.api.kernel import ArraySpec
from shmpipe.shm.history import SMALL_ELEMENTS, History
from shmpipe.shm.preview import RawFrame
from shmpipe.view.feed import Counters, Snapshot

log = logging.getLogger("shmpipe.view.asapo")


class AsapoFeed:
    """A feed reading ASAPO output data sources (and, optionally, the raw data source)."""

    def __init__(
        self,
        endpoint: str,
        beamtime: str,
        data_sources: list[str],
        raw_source: str = "",
        token: str = "",
        group: str = "",
        raw_part_shape: tuple[int, int] = (516, 1556),
        raw_dtype: str = "uint16",
        history: int = 100_000,
        max_hz: float = 10.0,
        wait_s: float = 60.0,
    ) -> None:
        import asapo_consumer

        self._asapo = asapo_consumer
        self.endpoint, self.beamtime, self.token = endpoint, beamtime, token
        self.run_name = f"asapo {beamtime}/{'+'.join(data_sources)}"
        self.raw_part_shape, self.raw_dtype = tuple(raw_part_shape), np.dtype(raw_dtype).str
        self.history_rows, self.max_hz = history, max_hz
        self._consumers = {ds: self._consumer(ds) for ds in data_sources}
        self._raw_source = raw_source
        self._raw_consumer = self._consumer(raw_source) if raw_source else None
        first = next(iter(self._consumers.values()))
        self.group = group or first.generate_group_id()
        self._lock = threading.Lock()
        self._specs: dict[str, ArraySpec] = {}
        self._snap: Snapshot | None = None
        self._raw: RawFrame | None = None
        self._raw_reads = 0  # raw frames read: the raw frame's generation
        self._rows: dict[str, deque] = {}
        self._finished: set[tuple[str, str]] = set()
        self.records = 0
        self.nodes: set[str] = set()
        self.geometry = None  # the detector layout of the raw modules (``--geometry``)
        self._stop = threading.Event()
        self.part_specs = None
        if raw_source:
            self.part_specs = [ArraySpec("module_00", self.raw_part_shape, self.raw_dtype)]
        self._thread = threading.Thread(target=self._run, name="asapo-feed", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while not self._specs and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.05)  # the outputs are known only from the first record
        if not self._specs:
            self.close()
            raise LookupError(
                f"no record in data sources {data_sources} of beamtime {beamtime!r} at "
                f"{endpoint} within {wait_s:.0f} s"
            )

    def _consumer(self, data_source: str):
        c = self._asapo.create_consumer(
            self.endpoint, "", False, self.beamtime, data_source, self.token, 200
        )
        return c

    # -- the reader thread ----------------------------------------------------------------
    def _run(self) -> None:
        last_raw = 0.0
        while not self._stop.is_set():
            got = 0
            for ds, c in self._consumers.items():
                try:
                    got += self._drain(ds, c)
                except Exception as exc:  # noqa: BLE001 - the service may come back
                    log.warning("reading %s: %s", ds, exc)
                    # A fresh client, as the pipeline's source takes one: after a failed
                    # transfer the client can be left with a bad pooled connection.
                    self._consumers[ds] = self._consumer(ds)
                    time.sleep(0.5)
            now = time.monotonic()
            if self._raw_consumer is not None and now - last_raw >= 1.0 / self.max_hz:
                last_raw = now
                try:
                    self._read_raw()
                except Exception as exc:  # noqa: BLE001
                    log.warning("reading the raw data source: %s", exc)
                    self._raw_consumer = self._consumer(self._raw_source)
            if not got:
                self._stop.wait(0.05)

    def _streams(self, c) -> list[str]:
        listed = c.get_stream_list(from_stream="", filter="all", detailed=False)
        return [s["name"] if isinstance(s, dict) else str(s) for s in listed]

    def _drain(self, ds: str, c, batch: int = 500) -> int:
        a, n = self._asapo, 0
        for stream in self._streams(c):
            if (ds, stream) in self._finished:
                continue
            while n < batch:
                try:
                    data, meta = c.get_next(self.group, meta_only=False, stream=stream)
                except a.AsapoStreamFinishedError:
                    self._finished.add((ds, stream))
                    break
                except (a.AsapoEndOfStreamError, a.AsapoNoDataError):
                    break
                self._take(stream, data, meta)
                n += 1
        return n

    def _take(self, stream: str, data, meta: dict[str, Any]) -> None:
        user = meta.get("meta") or {}
        described = user.get("arrays") or []
        if not described:
            return  # an error record or a foreign message: nothing to show
        raw = np.asarray(data).view(np.uint8).reshape(-1)
        arrays = {}
        for d in described:
            dt = np.dtype(d["dtype"])
            n = int(np.prod(d["shape"], dtype=np.int64)) * dt.itemsize
            arrays[d["name"]] = raw[d["offset"] : d["offset"] + n].view(dt).reshape(d["shape"])
        lineage = user.get("lineage") or {}
        in_stream = lineage.get("input_stream", stream)
        mid = int((lineage.get("input_ids") or [meta.get("_id", 0)])[0])
        now = time.time()
        with self._lock:
            for d in described:
                if d["name"] not in self._specs:
                    self._specs[d["name"]] = ArraySpec(
                        d["name"],
                        tuple(d["shape"]),
                        d["dtype"],
                        unit=d.get("unit", ""),
                        axis=d.get("axis"),
                        errors=d.get("errors"),
                        long_name=d.get("long_name", ""),
                    )
            for name, a in arrays.items():
                if a.size <= SMALL_ELEMENTS:
                    rows = self._rows.setdefault(name, deque(maxlen=self.history_rows))
                    rows.append((mid, in_stream, now, 0, a.copy()))
            gen = (self._snap.generation if self._snap else 0) + 2
            self._snap = Snapshot(in_stream, mid, now, arrays, gen)
            self.records += 1
            if lineage.get("run"):
                self.nodes.add(str(lineage["run"]))

    def _read_raw(self) -> None:
        c, a = self._raw_consumer, self._asapo
        streams = self._streams(c)
        if not streams:
            return
        stream = streams[-1]
        try:
            ds = c.get_last_dataset(min_size=0, stream=stream)
        except a.AsapoStreamFinishedError:
            # The newest record of a finished stream is its end marker: take the one before.
            last = int(c.get_stream_info(stream).get("lastId") or 0)
            ds = None
            for mid in (last, last - 1):
                try:
                    ds = c.get_dataset_by_id(mid, min_size=0, stream=stream)
                    break
                except Exception:  # noqa: BLE001 - the marker, or nothing there
                    continue
            if ds is None:
                return
        except (a.AsapoEndOfStreamError, a.AsapoNoDataError):
            return
        except a.AsapoPartialDataError:
            return  # the newest dataset is still incomplete: keep the previous one
        metas = sorted(ds["content"], key=lambda m: int(m.get("dataset_substream") or 0))
        parts = []
        for m in metas:
            data = np.asarray(c.retrieve_data(m)).view(np.uint8).reshape(-1)
            parts.append(data.view(self.raw_dtype).reshape(self.raw_part_shape))
        with self._lock:
            self._raw = RawFrame(stream, int(ds["id"]), time.time(), parts)
            self._raw_reads += 1
            if self.part_specs is None or len(self.part_specs) != len(parts):
                self.part_specs = [
                    ArraySpec(f"module_{i:02d}", p.shape, p.dtype.str) for i, p in enumerate(parts)
                ]

    # -- the Feed protocol ----------------------------------------------------------------
    def outputs(self) -> dict[str, ArraySpec]:
        with self._lock:
            return dict(self._specs)

    def generation(self) -> int:
        with self._lock:
            return 0 if self._snap is None else self._snap.generation

    def latest(self, names: list[str] | None = None) -> Snapshot | None:
        with self._lock:
            return self._snap

    def apply(self, name: str, fn):
        """``(stream, message_id, t, fn(array))`` on the latest record's copy, or None."""
        snap = self.latest([name])
        if snap is None or name not in snap.arrays:
            return None
        return snap.stream, snap.message_id, snap.t, fn(snap.arrays[name])

    def raw(self) -> RawFrame | None:
        with self._lock:
            return self._raw

    def raw_generation(self) -> int:
        with self._lock:
            return self._raw_reads

    def history_names(self) -> list[str]:
        with self._lock:
            return [n for n, s in self._specs.items() if int(np.prod(s.shape)) <= SMALL_ELEMENTS]

    def history(self, name: str, last: int | None) -> History:
        with self._lock:
            rows = list(self._rows.get(name, ()))
        if last is not None:
            rows = rows[-last:] if last > 0 else []
        # Records of several nodes arrive in any order: show them by message id.
        rows.sort(key=lambda r: (r[1], r[0]))
        spec = self._specs[name]
        return History(
            message_id=np.array([r[0] for r in rows], dtype=np.int64),
            stream=[r[1] for r in rows],
            t=np.array([r[2] for r in rows]),
            version=np.array([r[3] for r in rows], dtype=np.int64),
            values=np.array([r[4] for r in rows], dtype=spec.dtype).reshape(-1, *spec.shape),
        )

    def counters(self) -> Counters:
        return Counters(
            frames_in=self.records,
            frames_out=self.records,
            extra={"nodes": sorted(self.nodes), "group": self.group},
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
