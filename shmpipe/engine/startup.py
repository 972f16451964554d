"""Start-up: the checks before anything is allocated, the ring's size, the memory and pipes.

Everything here runs in the supervisor before the first fork (the checks and kernel set-up in
a short-lived child of their own); a problem is a ``StartupError`` or a ``ConfigError``,
reported with exit code 2 before any worker runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import signal
import sys
import time
from pathlib import Path
from typing import Any

from shmpipe.api import provenance
from shmpipe.api.detector import RunDetector
from shmpipe.api.sink import RunInfo
from shmpipe.api.source import SourceConfigError, SourceLayout
from shmpipe.child.plumbing import Plumbing
from shmpipe.config import ConfigError, PipelineConfig, to_toml
from shmpipe.engine.chain import KernelChain, KernelSetupError
from shmpipe.reduce.setup import check_reducers, reducer_identity, reducer_infos
from shmpipe.shm.channel import RecordPipe
from shmpipe.shm.layout import PROC_FIRST_WORKER
from shmpipe.shm.params import LiveParams
from shmpipe.shm.resultlayout import ChainLayout
from shmpipe.shm.ring import RingGeometry, ShmCapacityError, SlotRing
from shmpipe.shm.tapwriter import TapWriter

log = logging.getLogger("shmpipe.supervisor")

SETUP_QUIET_S = 1.0  # a kernel set-up longer than this is announced (Numba compiling)

AUTO_RING_SLOTS = 256  # ring.slots = 0: at most this many slots ...
AUTO_RING_BYTES = 64 * 2**20  # ... and beyond 2 x workers + 2 only while they fit in this


class StartupError(RuntimeError):
    """The run cannot start; reported with exit code 2 before any worker runs."""


def run_info_for(config: PipelineConfig) -> RunInfo:
    """What the sinks record about this run, before the kernels' outputs are known."""
    effective = provenance.without_secrets(config.effective())
    shaping = provenance.result_shaping(effective)
    return RunInfo(
        run_name=config.run.name,
        config=effective,
        config_hash=config.digest(),
        chain=[k.name for k in config.kernels],
        config_toml=to_toml(effective),
        result_config=shaping,
        result_hash=provenance.result_hash(shaping),
        run_uid=provenance.run_uid(),
        started=time.time(),
        host=provenance.host(),
        version=provenance.version(),
        commit=provenance.git_commit(),
    )


def run_detector(config: PipelineConfig, src_layout: SourceLayout) -> RunDetector | None:
    """The run's detector: the configuration's (``[detector]``, or a deprecated kernel key),
    else the one the source declares (the simulated detector's layout), else none."""
    if config.detector is not None or src_layout.detector is None:
        return config.detector
    return RunDetector(src_layout.detector, f"the source ({config.source.kind})")


def preflight_main(conn, config: PipelineConfig, cache_dir: Path, run_info: RunInfo) -> None:
    """Check the source and sinks, probe the parts' layout, set up every kernel once.

    Runs in a short-lived child so that whatever these load (the ASAPO client's threads, a
    parallel Numba runtime) never lives in the supervisor, which must stay safe to fork.
    Sends back the source parameters (a generated consumer group, say), the source layout
    and the result-slot layout; setting the kernels up fills the Numba cache for the workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        source = config.source_instance()
        try:
            source.check()
            src_layout = source.layout()
        except (SourceConfigError, ValueError, OSError) as exc:
            conn.send(("error", f"source: {exc}"))
            return
        for sink in config.sink_instances():
            try:
                sink.check()
                sink.check_rerun(run_info)
            except (ValueError, OSError) as exc:
                conn.send(("error", str(exc)))
                return
        chain = KernelChain(config.kernel_instances())
        try:
            detector = run_detector(config, src_layout)
            layout = chain.setup(
                src_layout.parts, cache_dir, config.run.kernel_threads, -1, detector
            )
        except KernelSetupError as exc:
            conn.send(("error", f"kernel setup failed: {exc}"))
            return
        check_reducers(config, layout.specs(), run_info)
        uses_numba = "numba" in sys.modules
        _set_up_side_processes(config, layout, src_layout)
        conn.send(("ok", pickle.dumps((source.params, src_layout, layout, uses_numba))))
    except Exception as exc:  # noqa: BLE001 - sent back and reported as a start-up error
        conn.send(("error", f"{exc}"))
    finally:
        conn.close()


def _set_up_side_processes(config: PipelineConfig, layout: ChainLayout, src: SourceLayout) -> None:
    """``SideProcess.setup`` of each enabled one (the view's Numba kernels), before workers."""
    from shmpipe.engine.sideprocs import declared

    for side in declared():
        if side.setup is not None and side.enabled(config):
            try:
                side.setup(config, layout.specs(), src.parts)
            except Exception as exc:  # noqa: BLE001 - the side process sets up itself then
                log.warning("%s: setting up before the workers failed: %s", side.name, exc)


def _prepare_numba_for_forks(threads: int) -> None:
    """Initialise Numba's CPU target once here, so forked workers inherit it.

    Every process otherwise pays ~0.5 s initialising it before its first cached kernel loads.
    Initialising the target starts no thread and no OpenMP runtime, so the supervisor stays
    safe to fork (measured: worker start-up 0.65-1.0 s -> 0.21-0.31 s, docs/performance.md).
    """
    # Read when Numba is first imported: the workers' thread budget, not one per core.
    os.environ.setdefault("NUMBA_NUM_THREADS", str(max(1, threads)))
    try:
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()
    except Exception as exc:  # noqa: BLE001 - an optimisation: workers initialise it themselves
        log.debug("Numba's CPU target not initialised before forking: %s", exc)


def cache_dir_of(config: PipelineConfig) -> Path:
    """The kernels' table cache (``run.cache_dir``), created if missing."""
    d = Path(config.run.cache_dir or Path.home() / ".cache" / "shmpipe").expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


def preflight(
    ctx: Any, config: PipelineConfig, cache_dir: Path, run_info: RunInfo
) -> tuple[Any, SourceLayout, ChainLayout]:
    """Run the start-up checks and kernel set-up in a short-lived child; ``StartupError``."""
    t0 = time.perf_counter()
    ours, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=preflight_main, args=(theirs, config, cache_dir, run_info), name="preflight"
    )
    proc.start()
    theirs.close()
    limit = config.run.setup_timeout_s
    try:
        if not ours.poll(min(SETUP_QUIET_S, limit) if limit > 0 else SETUP_QUIET_S):
            log.info(
                "setting up the kernels (%s): the first run on a machine compiles their "
                "Numba code and builds their tables (10-20 s for the LAMBDA chain, once; "
                "later runs load both from the cache)",
                ", ".join(k.name for k in config.kernels),
            )
        if limit > 0 and not ours.poll(max(0.0, limit - SETUP_QUIET_S)):
            proc.kill()
            status, payload = (
                "error",
                f"the start-up checks and kernel set-up did not finish within "
                f"run.setup_timeout_s = {limit} s (a kernel's setup hung? a process that "
                "has used OpenMP, bitshuffle say, cannot fork safely: run shmpipe as a "
                "command rather than inside such a process)",
            )
        else:
            status, payload = ours.recv()
    except EOFError:
        status, payload = "error", f"the start-up checks died (exit code {proc.exitcode})"
    except BaseException:  # interrupted during start-up: the checks must not live on
        proc.kill()
        proc.join()
        ours.close()
        raise
    proc.join()
    ours.close()
    if status != "ok":
        raise StartupError(payload)
    source_params, src_layout, layout, uses_numba = pickle.loads(payload)
    if uses_numba:
        _prepare_numba_for_forks(config.run.kernel_threads)
    log.info(
        "kernels set up and compiled in %.2f s (%s)",
        time.perf_counter() - t0,
        ", ".join(
            f"{k.name} {t:.2f} s" for k, t in zip(config.kernels, layout.setup_seconds, strict=True)
        ),
    )
    return source_params, src_layout, layout


def ring_geometry(config: PipelineConfig, layout: SourceLayout, chain: ChainLayout) -> RingGeometry:
    """The ring's sizes: ``[ring]`` where set, else worked out from the slot size."""
    r = config.ring
    payload = r.slot_bytes or layout.max_payload_bytes
    if payload <= 0:
        raise ConfigError(
            "the source declares no payload size; set ring.slot_bytes",
            "ring.slot_bytes",
            config.path,
        )
    geometry = RingGeometry(
        slots=r.slots or 2 * config.run.workers + 2,
        header_bytes=r.header_bytes,
        payload_bytes=payload,
        result_bytes=chain.result_bytes,
        processes=PROC_FIRST_WORKER + config.run.workers,
    )
    if not r.slots:
        # Small slots: more of them, so that small messages travel in batches (one pipe
        # write per batch, not per message) with slots to spare; large frames keep the
        # 2 x workers + 2 that prefetching one frame per worker needs.
        per_slot = geometry.input_stride + geometry.result_stride
        more = min(AUTO_RING_SLOTS, AUTO_RING_BYTES // per_slot)
        if more > geometry.slots:
            geometry = dataclasses.replace(geometry, slots=more)
    return geometry


def run_identity(cfg: PipelineConfig, run_info: RunInfo) -> dict[str, Any]:
    """What the preview tap tells views and the Tango device about the run (JSON-able)."""
    identity = {
        "name": cfg.run.name,
        "pid": os.getpid(),
        "started": time.time(),
        "chain": run_info.chain,
        "config": cfg.path,
        "config_hash": run_info.config_hash,
        # The run's detector, which views and the Tango device place raw modules with.
        "detector": None if cfg.detector is None else cfg.detector.describe(),
    }
    if cfg.reducers:  # for a view attached later (shmpipe view RUN): shmpipe.reduce.live
        identity["reducers"] = reducer_identity(cfg)
    return identity


def _preview_tap(cfg: PipelineConfig, layout, src_layout, run_info: RunInfo, ring: SlotRing):
    """The preview tap that views and the Tango device read (none with view.tap = false)."""
    if not cfg.view.tap:
        return None
    try:
        return TapWriter.create(
            layout.specs(),
            src_layout.parts,
            run_identity(cfg, run_info),
            cfg.view.max_hz,
            cfg.view.history,
        )
    except (MemoryError, ValueError) as exc:
        ring.close()
        raise StartupError(f"preview tap: {exc}") from None


def prepare(ctx: Any, config: PipelineConfig) -> Plumbing:
    """Everything the supervisor creates before forking: checks, memory, pipes."""
    cfg = config
    cache_dir = cache_dir_of(cfg)
    run_info = run_info_for(cfg)
    source_params, src_layout, layout = preflight(ctx, cfg, cache_dir, run_info)
    cfg.source.params = source_params
    cfg.detector = run_detector(cfg, src_layout)  # the workers fork with it; the tap shows it
    source = cfg.source_instance()
    geometry = ring_geometry(cfg, src_layout, layout)
    try:
        ring = SlotRing(geometry)
    except ShmCapacityError as exc:
        raise StartupError(str(exc)) from exc
    log.info(
        "ring: %d slots x %.1f MiB input + %.1f MiB result (%.0f MiB shared memory)",
        geometry.slots,
        geometry.input_stride / 2**20,
        geometry.result_stride / 2**20,
        geometry.total_bytes / 2**20,
    )
    run_info = dataclasses.replace(
        run_info, outputs=layout.specs(), reducers=reducer_infos(cfg, layout.specs())
    )
    tap = _preview_tap(cfg, layout, src_layout, run_info, ring)
    try:
        live = LiveParams()  # kernel parameters changed during the run (the Tango device)
    except ShmCapacityError as exc:
        ring.close()
        if tap is not None:
            tap.close()
        raise StartupError(str(exc)) from exc
    return Plumbing(
        config=cfg,
        ring=ring,
        tap=tap,
        live=live,
        layout=layout,
        parts=src_layout.parts,
        seats=[RecordPipe() for _ in range(cfg.run.workers)],
        done=RecordPipe(),
        dispatcher_inbox=RecordPipe(),
        source=source,
        cache_dir=cache_dir,
        run_info=run_info,
    )
