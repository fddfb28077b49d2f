"""Scanning a test's Redis keys for the two storage rules of issue 7.

1. Every key expires, unless it is on the documented list `services.common.keys.NO_TTL`.
2. A session's owner record (`session:{sid}`) outlives every other key of the session
   (`session:{sid}:…`), so an id that becomes free again has nothing left to read.

Used by the integration workload (one test's key prefix) and the e2e check (the whole
cluster's Redis). SCAN, never KEYS; TTLs are read in pipelines.
"""

from __future__ import annotations

import re
from collections import defaultdict

from redis.asyncio import Redis

from services.common.keys import may_lack_ttl

#: PTTLs of keys set in one script can be read a few ms apart.
SLACK_MS = 250
_GLOB_SPECIAL = re.compile(r"([\[\]*?\\])")


def glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


async def scan(redis: Redis, prefix: str) -> list[str]:
    return [str(k) async for k in redis.scan_iter(match=f"{glob_escape(prefix)}*", count=1000)]


def kind(key: str, prefix: str) -> str:
    """The key's builder shape, ids replaced by `*`: `session:*:history`, `msg:*:meta`."""
    parts = key.removeprefix(prefix).split(":")
    if parts[0] == "sessions" and len(parts) >= 3:
        return "sessions:user:*"
    if parts[0] == "session" and len(parts) >= 4 and parts[2] == "cmsg":
        return "session:*:cmsg:*"
    return ":".join(["*" if i == 1 else p for i, p in enumerate(parts)])


async def keys_without_ttl(redis: Redis, prefix: str) -> list[str]:
    """Every key under `prefix` that has no TTL and is not on `NO_TTL`."""
    names = await scan(redis, prefix)
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.ttl(name)
        ttls = await pipe.execute()
    return sorted(
        name
        for name, ttl in zip(names, ttls, strict=True)
        if ttl == -1 and not may_lack_ttl(name, prefix)
    )


async def owners_outlived(redis: Redis, prefix: str) -> list[str]:
    """Session keys that would outlive their session's owner record (or that have none)."""
    by_session: dict[str, list[str]] = defaultdict(list)
    for name in await scan(redis, f"{prefix}session:"):
        rest = name.removeprefix(f"{prefix}session:")
        session_id, sep, _ = rest.partition(":")
        if sep:
            by_session[session_id].append(name)
    problems = []
    for session_id, names in by_session.items():
        owner_key = f"{prefix}session:{session_id}"
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hget(owner_key, "owner")
            pipe.pttl(owner_key)
            for name in names:
                pipe.pttl(name)
            owner, owner_ms, *data_ms = await pipe.execute()
        for name, ms in zip(names, data_ms, strict=True):
            if ms == -2:
                continue  # expired between the scan and the read
            if owner is None:
                problems.append(f"{name}: its session has no owner record")
            elif ms == -1 or (owner_ms != -1 and ms > owner_ms + SLACK_MS):
                problems.append(f"{name}: lives {ms} ms, its owner record {owner_ms} ms")
    return problems


def kinds(names: list[str], prefix: str) -> set[str]:
    return {kind(name, prefix) for name in names}
