"""DeviceFeed: the values of the Tango device, read from the run's shared memory.

Everything here is read-only except the live-parameter block (``set_rois``): counters come
from the process table, per-frame values from the preview tap's history ring, the profile from
the tap's latest outputs. No pytango import, so this is usable and tested without it.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shmpipe.api.kernel import ArraySpec, Kernel
from shmpipe.config import TangoSection
from shmpipe.shm.layout import (
    P_ERRORS,
    P_FRAMES,
    P_MSG_ID,
    P_STATE,
    PROC_DISPATCHER,
    PROC_FIRST_WORKER,
    PROC_PUBLISHER,
    PS_DEAD,
    PS_EXITED,
)
from shmpipe.shm.params import LiveParams, LiveParamsError, check_live_params
from shmpipe.shm.ring import SlotRing
from shmpipe.tango.names import attribute_names

RATE_WINDOW_S = 2.0  # FrameRate: frames published over about this long


class FeedError(ValueError):
    """A request the device refuses: a DevFailed with ``reason`` and this message.

    Reasons: ``UnknownOutput``, ``UnknownStream``, ``NotPerFrame``, ``BadArgument``,
    ``NotAnalysedYet``, ``NotInHistory``, ``BadRoIs``, ``Unavailable``.
    """

    def __init__(self, message: str, reason: str = "BadArgument") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class OutputAttribute:
    """One per-frame output served as a Tango attribute."""

    attribute: str
    output: str
    spec: ArraySpec

    @property
    def size(self) -> int:
        return int(np.prod(self.spec.shape, dtype=np.int64))


class DeviceFeed:
    """The device's view of one running pipeline.

    Parameters
    ----------
    ring : SlotRing
        The run's shared tables (read only).
    tap : PreviewTap
        The run's preview tap (read only).
    live : LiveParams or None
        The live-parameter block (written by ``set_rois``).
    kernels : sequence of Kernel
        The chain's kernels as configured (for validating live parameters).
    settings : TangoSection
        The ``[tango]`` table.
    supervisor_pid : int
        Signalled by ``stop_analysis``.
    workers : int
        Worker seats (their rows of the process table tell a dead worker).
    """

    def __init__(
        self,
        ring: SlotRing,
        tap: Any,
        live: LiveParams | None,
        kernels: Sequence[Kernel],
        settings: TangoSection,
        supervisor_pid: int,
        workers: int,
    ) -> None:
        self.ring, self.tap, self.live = ring, tap, live
        self.kernels = list(kernels)
        self.settings = settings
        self.supervisor_pid = supervisor_pid
        self.workers = workers
        self.specs = tap.outputs()
        small = [n for n in self.specs if n in set(tap.small)]
        self.per_frame = [
            OutputAttribute(a, o, self.specs[o]) for a, o in attribute_names(small).items()
        ]
        self.roi_output = settings.roi_output or _first(small, ".roi_sums")
        self.max_output = _first(small, ".max")
        self.hit_output = settings.hit_output or _first(small, ".count_above")
        self.profile_output = settings.profile or next(
            (n for n, s in self.specs.items() if len(s.shape) == 1 and s.axis), ""
        )
        for key, name in (
            ("roi_output", settings.roi_output),
            ("hit_output", settings.hit_output),
            ("profile", settings.profile),
        ):
            if name and name not in self.specs:
                raise FeedError(f"tango.{key}: no output {name!r} in the chain", "UnknownOutput")
        self.profile_axis = self.specs[self.profile_output].axis if self.profile_output else None
        self._profile = self._axis = np.zeros(0)
        self._rates: deque[tuple[float, int]] = deque()
        self.stop_requested = False

    # -- run state and counters --------------------------------------------------------
    def counters(self) -> dict[str, int]:
        procs = self.ring.procs
        frames_in = int(procs[PROC_DISPATCHER, P_FRAMES])
        frames_out = int(procs[PROC_PUBLISHER, P_FRAMES])
        errors = int(procs[PROC_PUBLISHER, P_ERRORS])
        return {
            "FramesIn": frames_in,
            "FramesOut": frames_out,
            "Errors": errors,
            "Backlog": max(0, frames_in - frames_out - errors),
        }

    def frame_rate(self) -> float:
        """Frames published per second over the last ``RATE_WINDOW_S`` (sampled per call)."""
        now = time.monotonic()
        out = int(self.ring.procs[PROC_PUBLISHER, P_FRAMES])
        rates = self._rates
        rates.append((now, out))
        while len(rates) > 2 and now - rates[1][0] >= RATE_WINDOW_S:
            rates.popleft()
        t0, n0 = rates[0]
        return (out - n0) / (now - t0) if now > t0 else 0.0

    def state(self) -> tuple[str, str]:
        """``(state, status)``: running, draining, finished or fault, and a sentence."""
        procs = self.ring.procs
        if not _alive(self.supervisor_pid):
            return "fault", "the pipeline's supervisor is gone"
        dead = [
            s for s in range(self.workers) if int(procs[PROC_FIRST_WORKER + s, P_STATE]) == PS_DEAD
        ]
        if int(procs[PROC_PUBLISHER, P_STATE]) == PS_EXITED:
            return "finished", "finished: every frame taken was published"
        if dead:
            reasons = (self.ring.exit_reason(PROC_FIRST_WORKER + s) for s in dead)
            note = "; ".join(filter(None, reasons))
            return "fault", f"worker(s) {dead} died; being replaced{': ' + note if note else ''}"
        c = self.counters()
        if self.stop_requested or int(procs[PROC_DISPATCHER, P_STATE]) == PS_EXITED:
            return "draining", f"draining: no new frames, {c['Backlog']} in flight"
        return "running", (
            f"running: {c['FramesIn']} frames in, {c['FramesOut']} out, {c['Errors']} errors"
        )

    # -- the latest frame --------------------------------------------------------------
    def last_frame(self) -> tuple[int, str]:
        """Message id and stream of the latest frame whose per-frame values can be looked up."""
        if self.per_frame:
            h = self.tap.history(self.per_frame[0].output, last=1)
            if len(h.message_id):
                return int(h.message_id[-1]), h.stream[-1]
            return 0, ""
        return int(self.ring.procs[PROC_PUBLISHER, P_MSG_ID]), ""

    def latest_values(self) -> dict[str, np.ndarray]:
        """The latest frame's per-frame outputs by attribute name (empty before the first)."""
        out = {}
        for a in self.per_frame:
            h = self.tap.history(a.output, last=1)
            if len(h.message_id):
                out[a.attribute] = h.values[-1]
        return out

    def hit_rate(self) -> float:
        """Fraction of hits among the latest ``hit_window`` frames (NaN: nothing to count)."""
        if not self.hit_output:
            return float("nan")
        h = self.tap.history(self.hit_output, last=self.settings.hit_window)
        if not len(h.values):
            return float("nan")
        v = h.values.reshape(len(h.values), -1)[:, 0]
        return float(np.mean(v >= self.settings.hit_min))

    def profile(self) -> tuple[np.ndarray, np.ndarray]:
        """The latest profile and its axis (empty arrays when there is none yet).

        The tap copies large outputs only while someone reads them, so the first read after a
        pause may lack them: the last profile seen stands in until the next frame brings one.
        """
        if not self.profile_output:
            return np.zeros(0), np.zeros(0)
        names = [self.profile_output] + ([self.profile_axis] if self.profile_axis else [])
        got = self.tap.latest(names)
        arrays = got[3] if got is not None else {}
        if self.profile_output in arrays:
            self._profile = arrays[self.profile_output].astype(np.float64)
        if self.profile_axis and self.profile_axis in arrays:
            self._axis = np.asarray(arrays[self.profile_axis], np.float64)
        elif not self.profile_axis:
            self._axis = np.arange(len(self._profile), dtype=np.float64)
        return self._profile, self._axis

    # -- per-frame look-ups ------------------------------------------------------------
    def value_for_frame(self, output: str, message_id: Any, stream: str = "") -> np.ndarray:
        """The value ``output`` had for one message (of ``stream``; default: the latest one
        holding that id), from the history ring.

        Raises
        ------
        FeedError
            Unknown output, one not kept per frame, a bad id, or a frame not in the history.
        """
        if output not in self.specs:
            known = ", ".join(a.output for a in self.per_frame) or "none"
            raise FeedError(
                f"unknown output {output!r}; per-frame outputs: {known}", "UnknownOutput"
            )
        if output not in {a.output for a in self.per_frame}:
            raise FeedError(
                f"output {output!r} (shape {self.specs[output].shape}) is too large to be kept "
                "per frame; only scalars and short vectors are",
                "NotPerFrame",
            )
        mid = _message_id(message_id)
        h = self.tap.history(output)
        hits = np.nonzero(h.message_id == mid)[0]
        if stream:
            hits = [i for i in hits if h.stream[i] == stream]
        if len(hits):
            return np.asarray(h.values[hits[-1]])
        where = f" of stream {stream!r}" if stream else ""
        ids = h.message_id if not stream else h.message_id[[s == stream for s in h.stream]]
        if stream and not len(ids) and len(h.message_id):
            known = ", ".join(dict.fromkeys(h.stream))
            raise FeedError(
                f"unknown stream {stream!r}: no frame of it in the history, which holds "
                f"stream(s) {known}",
                "UnknownStream",
            )
        if not len(ids):
            raise FeedError(
                f"frame {mid}{where} is not in the history: no frame analysed yet", "NotAnalysedYet"
            )
        if mid > ids[-1]:
            raise FeedError(
                f"frame {mid}{where} has not been analysed yet (last analysed: {int(ids[-1])})",
                "NotAnalysedYet",
            )
        raise FeedError(
            f"frame {mid}{where} is not in the history, which holds the last {len(h.values)} "
            f"frames (ids {int(ids.min())}..{int(ids.max())})",
            "NotInHistory",
        )

    def roi_for_frame(self, roi: Any, message_id: Any) -> float:
        """ROI sum number ``roi`` (0-based) of one frame (``GetRoiForFrame``)."""
        if not self.roi_output:
            raise FeedError(
                "the chain has no ROI sums (frame_stats with rois or max_rois)", "Unavailable"
            )
        values = np.ravel(self.value_for_frame(self.roi_output, message_id))
        i = _message_id(roi, what="roi index", low=0)
        if i >= len(values) or np.isnan(values[i]):
            n = int(np.count_nonzero(~np.isnan(values)))
            raise FeedError(f"no roi {i} for that frame: it had {n} ROI(s)")
        return float(values[i])

    def max_for_frame(self, message_id: Any) -> float:
        """The maximum of one frame (``GetMaxForFrame``)."""
        if not self.max_output:
            raise FeedError("the chain has no per-frame maximum (frame_stats)", "Unavailable")
        return float(np.ravel(self.value_for_frame(self.max_output, message_id))[0])

    # -- control -----------------------------------------------------------------------
    def roi_kernel(self) -> str:
        if not self.roi_output:
            raise FeedError(
                "the chain has no ROI sums (frame_stats with max_rois) to set", "Unavailable"
            )
        return self.roi_output.split(".", 1)[0]

    def rois(self) -> list[int]:
        """The ROIs in force, flat ``[y0, y1, x0, x1, ...]``."""
        if not self.roi_output:
            return []
        kernel = self.roi_kernel()
        doc = self.live.read()[0] if self.live is not None else {}
        if "rois" in doc.get(kernel, {}):
            rois = doc[kernel]["rois"]
        else:
            k = next(k for k in self.kernels if k.name == kernel)
            rois = getattr(k.params, "rois", [])
        return [int(v) for r in rois for v in r]

    def set_rois(self, flat: Any) -> int:
        """Validate and write new ROIs (flat ``[y0, y1, x0, x1, ...]``); return the version."""
        if self.live is None:
            raise FeedError("this run has no live-parameter block", "Unavailable")
        kernel = self.roi_kernel()
        try:
            checked = check_live_params(
                self.kernels, list(self.specs.values()), kernel, {"rois": list(np.ravel(flat))}
            )
            return self.live.update(kernel, checked)
        except LiveParamsError as exc:
            raise FeedError(str(exc), "BadRoIs") from None

    def params_version(self) -> int:
        return self.live.version() if self.live is not None else 0

    def stop_analysis(self) -> None:
        """Ask the supervisor for a graceful drain (as SIGTERM does)."""
        self.stop_requested = True
        os.kill(self.supervisor_pid, signal.SIGTERM)


def _first(names: Sequence[str], suffix: str) -> str:
    return next((n for n in names if n.endswith(suffix)), "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _message_id(value: Any, what: str = "message id", low: int = 1) -> int:
    try:
        as_float = float(value)
        n = int(as_float)
    except (TypeError, ValueError):
        raise FeedError(f"{what} must be an integer, got {value!r}") from None
    if n != as_float or n < low:
        raise FeedError(f"{what} must be an integer >= {low}, got {value!r}")
    return n
