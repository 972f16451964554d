"""Log set-up: plain lines, or JSON objects for log shippers; frame lines carry stream and id.

A log call about one frame passes ``extra={"stream": ..., "message_id": ...}`` (or
``extra=frame_extra(ring, slot)`` where only the slot is at hand); the text format shows it as
``[stream#id]`` and the JSON format as the fields ``stream`` and ``message_id``, so a log
shipper can join log lines with sink records and ASAPO messages.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def _readable_role(logger: str) -> str:
    """``worker 3`` for the logger ``worker3``, as ``shmpipe status`` names the role.

    The JSON field ``process`` keeps the logger's form: it is the ``process`` label value of
    the metrics, so log lines and series join on it.
    """
    index = logger.removeprefix("worker")
    return f"worker {index}" if index != logger and index.isdigit() else logger


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        where = ""
        if hasattr(record, "stream"):
            where = f" [{record.stream}#{record.message_id}]"
        role = _readable_role(record.name.removeprefix("shmpipe."))
        line = f"{t} {record.levelname.lower():7s} {role}{where}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": record.created,
            "level": record.levelname.lower(),
            "process": record.name.removeprefix("shmpipe."),
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key in ("stream", "message_id"):
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(fmt: str = "text", level: str = "info") -> None:
    root = logging.getLogger("shmpipe")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    # The native kernels' own log (the integration engine chosen on this CPU) in the run's log.
    lib = logging.getLogger("native_kernels")
    lib.handlers[:] = [handler]
    lib.setLevel(level.upper())
    lib.propagate = False


def frame_extra(ring: Any, slot: int) -> dict[str, Any]:
    """``extra`` for a log call about the frame in ``slot``: its stream and message id.

    Reads the slot's header (written by the dispatcher); used off the hot path only (recovery,
    quarantine, watchdog), where a header decode per line costs nothing that matters.
    """
    from shmpipe.shm.layout import (
        HEADER_LEN,
        MSG_ID,
    )
    from shmpipe.shm.slotio import decode_header

    try:
        header = decode_header(ring.header(slot), int(ring.table[slot, HEADER_LEN]))
        return {"stream": str(header.stream), "message_id": int(header.message_id)}
    except (ValueError, KeyError, TypeError):
        return {"stream": "?", "message_id": int(ring.table[slot, MSG_ID])}
