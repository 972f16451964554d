"""The sections of the configuration file that are shmpipe's own: ``[run]``, ``[ring]``,
``[metrics]``, ``[tango]``, ``[view]``.

Each is a dataclass whose fields and docstrings are the keys and their reference; its
``validate()`` refuses a value by raising ``ParamError`` naming the key, as a plug-in's
``Params.validate()`` does (``schema.build_dataclass`` turns it into a ``ConfigError`` naming
``section.key`` and the file). Checks that span sections are in ``schema``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from shmpipe.api.params import ParamError
from shmpipe.config.detector import DetectorSection


@dataclass
class RunSection:
    """How the pipeline runs."""

    name: str = ""
    """Run name, used by ``shmpipe status``; empty: ``run-<pid>``."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """What else to record about where the results came from, with the configuration in every
    output (``shmpipe serve`` records the recipe, the version and the overrides here)."""
    workers: int = 2
    """Worker processes (the parallelism; one per core is the usual choice)."""
    ordered: bool = True
    """Publish in message order (bounded reorder window) instead of completion order."""
    on_error: Literal["fail", "skip"] = "fail"
    """A kernel exception stops the run (fail) or becomes an error record (skip)."""
    max_attempts: int = 3
    """A frame that killed this many workers is quarantined as an error record."""
    watchdog: bool = True
    """Kill and replace a worker stuck on one frame (or stopped) for longer than the limit,
    and retry its frames; false: never."""
    watchdog_s: float = 0.0
    """A fixed limit on one frame; 0: adaptive, max(watchdog_floor_s, watchdog_factor x the
    chain's measured p99 time per frame)."""
    watchdog_floor_s: float = 10.0
    """The adaptive limit is never below this (start-up, first frames, no measurement yet)."""
    watchdog_factor: float = 20.0
    """The adaptive limit in multiples of the chain's p99 time per frame."""
    stall_s: float = 5.0
    """Log a stall (who holds which message) when nothing was published for this long, and
    never less than 5 x the chain's p99, with frames in flight; 0: never."""
    kernel_threads: int = 1
    """Numba threads each kernel may use inside one worker."""
    max_restarts: int = 100
    """Process restarts allowed in one run (workers, dispatcher and publisher together)
    before it stops with an error."""
    cache_dir: str = ""
    """Directory for kernel tables (CSR, LUT); empty: ~/.cache/shmpipe."""
    progress: Literal["auto", "on", "off"] = "auto"
    """Live progress line: on a terminal (auto), always, or never."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text or as JSON objects (for log shippers)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Least severe log level printed."""
    commit_every: int = 64
    """Commit sinks (then acknowledge) at least every this many records."""
    commit_interval_s: float = 0.5
    """... and at least this often while records arrive."""
    drain_timeout_s: float = 60.0
    """On Ctrl-C/SIGTERM, how long frames in flight may take to finish before a hard stop."""
    setup_timeout_s: float = 600.0
    """Longest the start-up checks and the kernels' set-up may take before the run refuses
    to start; 0: no limit."""
    reducer_state: str = "shmpipe_reducers.ckpt"
    """Checkpoint of the reducers' state and the message ids it includes (``{run}`` is
    replaced; two files, this one and ``.1``, written in turn before every acknowledgement);
    a run continues it when its sinks do (``mode = "resume"``), refuses it under ``"new"``,
    starts afresh under ``"overwrite"``. Written only when the run has ``[reducers.*]``."""

    def validate(self) -> None:
        for key in ("workers", "max_attempts"):
            if getattr(self, key) < 1:
                raise ParamError(key, "must be at least 1")
        for key in ("watchdog_s", "watchdog_floor_s", "watchdog_factor", "stall_s"):
            if getattr(self, key) < 0:
                raise ParamError(key, "must be 0 or more")


@dataclass
class RingSection:
    """The shared-memory rings."""

    slots: int = 0
    """Slots in each ring; 0: 2 x workers + 2, or more small slots (up to 256 within
    64 MiB) so that small messages travel in batches."""
    slot_bytes: int = 0
    """Payload bytes per input slot; 0: what the source declares."""
    header_bytes: int = 65536
    """Bytes per slot for the message's header: its metadata and part layout (pickled)."""


@dataclass
class MetricsSection:
    """Prometheus metrics."""

    port: int = 0
    """Serve metrics on this port; 0: off."""
    host: str = "127.0.0.1"
    """Address the metrics endpoint listens on."""


@dataclass
class TangoSection:
    """The Tango device (needs ``pip install 'shmpipe[tango]'``)."""

    device: str = ""
    """Serve a Tango device of this name (``domain/family/member``); empty: none."""
    nodb: bool = False
    """Run without a Tango database (clients use ``tango://host:port/<device>#dbase=no``)."""
    port: int = 0
    """TCP port of the device server; needed with nodb, 0 otherwise: any free port."""
    instance: str = "shmpipe"
    """Server instance name (the Tango database knows the device as ShmpipeDS/<instance>)."""
    event_hz: float = 10.0
    """Most change events per second per attribute."""
    roi_output: str = ""
    """The output GetRoiForFrame and RoIs refer to; empty: the first ``*.roi_sums``."""
    profile: str = ""
    """The output shown as LatestProfile; empty: the first 1-D output with an axis."""
    hit_output: str = ""
    """The output HitRate counts a frame a hit by; empty: the first ``*.count_above``."""
    hit_min: float = 1.0
    """A frame is a hit when its hit_output is at least this."""
    hit_window: int = 100
    """HitRate is the fraction of hits among this many latest frames."""

    def validate(self) -> None:
        if self.device and not re.fullmatch(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+){2}", self.device):
            raise ParamError(
                "device", f"must be a Tango device name domain/family/member, got {self.device!r}"
            )
        if not 0 <= self.port <= 65535:
            raise ParamError("port", f"must be a TCP port, got {self.port}")
        if self.device and self.nodb and not self.port:
            raise ParamError("port", "without a database (nodb) the device needs a port")
        if not self.event_hz > 0:
            raise ParamError("event_hz", f"must be more than 0, got {self.event_hz}")
        if self.hit_window < 1:
            raise ParamError("hit_window", f"must be at least 1, got {self.hit_window}")
        if self.device:
            try:
                import tango as pytango  # noqa: F401 - only whether it imports
            except ImportError as exc:
                raise ParamError(
                    "device",
                    f"a Tango device needs pytango, which is not installed ({exc}); "
                    "pip install 'shmpipe[tango]'",
                ) from None


@dataclass
class ViewSection:
    """The preview tap and the live web view."""

    port: int = 0
    """Serve the live web view on this port; 0: off (``shmpipe view RUN`` can still attach)."""
    host: str = "127.0.0.1"
    """Address the view listens on; the default admits this machine only."""
    max_hz: float = 10.0
    """Most copies per second of the full outputs and the raw frame into the preview tap; a
    copy of 1 MiB or more also waits until a reader has taken the last one (at most 1 s)."""
    history: int = 100000
    """Frames whose small outputs (scalars, short vectors) the preview tap keeps."""
    zmq: str = ""
    """Also publish the displayed image for lavue on this ZeroMQ address (``tcp://*:5555``)."""
    image: str = ""
    """Output shown as the image by default (and sent to lavue); empty: the first 2-D one."""
    tap: bool = True
    """Keep the preview tap (for views and the Tango device); false: none at all."""
    nice: int = 19
    """Niceness added to the view process started with the run (0..19): when the cores are
    busy it yields them to the workers and shows fewer images instead (lower: more images on
    busy cores, at some of the workers' throughput)."""
    geometry: str = ""
    """Detector geometry file. Deprecated: declare the run's [detector] instead (this key
    maps into it). The raw frame is assembled with the run's detector, else a built-in layout
    (LAMBDA 9M for its 12 modules)."""

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ParamError("port", f"must be a TCP port (0 for none), got {self.port}")
        if not self.max_hz > 0:
            raise ParamError("max_hz", f"must be more than 0, got {self.max_hz}")
        if self.history < 1:
            raise ParamError("history", f"must be at least 1, got {self.history}")
        if not 0 <= self.nice <= 19:
            raise ParamError("nice", f"must be 0..19, got {self.nice}")
        if self.zmq and not self.zmq.startswith(("tcp://", "ipc://", "inproc://")):
            raise ParamError(
                "zmq", f"must be a ZeroMQ address such as tcp://*:5555, got {self.zmq!r}"
            )
        if (self.port or self.zmq) and not self.tap:
            raise ParamError("tap", "a view needs the preview tap (view.tap = true)")
        if self.geometry:
            from native_kernels.geometry import load_geometry

            try:
                load_geometry(self.geometry)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                text = str(exc) if self.geometry in str(exc) else f"{self.geometry}: {exc}"
                raise ParamError("geometry", text) from None


SECTIONS: dict[str, type] = {
    "run": RunSection,
    "detector": DetectorSection,
    "ring": RingSection,
    "metrics": MetricsSection,
    "tango": TangoSection,
    "view": ViewSection,
}
PLUGIN_SECTIONS = ("source", "kernels", "reducers", "sinks")
DEFAULT_SOURCE = {"kind": "sim"}
DEFAULT_KERNELS = {"checksum": {"kind": "checksum"}}
DEFAULT_SINKS = [{"kind": "null"}]
