"""The timestamps the services write: one helper each, so every record agrees."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_iso() -> str:
    """UTC wall-clock time as ISO 8601 with milliseconds (`…T12:00:00.123+00:00`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (stream entries' write time)."""
    return int(time.time() * 1000)
