"""The start and the exit of every process the supervisor forks: one helper for all roles.

A role is "dispatcher", "publisher", "worker 3" or a side process such as "metrics". Each
shows in ``ps``, ``top`` and ``htop`` as ``shmpipe: <role> [<run name>]``, so an operator can
tell the dispatcher from worker 3; each records its pid and start time in its row of the
process table, dies with the supervisor, and leaves Ctrl-C and SIGTERM to the supervisor.
A role that stops the run on purpose leaves its reason in the process table for the
supervisor's message and exits with a status of ``shmpipe.child.exits``.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable
from typing import NoReturn

from setproctitle import getproctitle, setproctitle

from shmpipe.child.exits import CHILD_FAILED, CHILD_REFUSED
from shmpipe.child.plumbing import Plumbing, become_child, now_ns
from shmpipe.shm.layout import P_PID, P_STARTED_NS

__all__ = ["fail", "getproctitle", "process_title", "run_role", "set_process_title",
           "setproctitle", "start_role"]  # fmt: skip


def process_title(role: str, run_name: str) -> str:
    """The title ``role`` shows in ``ps``: ``shmpipe: worker 3 [run-42]``."""
    return f"shmpipe: {role} [{run_name}]"


def set_process_title(role: str, run_name: str) -> None:
    setproctitle(process_title(role, run_name))


def start_role(p: Plumbing, proc: int, role: str, logger: str) -> logging.Logger:
    """The common start of a child: title, parent-death signal, signals, its process row."""
    log = become_child(logger)
    set_process_title(role, p.config.run.name)
    if proc >= 0:
        row = p.ring.procs[proc]
        row[P_PID] = os.getpid()
        row[P_STARTED_NS] = now_ns()
    return log


def fail(p: Plumbing, proc: int, reason: str, code: int = CHILD_FAILED) -> NoReturn:
    """Leave ``reason`` for the supervisor and exit at once (no cleanup of inherited state)."""
    p.ring.set_exit_reason(proc, reason)
    os._exit(code)


def run_role(
    p: Plumbing,
    proc: int,
    role: str,
    logger: str,
    body: Callable[[logging.Logger], None],
    config_errors: tuple[type[BaseException], ...] = (),
    fatal_errors: tuple[type[BaseException], ...] = (),
) -> None:
    """Start the role, run ``body(log)``, and turn its exceptions into an exit the supervisor
    understands: ``config_errors`` exit with CHILD_REFUSED (a configuration the source
    refused), ``fatal_errors`` with CHILD_FAILED and their message, anything else with
    CHILD_FAILED and a traceback. A normal return exits normally."""
    log = start_role(p, proc, role, logger)
    try:
        body(log)
    except config_errors as exc:
        log.error("source: %s", exc)
        fail(p, proc, f"source: {exc}", CHILD_REFUSED)
    except fatal_errors as exc:
        fail(p, proc, str(exc))
    except Exception as exc:  # noqa: BLE001 - the supervisor stops the run with this reason
        log.error("%s failed: %s", role, exc)
        fail(p, proc, f"{role}: {type(exc).__name__}: {exc}\n" + traceback.format_exc())
