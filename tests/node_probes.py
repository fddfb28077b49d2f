"""Reading a running node from outside: its memory and its Prometheus metrics."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


def metric(base_url: str, name: str) -> float:
    """The sum of every sample of `name` on a node's /metrics."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            total += float(match.group(1))
    return total


async def generating_worker(redis_url: str, message_id: str) -> str:
    """The node id of the worker holding the message's lease (the token is `node:random`)."""
    from redis.asyncio import Redis

    from services.common.keys import Keys

    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        lease = await redis.get(Keys().message_lease(message_id))
    finally:
        await redis.aclose()
    assert lease, f"no worker holds the lease of {message_id}"
    return str(lease).split(":")[0]
