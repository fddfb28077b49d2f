"""Per-address limits in nginx: a client that opens requests too fast is refused with
429, `Retry-After` and a body naming `rate_limited`; other addresses are not affected."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.chat_client import ChatClient

pytestmark = pytest.mark.e2e


def client(local_ip: str, base_url: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=local_ip)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=10)


async def test_a_request_storm_from_one_address_is_refused_with_429(cluster) -> None:
    async with client("127.0.251.1", cluster.public_url) as storm:
        replies = await asyncio.gather(*(storm.get("/health") for _ in range(200)))
    codes = [r.status_code for r in replies]
    refused = [r for r in replies if r.status_code == 429]
    # 20 requests a second with a burst of 100: at least the excess of a 200-request
    # burst is refused, and everything else was served.
    assert len(refused) >= 60, codes
    assert set(codes) <= {200, 429}
    assert refused[0].headers["retry-after"] == "1"
    assert refused[0].json() == {"error": "rate_limited", "retry_after": 1}
    async with client("127.0.252.1", cluster.public_url) as other:
        assert (await other.get("/health")).status_code == 200


async def test_one_user_with_many_connections_gets_rate_limited_answers(cluster) -> None:
    """MAX_ACTIVE_ANSWERS_PER_USER (4) counts across sessions, connections and nodes."""
    clients = [
        ChatClient(cluster.ws_url(f"many-{n}", user_id="greedy"), local_ip=f"127.0.{140 + n}.1")
        for n in range(6)
    ]
    welcomes = await asyncio.gather(*(c.connect() for c in clients))
    assert len({w["node_id"] for w in welcomes}) >= 2, "all connections on one gateway"
    replies = [await c.chat("Tell me everything about limits.") for c in clients]
    kinds = [r["type"] for r in replies]
    assert kinds.count("ack") == 4, replies
    refused = [r for r in replies if r["type"] == "error"]
    assert [r["code"] for r in refused] == ["rate_limited", "rate_limited"]
    assert all(r["retry_after"] > 0 for r in refused)
    for c in clients:
        await c.close()
