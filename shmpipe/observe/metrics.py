"""Prometheus metrics, served by a ``metrics`` process that reads the shared tables on each scrape.

Why a process of its own: the supervisor forks workers at any time (a replacement for one that
died), and forking a process that runs threads can copy a lock held by another thread into the
child forever; an HTTP server is a thread. So the supervisor binds the port (a clear start-up
error if it is taken), forks this process before any worker, and closes its copy of the socket.
The process maps the same memory as everyone else and answers each scrape by reading the slot
table, the process table, the timing histograms and the stream table (``shmpipe.streams``): the
hot paths pay nothing beyond the counters they already keep, and a scrape never waits on them.

With ``[metrics] port = 0`` (the default) there is no process and no port.

Metrics (all prefixed ``shmpipe_``; see docs/observability.md for the table)::

    frames_in_total, frames_out_total, frames_error_total, bytes_in_total     run totals
    stream_frames_in_total{stream}, stream_frames_out_total{stream},
    stream_frames_error_total{stream}, stream_bytes_in_total{stream}          per stream
    ring_slots{state}, ring_capacity_slots                                    occupancy
    process_busy_ratio{process}, process_busy_seconds_total{process},
    process_frames_total{process}, process_up{process}                        per process
    worker_restarts_total{process}                                            per worker seat
    process_restarts_total{process}                        every role, dispatcher and publisher too
    stalled_seconds                                   nothing published with frames in flight
    kernel_seconds{kernel} (histogram), latency_seconds (histogram)
    process_cpu_seconds_total{process}, process_cpu_percent{process},
    process_resident_memory_bytes{process}                                    psutil
    info{run, chain}
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator

import numpy as np
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from shmpipe.api.sideprocess import SideProcess
from shmpipe.child.plumbing import Plumbing
from shmpipe.child.roles import start_role
from shmpipe.config import MetricsSection
from shmpipe.observe.metrics_http import MetricsHTTPServer
from shmpipe.observe.snapshot import RunTotals, stalled_seconds
from shmpipe.observe.status import ProcessSampler
from shmpipe.shm.layout import (
    KERNEL_BUCKETS_S,
    LATENCY_BUCKETS_S,
    P_BUSY_NS,
    P_FRAMES,
    P_PID,
    P_RESTARTS,
    P_STARTED_NS,
    P_STATE,
    PROC_FIRST_WORKER,
    PS_DEAD,
    PS_EXITED,
    STATE,
    STATE_NAMES,
)
from shmpipe.shm.ring import (
    SlotRing,
)

log = logging.getLogger("shmpipe.metrics")


class MetricsPortError(OSError):
    """The configured metrics port cannot be bound."""


def open_metrics_socket(section: MetricsSection) -> socket.socket | None:
    """Bind and listen on ``[metrics] host:port``; None when metrics are off (port 0).

    Binding happens in the supervisor, before any fork, so that a port in use is a start-up
    error (exit code 2) rather than a silently missing endpoint.
    """
    if section.port <= 0:
        return None
    family = socket.AF_INET6 if ":" in section.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((section.host, section.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise MetricsPortError(
            f"cannot serve metrics on {section.host}:{section.port}: {exc.strerror}; "
            "choose another [metrics] port, or 0 to turn metrics off"
        ) from exc
    sock.set_inheritable(False)
    return sock


def process_label(i: int) -> str:
    """Label value of row ``i`` of the process table: dispatcher, publisher, worker<N>."""
    return ("dispatcher", "publisher")[i] if i < PROC_FIRST_WORKER else f"worker{i - 2}"


def _histogram_buckets(counts: np.ndarray, edges: tuple[float, ...]) -> list[tuple[str, float]]:
    """Prometheus cumulative buckets from per-bucket counts (the last one is above all edges)."""
    cum = np.cumsum(counts)
    out = [(repr(float(e)), float(c)) for e, c in zip(edges, cum[:-1], strict=True)]
    out.append(("+Inf", float(cum[-1])))
    return out


# The families labelled by process, each (type, name after "shmpipe_", help), in the order a
# scrape lists them.
_ACTIVITY_FAMILIES = (
    (
        GaugeMetricFamily,
        "process_busy_ratio",
        "Share of the process's life spent on frames (since it started).",
    ),
    (
        CounterMetricFamily,
        "process_busy_seconds",
        "Seconds spent on frames (rate() of it is the recent busy fraction).",
    ),
    (CounterMetricFamily, "process_frames", "Frames handled by the process."),
    (GaugeMetricFamily, "process_up", "1 while the process is alive."),
    (CounterMetricFamily, "worker_restarts", "Workers of this seat that died and were replaced."),
    (
        CounterMetricFamily,
        "process_restarts",
        "Processes in this role (dispatcher, publisher, worker seat) that died and were replaced.",
    ),
)
_RESOURCE_FAMILIES = (
    (CounterMetricFamily, "process_cpu_seconds", "CPU time (user + system)."),
    (
        GaugeMetricFamily,
        "process_cpu_percent",
        "CPU use since the previous scrape (100 = one core).",
    ),
    (
        GaugeMetricFamily,
        "process_resident_memory_bytes",
        "Resident memory (shared ring pages count in each process that touched them).",
    ),
)


def _per_process(specs: tuple[tuple[type[Metric], str, str], ...]) -> list[Metric]:
    """Empty families labelled by ``process``, one per spec, in the specs' order."""
    return [family(f"shmpipe_{name}", doc, labels=["process"]) for family, name, doc in specs]


class PipelineCollector:
    """A prometheus_client collector that reads a pipeline's shared tables on every scrape.

    Parameters
    ----------
    ring : SlotRing
        The run's shared memory (the metrics process inherits it from the supervisor).
    run_name : str
        ``run.name``, for the ``info`` metric.
    kernels : list of (name, kind)
        The kernel chain in order (rows of the kernel histograms).
    supervisor_pid : int
        The supervisor, whose CPU and memory are reported too.
    """

    def __init__(
        self,
        ring: SlotRing,
        run_name: str,
        kernels: list[tuple[str, str]],
        supervisor_pid: int,
    ) -> None:
        self.ring = ring
        self.run_name = run_name
        self.kernels = kernels
        self.supervisor_pid = supervisor_pid
        self.sampler = ProcessSampler()

    def describe(self) -> list[Metric]:
        # Returning nothing tells the registry not to call collect() at registration.
        return []

    def collect(self) -> Iterator[Metric]:
        ring = self.ring
        procs = ring.procs.copy()  # one snapshot, so totals and per-process figures agree
        table_states = ring.table[:, STATE].copy()
        now = time.monotonic_ns()

        info = GaugeMetricFamily(
            "shmpipe_info", "The run and its kernel chain (always 1).", labels=["run", "chain"]
        )
        info.add_metric([self.run_name, " -> ".join(n for n, _ in self.kernels)], 1.0)
        yield info

        # -- run totals (from the process table; never roll over) ----------------------
        snap = RunTotals.read(procs, self.ring.table)
        for name, doc, value in (
            ("frames_in", "Messages taken from the source.", snap.frames_in),
            ("bytes_in", "Payload bytes taken from the source.", snap.bytes_in),
            ("frames_out", "Results published to the sinks.", snap.frames_out),
            (
                "frames_error",
                "Error records published (kernel errors, quarantined frames).",
                snap.errors,
            ),
        ):
            yield CounterMetricFamily(f"shmpipe_{name}", doc, value=float(value))

        # -- per stream ----------------------------------------------------------------
        streams = ring.streams.read()
        families = {
            "frames_in": CounterMetricFamily(
                "shmpipe_stream_frames_in", "Messages taken, per stream.", labels=["stream"]
            ),
            "bytes_in": CounterMetricFamily(
                "shmpipe_stream_bytes_in", "Payload bytes taken, per stream.", labels=["stream"]
            ),
            "frames_out": CounterMetricFamily(
                "shmpipe_stream_frames_out", "Results published, per stream.", labels=["stream"]
            ),
            "errors": CounterMetricFamily(
                "shmpipe_stream_frames_error",
                "Error records published, per stream.",
                labels=["stream"],
            ),
        }
        for s in streams:
            for key, fam in families.items():
                fam.add_metric([s.stream], float(getattr(s, key)))
        yield from families.values()

        # -- ring occupancy --------------------------------------------------------------
        counts = np.bincount(table_states, minlength=len(STATE_NAMES))
        slots = GaugeMetricFamily(
            "shmpipe_ring_slots", "Slots of the ring in each state.", labels=["state"]
        )
        for i, n in enumerate(counts[: len(STATE_NAMES)]):
            slots.add_metric([STATE_NAMES[i]], float(n))
        yield slots
        yield GaugeMetricFamily(
            "shmpipe_ring_capacity_slots", "Slots in the ring.", value=float(len(table_states))
        )

        # -- per process: frames, busy, up, restarts -----------------------------------
        busy_ratio, busy_s, frames, up, restarts, replaced = _per_process(_ACTIVITY_FAMILIES)
        for i, row in enumerate(procs):
            label = process_label(i)
            replaced.add_metric([label], float(row[P_RESTARTS]))
            started = int(row[P_STARTED_NS])
            alive = max(1, now - started) if started else 0
            if alive:
                busy_ratio.add_metric([label], min(1.0, int(row[P_BUSY_NS]) / alive))
            busy_s.add_metric([label], int(row[P_BUSY_NS]) / 1e9)
            frames.add_metric([label], float(row[P_FRAMES]))
            up.add_metric(
                [label], 0.0 if int(row[P_STATE]) in (PS_DEAD, PS_EXITED) or not row[P_PID] else 1.0
            )
            if i >= PROC_FIRST_WORKER:
                restarts.add_metric([label], float(row[P_RESTARTS]))
        yield from (busy_ratio, busy_s, frames, up, restarts, replaced)
        yield GaugeMetricFamily(
            "shmpipe_stalled_seconds",
            "How long nothing has been published with frames in flight (0: not stalled).",
            value=stalled_seconds(procs),
        )

        # -- histograms ------------------------------------------------------------------
        t = ring.timings
        kernel = HistogramMetricFamily(
            "shmpipe_kernel_seconds", "Run time of one kernel on one frame.", labels=["kernel"]
        )
        hist = t.kernel_hist.sum(axis=0)
        ns = t.kernel_ns.sum(axis=0)
        for k, (name, _kind) in enumerate(self.kernels):
            kernel.add_metric(
                [name], _histogram_buckets(hist[k], KERNEL_BUCKETS_S), sum_value=ns[k] / 1e9
            )
        yield kernel
        latency = HistogramMetricFamily(
            "shmpipe_latency_seconds",
            "From a message entering its slot to its result being handed to the sinks.",
        )
        latency.add_metric(
            [],
            _histogram_buckets(t.latency_hist.copy(), LATENCY_BUCKETS_S),
            sum_value=int(t.latency_ns[0]) / 1e9,
        )
        yield latency

        # -- CPU and memory (psutil) ---------------------------------------------------
        cpu_s, cpu_pct, rss = _per_process(_RESOURCE_FAMILIES)
        pids = [("supervisor", self.supervisor_pid), ("metrics", os.getpid())]
        pids += [(process_label(i), int(row[P_PID])) for i, row in enumerate(procs)]
        for label, pid in pids:
            c, r, s = self.sampler.sample(pid)
            if c is None:
                continue
            cpu_pct.add_metric([label], c)
            rss.add_metric([label], float(r))
            cpu_s.add_metric([label], s)
        self.sampler.forget_others({pid for _, pid in pids})
        yield from (cpu_s, cpu_pct, rss)


def build_registry(collector: PipelineCollector) -> CollectorRegistry:
    """A registry holding only our collector (no default process/GC metrics of this process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def metrics_main(p: Plumbing, sock: socket.socket, supervisor_pid: int) -> None:
    """Body of the metrics process: serve ``/metrics`` on the socket bound by the supervisor
    (threaded, with timeouts and a connection cap: :mod:`shmpipe.observe.metrics_http`)."""
    start_role(p, -1, "metrics", "metrics")
    # The supervisor stops this process with SIGTERM at the end of the run; it holds no state.
    # In a process group of its own, a signal to the run's group (Ctrl-C on a terminal,
    # `timeout`) does not kill it while the others drain; it dies with the supervisor anyway.
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    collector = PipelineCollector(
        p.ring,
        p.config.run.name,
        [(k.name, k.kind) for k in p.config.kernels],
        supervisor_pid,
    )
    server = MetricsHTTPServer(sock, build_registry(collector))
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()


SIDE_PROCESS = SideProcess(
    name="metrics",
    enabled=lambda config: config.metrics.port > 0,
    target=metrics_main,
    prepare=lambda config: open_metrics_socket(config.metrics),
)
