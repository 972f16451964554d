"""Log set-up: plain lines, or JSON objects for log shippers; frame lines carry stream and id."""

from __future__ import annotations

import json
import logging
import sys
import time


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        where = ""
        if hasattr(record, "stream"):
            where = f" [{record.stream}#{record.message_id}]"
        role = record.name.removeprefix("shmpipe.")
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
