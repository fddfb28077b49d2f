"""Asking the Sentinels of a REDIS_HA=sentinel setup who is primary, and whether the
setup is settled (ready for the next failover); making a test's Sentinels notice
changes sooner."""

from __future__ import annotations

from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from deploy.spec import SENTINEL_MASTER

TEST_PERIODS_MS = {"info-period": 500, "publish-period": 250}
"""Sentinel's own timers, for tests (SENTINEL DEBUG, Redis 7). By default a Sentinel
sends INFO to each node every 10 s and its hello every 2 s, and it makes an old primary
that came back a replica 4 hello periods after that node first reports itself as
primary: a setup settles again 10 to 20 s after a failover. What makes a failover
(down-after-milliseconds, failover-timeout, quorum) stays as deploy/supervisor.py
configures it."""


def quicken(sentinel_ports: list[int], data_ports: list[int]) -> None:
    """Make a test's setup settle sooner: TEST_PERIODS_MS for every Sentinel, and no
    `repl-diskless-sync-delay` (5 s by default: a primary waits that long for more
    replicas before it starts the full sync of one) on the data nodes, so a replica,
    and an old primary made one, is in sync within a second or two. Each holds until
    that program restarts."""
    periods = [str(x) for pair in TEST_PERIODS_MS.items() for x in pair]
    commands = [(port, ("SENTINEL", "DEBUG", *periods)) for port in sentinel_ports]
    commands += [(port, ("CONFIG", "SET", "repl-diskless-sync-delay", "0")) for port in data_ports]
    for port, command in commands:
        client = SyncRedis(port=port, socket_timeout=2.0, decode_responses=True)
        try:
            assert client.execute_command(*command) in ("OK", True), (port, command)
        finally:
            client.close()


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
