"""The Tango side process: declared in ``SIDE_PROCESS``, run when ``[tango] device`` is set.

It only reads the run's shared memory (and writes the live-parameter block), so whatever
happens to it (an exception, SIGKILL) the pipeline goes on; the supervisor starts it again.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

from shmpipe.api.sideprocess import SideProcess
from shmpipe.child.exits import CHILD_FAILED
from shmpipe.child.plumbing import Plumbing
from shmpipe.child.roles import start_role
from shmpipe.config import TangoSection
from shmpipe.tango import tango_missing

SERVER = "ShmpipeDS"


def device_url(t: TangoSection, host: str | None = None) -> str:
    """How clients name the device: ``tango://host:port/dev#dbase=no`` without a database."""
    if t.nodb:
        return f"tango://{host or socket.gethostname()}:{t.port}/{t.device}#dbase=no"
    return t.device


def server_args(t: TangoSection) -> list[str]:
    """The device server's command line (as ``tango.server.run`` takes it)."""
    args = [SERVER, t.instance]
    if t.nodb:
        args += ["-nodb", "-dlist", t.device]
    if t.port:
        args += ["-port", str(t.port)]
    return args


def _register(t: TangoSection) -> None:
    """Put the device into the Tango database if it is not there (a database run)."""
    import tango

    db = tango.Database()
    server = f"{SERVER}/{t.instance}"
    if t.device.lower() in (d.lower() for d in db.get_device_name(server, "ShmpipeDevice")):
        return
    info = tango.DbDevInfo()
    info.name, info._class, info.server = t.device, "ShmpipeDevice", server
    db.add_device(info)


def tango_main(p: Plumbing, resource: Any, supervisor_pid: int) -> None:  # noqa: ARG001
    """Body of the Tango process: serve ``ShmpipeDevice`` until the supervisor stops it."""
    log = start_role(p, -1, "tango", "tango")
    # Its own process group: a Ctrl-C at the terminal (or a signal to the group) is the
    # supervisor's to handle; the Tango server would otherwise exit on it mid-drain, when the
    # device's "draining" state matters. It still dies with the supervisor (start_role).
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # holds no state: SIGTERM just ends it
    why = tango_missing()
    if why:
        log.error("no Tango device: %s", why)
        os._exit(CHILD_FAILED)
    from tango import GreenMode
    from tango.server import run

    from shmpipe.tango import device
    from shmpipe.tango.feed import DeviceFeed
    from shmpipe.tango.livekernels import set_up_live_kernels

    t = p.config.tango
    url = device_url(t)
    if t.nodb:  # taurus cannot parse "#dbase=no" (its bug); its own scheme works
        url += f", in taurus {url.replace('tango://', 'tango-nodb://').split('#')[0]}"
    log.info("Tango device: %s (pid %d)", url, os.getpid())
    try:
        device.FEED = DeviceFeed(
            p.ring,
            p.tap,
            p.live,
            # Set up as the workers' are: ROIs are checked against the image shape (with
            # module input, the geometry's) that only setup knows.
            set_up_live_kernels(
                p.config.kernel_instances(), p.layout.outputs, p.parts, p.cache_dir
            ),
            t,
            supervisor_pid,
            p.workers,
        )
        if p.config.reducers:
            from shmpipe.reduce.live import LiveReduced
            from shmpipe.tango.names import FIXED
            from shmpipe.tango.reduced import ReducedAttributes

            taken = {n.lower() for n in FIXED} | {
                a.attribute.lower() for a in device.FEED.per_frame
            }
            device.REDUCED = ReducedAttributes(LiveReduced(p.config, p.run_info.outputs), taken)
        if not t.nodb:
            _register(t)
    except Exception as exc:  # noqa: BLE001 - reported, then the process ends (and restarts)
        log.error("the Tango device cannot start: %s", exc)
        os._exit(CHILD_FAILED)
    sys.argv = server_args(t)
    run((device.ShmpipeDevice,), args=sys.argv, green_mode=GreenMode.Synchronous)


SIDE_PROCESS = SideProcess(
    name="tango",
    enabled=lambda config: bool(config.tango.device),
    target=tango_main,
)
