"""The reduce stage: the publisher's hook that folds every published frame into the reducers.

The publisher calls it at four points, and nowhere else::

    add(record)              a frame's results, after the sinks took them
    skip(stream, id)         an error record in a frame's place (its window still completes)
    stream_finished(stream)  before the sinks hear of it: the stream's open windows are written
    commit()                 after the sinks committed, before the acknowledgements

Exactly once: a frame is added only if its id is not in the stream's *covered* set, and the
state is checkpointed together with that set (``checkpoint.Writer``) before the frames it holds
are acknowledged. A publisher that dies after the checkpoint and before the acknowledgement
meets those frames again and skips them; one that dies before the checkpoint left frames that
come back and are added to the last checkpoint's state, which does not hold them. A window
result may therefore be written twice, with the same frames: sinks store it by window index.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from shmpipe.api.reducer import Reducer
from shmpipe.api.sink import Record, ReducedRecord, RunInfo, Sink
from shmpipe.config import PipelineConfig
from shmpipe.plugins.sinks.hdf5 import IdSet
from shmpipe.reduce import checkpoint
from shmpipe.reduce.setup import build_reducers, rerun_mode, state_path
from shmpipe.reduce.windows import StreamWindows, Window, runs_of, window_ids, window_of

WARN_EVERY_S = 10.0  # a reducer refusing frames is logged at most this often


class ReduceStage:
    """Every reducer of a run, their windows per stream, and the checkpoint."""

    def __init__(
        self,
        reducers: list[Reducer],
        path: str,
        run: RunInfo,
        sinks: list[Sink],
        log: logging.Logger,
        resume: bool,
    ) -> None:
        self.reducers, self.path, self.sinks, self.log = reducers, path, sinks, log
        self.cp = checkpoint.Checkpoint(run.run_uid, run.result_hash)
        try:
            old_uid = checkpoint.identity(path)[0] if checkpoint.exists(path) else None
        except ValueError:  # only a first commit, torn: nothing was acknowledged after it
            old_uid = None
            checkpoint.remove(path)
        if old_uid is not None:
            if old_uid == run.run_uid or resume:  # a replaced publisher, or a resumed run
                self.cp = checkpoint.load(path)
                self.cp.run_uid = run.run_uid
                log.info("reducers: continuing from %s", path)
            else:  # mode = "overwrite" (the start-up checks refused it under "new")
                checkpoint.remove(path)
        self.writer = checkpoint.Writer(path)
        self.dirty = False
        self.axis: dict[str, np.ndarray] = {}  # reducer -> its input's axis values
        self._warned: dict[str, float] = {}

    @classmethod
    def create(
        cls, config: PipelineConfig, run: RunInfo, sinks: list[Sink], log: logging.Logger
    ) -> ReduceStage | None:
        """The stage of a run, or None when it has no ``[reducers.*]``."""
        if not config.reducers:
            return None
        reducers = build_reducers(config, run.outputs)
        return cls(reducers, state_path(config), run, sinks, log, rerun_mode(config) == "resume")

    # -- the publisher's hooks -------------------------------------------------------------
    def add(self, record: Record) -> None:
        stream, mid = record.stream, record.message_id
        for r in self.reducers:  # the input's axis, stored with the results (once)
            if r.name not in self.axis and self._axis_of(r) in record.arrays:
                self.axis[r.name] = np.array(record.arrays[self._axis_of(r)])
        if not self._cover(stream, mid):
            return  # in the checkpointed state already: a redelivered frame
        self.cp.last_stream = stream
        for r in self.reducers:
            k = window_of(mid, r.params.every)
            sw = self._windows(r, stream)
            w = self._open(r, sw, k)
            if w is None:
                continue
            try:
                grown = r.add(w.state, record.arrays[r.params.input], record)
            except (ValueError, KeyError, TypeError) as exc:
                w.skipped += 1
                self._warn(r, f"stream {stream!r} message {mid} not added: {exc}")
            else:
                if grown is not None:
                    w.state = grown
                w.add(mid)
            self._close_if_complete(r, stream, k, sw)

    def skip(self, stream: str, mid: int) -> None:
        if not self._cover(stream, mid):
            return
        for r in self.reducers:
            k = window_of(mid, r.params.every)
            sw = self._windows(r, stream)
            w = self._open(r, sw, k)
            if w is not None:
                w.skipped += 1
                self._close_if_complete(r, stream, k, sw)

    def stream_finished(self, stream: str) -> None:
        for r in self.reducers:
            sw = self._windows(r, stream)
            for k in sorted(sw.open):
                self._write(r, stream, k, sw)
        if stream not in self.cp.finished:
            self.cp.finished.add(stream)
            self.dirty = True

    def commit(self) -> None:
        """Checkpoint (after the sinks' commit, before any acknowledgement)."""
        if self.dirty:
            self.writer.save(self.cp)
            self.dirty = False

    # -- windows ---------------------------------------------------------------------------
    def _cover(self, stream: str, mid: int) -> bool:
        """Note ``mid`` as accounted for; False if it already was (in the checkpoint)."""
        covered = self.cp.covered.setdefault(stream, IdSet())
        if mid in covered:
            return False
        covered.add(mid)
        self.dirty = True
        return True

    @staticmethod
    def _open(r: Reducer, sw: StreamWindows, k: int) -> Window | None:
        """Window ``k``, opened if new; None if it was written (a new id cannot be in a
        written window, so this is a guard, never a second count)."""
        if k in sw.written:
            return None
        w = sw.open.get(k)
        if w is None:
            w = sw.open[k] = Window(r.new_state())
        return w

    def _windows(self, r: Reducer, stream: str) -> StreamWindows:
        key = (r.name, stream)
        sw = self.cp.windows.get(key)
        if sw is None:
            sw = self.cp.windows[key] = StreamWindows()
        return sw

    def _axis_of(self, r: Reducer) -> str:
        return r.input_spec.axis or ""

    def _close_if_complete(self, r: Reducer, stream: str, k: int, sw: StreamWindows) -> None:
        every = r.params.every
        w = sw.open[k]
        if every > 0 and w.frames + w.skipped >= every:
            self._write(r, stream, k, sw)

    def _write(self, r: Reducer, stream: str, k: int, sw: StreamWindows) -> None:
        """Hand window ``k`` to the sinks and close it (a window of error records only has
        no result to write)."""
        w = sw.open.pop(k)
        sw.written.add(k)
        self.dirty = True
        if not w.frames:
            return
        every = r.params.every
        first, last = window_ids(k, every) if every > 0 else w.id_range()
        finished = r.finish(w.state)
        result = ReducedRecord(
            stream=stream,
            reducer=r.name,
            window=k,
            first_id=first,
            last_id=last,
            frames=w.frames,
            ids=runs_of(w.ids),
            arrays={f"{r.name}.{n}": np.asarray(a) for n, a in finished.items()},
            state=w.state,
            axis=self.axis.get(r.name),
        )
        for s in self.sinks:
            s.write_reduced(result)
        self.cp.last_written[r.name] = (stream, k, w)

    def _warn(self, r: Reducer, text: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(r.name, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[r.name] = now
            self.log.warning("reducer %s: %s", r.name, text)
