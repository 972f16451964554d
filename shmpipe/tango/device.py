"""ShmpipeDevice: the pytango device serving one pipeline (synchronous green mode).

Values are read fresh from the ``DeviceFeed`` on every client read; a pusher thread samples
them ``event_hz`` times a second and pushes change events for those that changed (archive
events too for scalars), so clients can subscribe instead of polling.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import tango
from tango import AttrWriteType, DevState
from tango.server import Device, attribute, command

from shmpipe.tango.feed import DeviceFeed, FeedError

STATES = {
    "running": DevState.RUNNING,
    "draining": DevState.ON,
    "finished": DevState.OFF,
    "fault": DevState.FAULT,
}
MAX_PROFILE = 1 << 20
MAX_ROIS = 256
FEED: DeviceFeed | None = None  # set by the server process before the device starts
REDUCED: Any = None  # the reducers' attributes (shmpipe.tango.reduced), when the run has any


def _refuse(exc: FeedError, origin: str) -> None:
    tango.Except.throw_exception(f"shmpipe_{exc.reason}", str(exc), origin)


def _tango_type(dtype: str) -> Any:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return tango.CmdArgType.DevDouble
    if kind == "b":
        return tango.CmdArgType.DevBoolean
    return tango.CmdArgType.DevLong64


def _counter(name: str, doc: str) -> attribute:
    """A read-only int64 attribute: the pipeline's counter ``name`` (``DeviceFeed.counters``)."""
    return attribute(dtype="DevLong64", doc=doc, fget=lambda self: self.feed.counters()[name])


class ShmpipeDevice(Device):
    """One shmpipe pipeline: its progress, its per-frame results, its live ROIs."""

    def init_device(self) -> None:
        super().init_device()
        if FEED is None:
            raise RuntimeError("ShmpipeDevice runs inside a pipeline's Tango process only")
        self.feed = FEED
        self._rate = 0.0
        self._pushed: dict[str, Any] = {}
        self._profile_generation = -1
        self._stop = threading.Event()
        self._scalars = ["LastAnalyzedFrame", "FramesIn", "FramesOut", "Errors", "Backlog"]
        self._scalars += ["FrameRate", "HitRate", "ParamsVersion"]
        for name in [*self._scalars, "CurrentStream", "RoIs", "State", "Status"]:
            self.set_change_event(name, True, False)
        for name in self._scalars:
            self.set_archive_event(name, True, False)
        self.set_state(DevState.RUNNING)
        self._pusher = threading.Thread(target=self._push_loop, name="events", daemon=True)
        self._pusher.start()

    def initialize_dynamic_attributes(self) -> None:
        feed = FEED
        assert feed is not None
        for a in feed.per_frame:
            kind = _tango_type(a.spec.dtype)
            if a.spec.shape:
                attr = tango.SpectrumAttr(a.attribute, kind, AttrWriteType.READ, max(1, a.size))
            else:
                attr = tango.Attr(a.attribute, kind, AttrWriteType.READ)
            attr.set_default_properties(_props(a.spec.unit, a.spec.long_name or a.output))
            self.add_attribute(attr, self.read_output)
            self.set_change_event(a.attribute, True, False)
            if not a.spec.shape:
                self.set_archive_event(a.attribute, True, False)
        for name, output in (
            ("LatestProfile", feed.profile_output),
            ("LatestProfileAxis", feed.profile_axis),
        ):
            spec = feed.specs.get(output or "")
            attr = tango.SpectrumAttr(
                name, tango.CmdArgType.DevDouble, AttrWriteType.READ, MAX_PROFILE
            )
            attr.set_default_properties(
                _props(spec.unit if spec else "", (spec.long_name or output) if spec else "")
            )
            self.add_attribute(attr, self.read_profile)
            self.set_change_event(name, True, False)
        for r in REDUCED.attributes if REDUCED is not None else ():
            attr = tango.Attr(r.attribute, _tango_type(r.dtype), AttrWriteType.READ)
            attr.set_default_properties(_props(r.unit, r.label))
            self.add_attribute(attr, self.read_reduced)

    def delete_device(self) -> None:
        self._stop.set()
        super().delete_device()

    # -- state -------------------------------------------------------------------------
    def dev_state(self) -> DevState:
        state, _ = self.feed.state()
        self.set_state(STATES[state])
        return STATES[state]

    def dev_status(self) -> str:
        _, status = self.feed.state()
        self.set_status(status)
        return status

    # -- fixed attributes --------------------------------------------------------------
    @attribute(dtype="DevLong64", doc="Message id of the latest frame analysed and published")
    def LastAnalyzedFrame(self) -> int:
        return self.feed.last_frame()[0]

    @attribute(
        dtype="DevString",
        doc="The run's detector ([detector]) as JSON: module layout, pixel size and where it "
        "was declared; empty when the run declares none",
    )
    def Detector(self) -> str:
        return self.feed.detector()

    @attribute(dtype="DevString", doc="Stream of the latest frame analysed")
    def CurrentStream(self) -> str:
        return self.feed.last_frame()[1]

    FramesIn = _counter("FramesIn", "Messages taken from the source")
    FramesOut = _counter("FramesOut", "Results published")
    Errors = _counter("Errors", "Error records published")
    Backlog = _counter("Backlog", "Frames in flight (taken, not yet published)")

    @attribute(dtype="DevDouble", unit="frames/s", doc="Frames published per second")
    def FrameRate(self) -> float:
        return self._rate

    @attribute(dtype="DevDouble", doc="Fraction of hits among the latest frames")
    def HitRate(self) -> float:
        return self.feed.hit_rate()

    @attribute(dtype="DevLong64", doc="Version of the live parameters (0: as configured)")
    def ParamsVersion(self) -> int:
        return self.feed.params_version()

    RoIs = attribute(
        dtype=("DevLong64",),
        max_dim_x=4 * MAX_ROIS,
        access=AttrWriteType.READ_WRITE,
        doc="ROIs of the statistics, flat [y0, y1, x0, x1, ...] half-open pixel bounds of the "
        "stitched image (also when the statistics read the modules); written ROIs apply from "
        "the next frame a worker takes; [] removes every ROI",
    )

    def read_RoIs(self) -> list[int]:
        return self.feed.rois()

    def write_RoIs(self, value) -> None:
        try:
            self.feed.set_rois(value)
        except FeedError as exc:
            _refuse(exc, "RoIs")

    # -- dynamic attributes ------------------------------------------------------------
    def read_output(self, attr) -> None:
        name = attr.get_name()
        value = self.feed.latest_values().get(name)
        if value is None:
            attr.set_quality(tango.AttrQuality.ATTR_INVALID)  # no frame yet
            return
        attr.set_value(value.tolist() if value.ndim else value.item())

    def read_attr_hardware(self, attr_list) -> None:
        if REDUCED is not None:
            REDUCED.refresh()  # once per request: its attributes come from the same windows

    def read_reduced(self, attr) -> None:
        value = REDUCED.values().get(attr.get_name()) if REDUCED is not None else None
        if value is None:
            attr.set_quality(tango.AttrQuality.ATTR_INVALID)  # no window written yet
            return
        attr.set_value(value)

    def read_profile(self, attr) -> None:
        y, x = self.feed.profile()
        attr.set_value(y if attr.get_name() == "LatestProfile" else x)

    # -- commands ----------------------------------------------------------------------
    @command(
        dtype_in=("DevString",),
        doc_in="[output, message_id] or [output, message_id, stream]",
        dtype_out=("DevDouble",),
        doc_out="The output's value for that frame (a scalar as one element)",
    )
    def GetValueForFrame(self, args) -> np.ndarray:
        if len(args) not in (2, 3):
            _refuse(
                FeedError(f"give [output, message_id] or [output, message_id, stream], got {args}"),
                "GetValueForFrame",
            )
        try:
            value = self.feed.value_for_frame(args[0], args[1], args[2] if len(args) > 2 else "")
        except FeedError as exc:
            _refuse(exc, "GetValueForFrame")
        return np.ravel(value).astype(np.float64)

    @command(
        dtype_in=("DevLong64",),
        doc_in="[roi index (0-based), message_id]",
        dtype_out="DevDouble",
        doc_out="The ROI's sum for that frame",
    )
    def GetRoiForFrame(self, args) -> float:
        if len(args) != 2:
            _refuse(FeedError(f"give [roi index, message_id], got {list(args)}"), "GetRoiForFrame")
        try:
            return self.feed.roi_for_frame(args[0], args[1])
        except FeedError as exc:
            _refuse(exc, "GetRoiForFrame")

    @command(dtype_in="DevLong64", doc_in="message_id", dtype_out="DevDouble")
    def GetMaxForFrame(self, message_id: int) -> float:
        try:
            return self.feed.max_for_frame(message_id)
        except FeedError as exc:
            _refuse(exc, "GetMaxForFrame")

    @command(doc_in="Accepted for compatibility: the analysis runs from the pipeline's start")
    def StartAnalysis(self) -> None:
        pass

    @command(doc_in="Stop taking frames and finish those in flight (as SIGTERM to the pipeline)")
    def StopAnalysis(self) -> None:
        self.feed.stop_analysis()

    # -- events ------------------------------------------------------------------------
    def _push_loop(self) -> None:
        period = 1.0 / self.feed.settings.event_hz
        with tango.EnsureOmniThread():
            while not self._stop.wait(period):
                try:
                    self._push_changes()
                except Exception as exc:  # noqa: BLE001 - a pusher must outlive a bad sample
                    self.debug_stream(f"event push failed: {exc}")

    def _sample(self) -> dict[str, Any]:
        feed = self.feed
        self._rate = feed.frame_rate()
        mid, stream = feed.last_frame()
        values: dict[str, Any] = {
            **feed.counters(),
            "LastAnalyzedFrame": mid,
            "CurrentStream": stream,
            "FrameRate": round(self._rate, 3),
            "HitRate": feed.hit_rate(),
            "ParamsVersion": feed.params_version(),
        }
        for name, v in feed.latest_values().items():
            values[name] = v.tolist() if v.ndim else v.item()
        if (
            feed.profile_output
            and "LatestProfile" not in self._pushed
            or mid != self._pushed.get("LastAnalyzedFrame")
        ):
            y, x = feed.profile()
            if len(y):
                values["LatestProfile"], values["LatestProfileAxis"] = y, x
        return values

    def _push_changes(self) -> None:
        values = self._sample()
        state, status = self.feed.state()
        if state != self._pushed.get("_state"):
            self._pushed["_state"] = state
            self.set_state(STATES[state])
            self.set_status(status)
            self.push_change_event("State")
        archived = set(self._scalars) | {a.attribute for a in self.feed.per_frame if not a.size > 1}
        for name, value in values.items():
            old = self._pushed.get(name)
            if old is not None and _same(old, value):
                continue
            self._pushed[name] = value
            self.push_change_event(name, value)
            if name in archived and not isinstance(value, list):
                self.push_archive_event(name, value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN == NaN for "unchanged"
    return a == b


def _props(unit: str, label: str) -> tango.UserDefaultAttrProp:
    p = tango.UserDefaultAttrProp()
    if unit:
        p.set_unit(unit)
    if label:
        p.set_label(label)
    return p
