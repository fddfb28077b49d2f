"""redis_from_settings against a real Sentinel setup: the deploy's own REDIS_HA=sentinel
programs (deploy/supervisor.py's configs: a primary, its replica, three Sentinels) on
free ports. After a kill -9 of the primary and the failover, writes go to the new one."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from deploy.probes import probe
from deploy.spec import SENTINEL_MASTER, ClusterSpec, Process
from deploy.supervisor import Binaries, build_processes, ha_configs
from services.common.redis_client import redis_from_settings, sentinel_addresses
from services.common.settings import Settings
from tests.conftest import wait_for
from tests.integration.conftest import RedisServer
from tests.integration.redis_helpers import eventually
from tests.sentinel_helpers import primary_port, quicken, role, settled

pytestmark = pytest.mark.integration

FAILOVER_S = 20.0


@dataclass
class HASetup:
    spec: ClusterSpec
    procs: dict[str, subprocess.Popen[bytes]]

    def settings(self) -> Settings:
        return Settings(
            redis_url=f"redis://127.0.0.1:{self.spec.redis_port}/0",
            redis_sentinels=self.spec.redis_sentinels,
            redis_sentinel_master=SENTINEL_MASTER,
        )

    def port(self, name: str) -> int:
        return self.spec.all_ports()[name]


@pytest.fixture
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HASetup]:
    spec = ClusterSpec.on_free_ports(
        tmp_path_factory.mktemp("sentinel-run"), gateways=1, workers=1, redis_ha="sentinel"
    )
    bins = Binaries(
        nginx="nginx",
        redis_server=shutil.which("redis-server") or "redis-server",
        tansu="tansu",
        redis_sentinel=shutil.which("redis-sentinel") or "",
    )
    wanted = set(spec.redis_data_names + spec.sentinel_names)
    programs: list[Process] = [p for p in build_processes(spec, bins) if p.name in wanted]
    for path, text in ha_configs(spec).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for program in programs:
            procs[program.name] = subprocess.Popen(
                program.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        for program in programs:
            wait_for(lambda p=program: probe(p).ok, 10, f"{program.name} to answer")  # type: ignore[misc]
        quicken(spec.sentinel_ports, [spec.redis_port, spec.redis_replica_port])
        yield HASetup(spec, procs)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


async def test_a_write_after_failover_goes_to_the_new_primary(ha: HASetup) -> None:
    client = redis_from_settings(ha.settings())
    blocking = redis_from_settings(ha.settings(), blocking=True)
    try:
        # Sentinels find each other and the replica over a few seconds; only then can
        # they fail over.
        primary = await eventually(
            lambda: settled(ha.spec.sentinel_ports), FAILOVER_S, "the setup to settle", poll=0.2
        )
        assert primary == ha.port("redis")
        await client.set("k", "before")
        assert await client.wait(1, 5000) == 1  # the replica has it
        assert await role(ha.port("redis")) == "master"
        assert await blocking.get("k") == "before"

        ha.procs["redis"].send_signal(signal.SIGKILL)
        ha.procs["redis"].wait()
        new_port = ha.port("redis-2")

        async def failed_over() -> bool:
            named = [await primary_port(port) for port in ha.spec.sentinel_ports]
            return named == [new_port] * 3 and await role(new_port) == "master"

        await eventually(failed_over, FAILOVER_S, "Sentinel to promote redis-2", poll=0.2)

        # The client's pooled connection to the dead primary fails; its retries open a
        # new one, which asks the Sentinels and reaches the new primary.
        await client.set("k", "after")
        direct = Redis(port=new_port, decode_responses=True)
        try:
            assert await direct.get("k") == "after"
        finally:
            await direct.aclose()
        assert await client.get("k") == "after"

        # The blocking client does not retry: it may see the lost connection once,
        # then reaches the new primary too.
        async def blocking_reads() -> str | None:
            try:
                return await blocking.get("k")  # type: ignore[no-any-return]
            except RedisConnectionError:
                return None

        assert await eventually(blocking_reads, 5.0, "the blocking client to reconnect") == "after"
    finally:
        await client.aclose()
        await blocking.aclose()


async def test_without_sentinels_the_client_is_the_plain_one() -> None:
    client = redis_from_settings(Settings(redis_url="redis://127.0.0.1:1/3"))
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["port"], kwargs["db"], kwargs["decode_responses"]) == (1, 3, True)
        assert "connection_pool" not in kwargs  # not a Sentinel-managed pool
    finally:
        await client.aclose()


def test_sentinel_addresses_parse() -> None:
    assert sentinel_addresses("") == []
    assert sentinel_addresses(" a:1, b:2 ,") == [("a", 1), ("b", 2)]
    assert sentinel_addresses("[::1]:26379") == [("::1", 26379)]
    for bad in ("a", "a:", ":1", "a:b"):
        with pytest.raises(ValueError):
            sentinel_addresses(bad)


async def test_a_burst_past_the_pool_waits_for_a_connection_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    """Issue 8: at 1,000 streams redis-py's pool raised MaxConnectionsError and answers
    failed. Now 16 commands that each hold a connection for 100 ms, over a pool of 4,
    all succeed: the ones past the pool wait their turn."""
    url = f"redis://{redis_server.host}:{redis_server.port}/0"
    client = redis_from_settings(Settings(redis_url=url), max_connections=4)
    try:
        replies = await asyncio.gather(
            *(client.blpop([f"burst:{n}"], timeout=0.1) for n in range(16))
        )
        assert replies == [None] * 16
        assert client.connection_pool.max_connections == 4
    finally:
        await client.aclose()
