"""JSON-lines logging with the node id, and session/message ids where known."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

session_id_var: ContextVar[str | None] = ContextVar("session_id", default=None)
message_id_var: ContextVar[str | None] = ContextVar("message_id", default=None)

_EXTRA_FIELDS = ("session_id", "message_id", "user_id", "worker", "event", "detail")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, node_id, msg and context ids."""

    def __init__(self, node_id: str, service: str) -> None:
        super().__init__()
        self._node_id = node_id
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self._service,
            "node_id": self._node_id,
            "msg": record.getMessage(),
        }
        sid, mid = session_id_var.get(), message_id_var.get()
        if sid:
            line["session_id"] = sid
        if mid:
            line["message_id"] = mid
        for name in _EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(node_id: str, service: str, level: str = "INFO") -> None:
    """Route the root logger (and uvicorn's) to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(node_id, service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # One line per HTTP request is noise next to the chat events.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # httpx logs every request at INFO: a line per generate call (an answer) on the
    # gateway, and per provider call on the worker.
    logging.getLogger("httpx").setLevel(logging.WARNING)
