"""`make bench`: numbers from a real local cluster on free loopback ports.

Prints: chunks delivered per second with N clients streaming at once (paced like a
real model, and at full speed), resume time after kill -9 of a gateway, takeover
time after kill -9 of a worker, and memory per idle connection. Traffic goes to
127.0.0.0/8 only; every loop is bounded; the clusters are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from deploy.cluster import Cluster, ClusterSpec
from services.common.keys import Keys
from tests.chat_client import Answer, ChatClient
from tests.node_probes import metric, rss_bytes


def start_cluster(gateways: int, workers: int, env: dict[str, str]) -> Cluster:
    spec = ClusterSpec.on_free_ports(
        Path(tempfile.mkdtemp(prefix="bench-")),
        gateways,
        workers,
        extra_env={"AUTH_DEV_MODE": "true", **env},
    )
    cluster = Cluster(spec, out=lambda _line: None)
    if not cluster.up():
        raise SystemExit("the bench cluster did not come up")
    return cluster


def ws_url(cluster: Cluster, session: str, user: str) -> str:
    return (
        f"ws://127.0.0.1:{cluster.spec.public_port}/ws/chat?session_id={session}"
        f"&user_id={user}&token=dev-token"
    )


async def streaming(cluster: Cluster, clients: int, label: str) -> None:
    """N clients on N /24s chat at once; every answer is checked for exactly-once."""
    conns = [
        ChatClient(
            ws_url(cluster, f"bench-{label}-{n}", f"u{n}"),
            local_ip=f"127.{1 + n // 250}.{n % 250 + 1}.1",
        )
        for n in range(clients)
    ]
    await asyncio.gather(*(c.connect() for c in conns))

    async def one(client: ChatClient, n: int) -> Answer:
        ack = await client.chat(f"Benchmark question {n} about distributed systems")
        return await client.read_answer(Answer(ack["message_id"]), timeout=300)

    started = time.monotonic()
    answers = await asyncio.gather(*(one(c, n) for n, c in enumerate(conns)))
    elapsed = time.monotonic() - started
    for answer in answers:
        answer.assert_exactly_once()
    chunks = sum(len(a.seqs) for a in answers)
    chars = sum(len(a.text) for a in answers)
    print(
        f"{label:>10}: {clients} clients, {chunks} chunks in {elapsed:.2f}s = "
        f"{chunks / elapsed:,.0f} chunks/s ({chars / elapsed / 1024:,.0f} KiB/s of text), "
        "every answer exactly once"
    )
    delay_sum = sum(
        metric(_gw_url(cluster, g), "gateway_chunk_delay_seconds_sum")
        for g in cluster.spec.gateway_names
    )
    delay_n = sum(
        metric(_gw_url(cluster, g), "gateway_chunk_delay_seconds_count")
        for g in cluster.spec.gateway_names
    )
    if delay_n:
        print(
            f"{'':>10}  worker->gateway chunk delay, mean over the run: "
            f"{delay_sum / delay_n * 1000:.1f} ms"
        )
    await asyncio.gather(*(c.close() for c in conns))


def _gw_url(cluster: Cluster, name: str) -> str:
    return f"http://127.0.0.1:{cluster.spec.node_port(name)}"


async def kill_and_time_next_chunk(pid: int, client: ChatClient, answer: Answer) -> float:
    """kill -9 `pid`, follow the answer to the end (reconnecting as needed), and return
    the seconds from the kill to the first chunk after it."""
    killed = time.monotonic()
    os.killpg(pid, signal.SIGKILL)
    before = len(answer.seqs)
    follow = asyncio.create_task(client.follow_resilient(answer, timeout=120))
    # Polls the client's own list: a benchmark probe, not a synchronisation point.
    while len(answer.seqs) == before and not follow.done():  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    gap = time.monotonic() - killed
    await follow
    answer.assert_exactly_once()
    return gap


async def gateway_kill(cluster: Cluster, rounds: int) -> None:
    """kill -9 the client's gateway mid-answer; time until the next chunk arrives."""
    gaps = []
    for r in range(rounds):
        client = ChatClient(ws_url(cluster, f"bench-gk-{r}", "gk"), local_ip=f"127.0.{r + 1}.9")
        welcome = await client.connect()
        ack = await client.chat("A question whose answer outlives its gateway")
        answer = await client.read_answer(Answer(ack["message_id"]), stop_after=5)
        pid = cluster.pids()[welcome["node_id"]]
        gaps.append(await kill_and_time_next_chunk(pid, client, answer))
        await client.close()
        _wait_healthy(cluster, welcome["node_id"])
    print(
        f"gateway kill -9 -> next chunk on another node: median {statistics.median(gaps):.3f}s,"
        f" max {max(gaps):.3f}s over {rounds} rounds (client reconnects at once)"
    )


async def worker_kill(cluster: Cluster, rounds: int) -> None:
    """kill -9 the generating worker mid-answer; time until the next chunk arrives."""
    gaps = []
    redis = Redis.from_url(cluster.spec.redis_url, decode_responses=True)
    try:
        for r in range(rounds):
            client = ChatClient(ws_url(cluster, f"bench-wk-{r}", "wk"))
            await client.connect()
            ack = await client.chat("A question whose answer outlives its worker")
            mid = ack["message_id"]
            answer = await client.read_answer(Answer(mid), stop_after=5)
            worker = (await redis.get(Keys().message_lease(mid))).split(":")[0]
            gaps.append(await kill_and_time_next_chunk(cluster.pids()[worker], client, answer))
            await client.close()
            _wait_healthy(cluster, worker)
    finally:
        await redis.aclose()
    lease = os.environ.get("LEASE_TTL_MS", "2000")
    print(
        f"worker kill -9 -> next chunk from another worker: median "
        f"{statistics.median(gaps):.3f}s, max {max(gaps):.3f}s over {rounds} rounds "
        f"(bounded by the lease, LEASE_TTL_MS={lease})"
    )


def _wait_healthy(cluster: Cluster, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not (cluster.pids().get(name) and cluster.probe(name).ok):
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not come back")
        time.sleep(0.1)


async def idle_memory(cluster: Cluster, count: int) -> None:
    """Open `count` idle sockets to one gateway (directly) and divide its RSS growth."""
    name = cluster.spec.gateway_names[0]
    pid = cluster.pids()[name]
    url = (
        f"ws://127.0.0.1:{cluster.spec.node_port(name)}/ws/chat?token=dev-token"
        "&user_id=idle&session_id="
    )
    warm = [ChatClient(url + f"warm-{n}") for n in range(50)]
    await asyncio.gather(*(c.connect() for c in warm))
    before = rss_bytes(pid)
    conns: list[ChatClient] = []
    for start in range(0, count, 200):
        batch = [ChatClient(url + f"idle-{n}") for n in range(start, min(count, start + 200))]
        await asyncio.gather(*(c.connect() for c in batch))
        conns.extend(batch)
    await asyncio.sleep(1.0)  # let the allocator settle before reading RSS
    after = rss_bytes(pid)
    print(
        f"idle connections: {count} sockets on {name} grew its RSS by "
        f"{(after - before) / 2**20:.1f} MiB = {(after - before) / count / 1024:.1f} KiB each"
    )
    await asyncio.gather(*(c.close() for c in conns + warm))


async def main(args: argparse.Namespace) -> None:
    paced = start_cluster(3, 3, {})
    try:
        await streaming(paced, args.clients, "paced")
        await gateway_kill(paced, args.rounds)
        await worker_kill(paced, args.rounds)
        await idle_memory(paced, args.idle)
    finally:
        paced.stop()
    # As fast as the cluster can go: one token per chunk, 1,000-chunk answers.
    fast = start_cluster(
        3,
        3,
        {
            "SIM_TOKENS_PER_SECOND": "0",
            "BATCH_MAX_TOKENS": "1",
            "SIM_MIN_TOKENS": "1000",
            "SIM_MAX_TOKENS": "1000",
        },
    )
    try:
        await streaming(fast, args.clients, "full-speed")
    finally:
        fast.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=1000)
    asyncio.run(main(parser.parse_args()))
