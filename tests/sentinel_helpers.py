"""Asking the Sentinels of a REDIS_HA=sentinel setup who is primary, and whether the
setup is settled (ready for the next failover)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from deploy.spec import SENTINEL_MASTER


async def _ask(port: int, *command: str) -> Any:
    client = Redis(port=port, decode_responses=True, socket_timeout=1.0)
    try:
        return await client.execute_command(*command)
    finally:
        await client.aclose()


async def primary_port(sentinel_port: int) -> int | None:
    """The primary's port as this Sentinel names it (None if it cannot say)."""
    try:
        reply = await _ask(sentinel_port, "SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER)
    except RedisError:
        return None
    return int(reply[1]) if reply else None


async def role(port: int) -> str | None:
    """ROLE of a Redis data node: master, slave; None when it does not answer."""
    try:
        return str((await _ask(port, "ROLE"))[0])
    except (RedisError, OSError):
        return None


async def settled(sentinel_ports: list[int], replicas: int = 1) -> int | None:
    """The primary's port once every Sentinel names the same primary, sees it up and
    its other Sentinels, and `replicas` replicas of it up and in sync: a kill of the
    primary now leads to a failover. None until then."""
    ports = set()
    for port in sentinel_ports:
        try:
            state = await _ask(port, "SENTINEL", "master", SENTINEL_MASTER)
            known = await _ask(port, "SENTINEL", "replicas", SENTINEL_MASTER)
        except RedisError:
            return None
        state = _pairs(state)
        if state.get("flags") != "master":
            return None
        if int(state.get("num-other-sentinels", 0)) < len(sentinel_ports) - 1:
            return None
        good = [
            r
            for r in map(_pairs, known)
            if r.get("flags") == "slave" and r.get("master-link-status") == "ok"
        ]
        if len(good) < replicas:
            return None
        ports.add(int(state["port"]))
    if len(ports) != 1:
        return None
    (primary,) = ports
    return primary if await role(primary) == "master" else None


def _pairs(reply: Any) -> dict[str, str]:
    """A Sentinel reply as a flat [k, v, k, v, ...] list (or a dict) -> dict."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
