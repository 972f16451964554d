"""Worker: claims slots from its own inbox and runs the kernel chain on them in place.

Each worker seat has its own inbox pipe, so a worker SIGKILLed while waiting, computing or
handing over a result wedges nobody: the supervisor finds the slots the seat owned in the slot
table and hands them to other seats with a new ticket; records left in the dead seat's inbox
carry old tickets and are ignored by its replacement.
"""

from __future__ import annotations

import os
import sys
import traceback

from shmpipe.child.plumbing import Plumbing, now_ns
from shmpipe.child.roles import fail, start_role
from shmpipe.engine.chain import KernelChain
from shmpipe.engine.protocol import claim, finish, record_error
from shmpipe.shm.channel import ASSIGN, READY, STOP
from shmpipe.shm.layout import (
    HEADER_LEN,
    P_BUSY_NS,
    P_BYTES,
    P_ERRORS,
    P_FRAMES,
    P_KERNEL,
    P_MSG_ID,
    P_PID,
    P_READY_NS,
    P_STATE,
    PARAMS_VERSION,
    PAYLOAD_LEN,
    PROC_FIRST_WORKER,
    PS_BUSY,
    PS_IDLE,
    PS_STARTING,
)
from shmpipe.shm.params import ParamsFollower
from shmpipe.shm.slotio import decode_header

HOLD_DONE_NS = 500_000


def worker_main(p: Plumbing, seat: int) -> None:
    ring, me = p.ring, PROC_FIRST_WORKER + seat
    ring.procs[me, P_STATE] = PS_STARTING
    log = start_role(p, me, f"worker {seat}", f"worker{seat}")
    procs = ring.procs[me]
    threads = max(1, p.config.run.kernel_threads)
    # OpenMP runtimes read this when they load, which for a kernel's libraries (bitshuffle's
    # LZ4 decoder) happens later in this process. Left unset, every worker starts one OpenMP
    # thread per core, and N workers x cores threads meeting at OpenMP barriers on shared
    # cores made decompression 7-15x slower (2 cores: 84-205 ms a LAMBDA frame, not 12 ms).
    os.environ["OMP_NUM_THREADS"] = str(threads)
    numba = sys.modules.get("numba")
    if numba is not None:
        if threads > 1:
            # Only then: set_num_threads launches Numba's thread pool in this process.
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    else:
        # Not imported by the supervisor (no Numba kernel in the chain): importing it here
        # would cost every worker 0.3-0.9 s of start-up; a later import reads this instead.
        os.environ["NUMBA_NUM_THREADS"] = str(threads)
    chain = KernelChain(p.config.kernel_instances())
    try:
        layout = chain.setup(p.parts, p.cache_dir, p.config.run.kernel_threads, seat)
    except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which stops the run
        fail(p, me, f"worker {seat}: {exc}")
    if not layout.same_as(p.layout):
        fail(p, me, f"worker {seat}: kernels declared different outputs than at warm-up")
    params = ParamsFollower(p.live, chain.kernels)
    procs[P_READY_NS] = now_ns()
    procs[P_STATE] = PS_IDLE
    views: dict[int, list] = {}
    headers = ring.headers()
    part_views: dict[tuple, list] = {}
    inbox, done, table = p.seats[seat], p.done, ring.table
    pid = int(procs[P_PID])
    running = procs[P_KERNEL : P_KERNEL + 1]  # where the supervisor reads the kernel running
    # READY records of a batch of small messages go to the publisher in one write, when the
    # batch ends or, checked after each frame, once the oldest is HOLD_DONE_NS old (a frame
    # that took that long itself goes out at once). A worker killed while holding some loses
    # nothing: the slots are DONE in the table, and the supervisor's recovery sends their
    # READY records again.
    finished: list[tuple[int, int, int, int]] = []
    finished_since = 0
    while True:
        if finished:
            done.send_many(finished)
            finished = []
        for kind, slot, ticket, _ in inbox.recv(timeout=None).tolist():
            if kind == STOP:
                if finished:
                    done.send_many(finished)
                return
            if kind != ASSIGN:
                continue
            row = table[slot]
            t0 = now_ns()
            if not claim(row, seat, ticket, pid, t0):
                continue  # a record from before a recovery: the slot went elsewhere
            procs[P_STATE] = PS_BUSY
            header = decode_header(headers[slot], int(row[HEADER_LEN]))
            procs[P_MSG_ID] = header.message_id
            # Views on a slot's parts, made once per slot and layout (a new ndarray per part
            # per message was a tenth of a small message's time here); a fresh list each time,
            # so a kernel that edits frame.parts edits only its own frame.
            layout = header.parts
            parts = part_views.get((slot, layout))
            if parts is None:
                parts = [ring.part_view(slot, off, dt, tuple(shape)) for off, dt, shape in layout]
                for view in parts:
                    view.flags.writeable = False  # the input of every kernel of the chain
                if len(part_views) < 4 * len(headers):
                    part_views[(slot, layout)] = parts
            parts = list(parts)
            if slot not in views:
                views[slot] = chain.output_views(
                    lambda off, dt, shape, s=slot: ring.result(s, off, dt, shape)
                )
            fields = {
                "stream": header.stream,
                "message_id": header.message_id,
                "name": header.name,
                "meta": header.meta,
                "scan": header.scan,
                "parts": parts,
            }
            try:
                params.poll()  # live parameters: one integer read unless they changed
                row[PARAMS_VERSION] = params.applied
                chain.run(fields, views[slot], running, ring.timings, me)
            except Exception as exc:  # noqa: BLE001 - becomes the frame's error record
                kernel = chain.current or "?"
                record_error(
                    ring, slot, kernel, f"{type(exc).__name__}: {exc}", traceback.format_exc()
                )
                procs[P_ERRORS] += 1
                log.warning(
                    "kernel %s failed: %s: %s",
                    kernel,
                    type(exc).__name__,
                    exc,
                    extra={"stream": header.stream, "message_id": header.message_id},
                )
            t1 = now_ns()
            finish(row, t1)
            if not finished:
                finished_since = t0
            finished.append((READY, slot, ticket, 0))
            if t1 - finished_since >= HOLD_DONE_NS:
                done.send_many(finished)
                finished = []
            procs[P_FRAMES] += 1
            procs[P_BYTES] += int(row[PAYLOAD_LEN])
            procs[P_BUSY_NS] += t1 - t0
            procs[P_KERNEL] = 0
            procs[P_STATE] = PS_IDLE
