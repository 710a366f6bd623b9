"""Logging set-up: text by default, ``LOG_FORMAT=json`` for one JSON object per line.

A log shipper (Loki, CloudWatch, Datadog) wants fields, not prose: each JSON
line carries time, level, logger, message and — where known — the worker id,
task id, campaign id, stage and provider, taken from ``engine.logcontext``
(set by the worker around each handler and by the limiter for the provider).

The ``transitions`` library logs every state entry and exit at INFO (160 of
168 worker lines in a demo): it is kept at WARNING unless the level is DEBUG.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from engine import logcontext

#: The text format (stderr).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"
#: Loggers too chatty at INFO, kept at WARNING unless DEBUG.
CHATTY = ("transitions", "botocore", "boto3", "urllib3")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the task's context fields where known."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        doc.update(logcontext.current())
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class ContextFilter(logging.Filter):
    """Appends ``[task … campaign … stage …]`` to text lines that have a task context."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = logcontext.current()
        fields.pop("worker_id", None)
        record.context = (" [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]") if fields else ""
        return True


def setup(level: int, fmt: str) -> None:
    """Configure the root logger once per process (``force`` replaces an earlier set-up)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT + "%(context)s"))
        handler.addFilter(ContextFilter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
