"""The durable stream scripts on a real Redis (services/durable/store.py, lua/ds_*.lua):
quotas, forks and their garbage collection, expiry, producers, the one-slot rule."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from services.common.keys import Keys
from services.durable.protocol import Producer
from services.durable.store import DurableStore, Quotas, Snapshot

NOW = 1_800_000_000_000


def store(redis: Redis, keys: Keys, **quotas: int) -> DurableStore:
    q = {"max_streams": 100, "max_bytes": 1 << 20, "read_max_entries": 1000} | quotas
    return DurableStore(redis, keys, Quotas(**q))


def uid() -> str:
    return f"u{uuid.uuid4().hex[:8]}"


async def create(s: DurableStore, user: str, path: str, body: bytes = b"", **kw: Any) -> str:
    options: dict[str, Any] = {
        "now_ms": NOW,
        "content_type": "text/plain",
        "media": "text/plain",
        "json_mode": False,
        "ttl": None,
        "expires_ms": None,
        "expires_raw": "",
        "closed": False,
        "chunks": [body] if body else [],
    } | kw
    return (await s.create(user, path, **options)).status


async def append(s: DurableStore, user: str, path: str, body: bytes, **kw: Any) -> str:
    options: dict[str, Any] = {
        "now_ms": NOW,
        "media": "text/plain",
        "closing": False,
        "stream_seq": None,
        "producer": None,
        "chunks": [body] if body else [],
    } | kw
    return (await s.append(user, path, **options)).status


async def text(s: DurableStore, user: str, path: str, now_ms: int = NOW) -> str | None:
    found = await s.read(user, path, now_ms=now_ms, start=0)
    if not isinstance(found, Snapshot):
        return None
    return b"".join(e.data for e in found.entries).decode()


async def test_quotas_count_streams_and_bytes_per_user(redis: Redis, keys: Keys) -> None:
    s = store(redis, keys, max_streams=2, max_bytes=10)
    alice, bob = uid(), uid()
    assert await create(s, alice, "a", b"12345") == "created"
    assert await create(s, alice, "b") == "created"
    assert await create(s, alice, "c") == "quota_streams"
    assert await create(s, bob, "c") == "created"  # Bob's quota is his own
    assert await append(s, alice, "b", b"123456") == "quota_bytes"  # 5 + 6 > 10
    assert await append(s, alice, "b", b"12345") == "ok"
    assert await text(s, alice, "b") == "12345"  # the refused append wrote nothing
    assert await s.delete(alice, "a", now_ms=NOW) == "deleted"
    assert await create(s, alice, "c", b"12345") == "created"  # room again, bytes too


async def test_expired_streams_are_gone_and_free_their_quota(redis: Redis, keys: Keys) -> None:
    s = store(redis, keys, max_streams=1)
    user = uid()
    assert await create(s, user, "t", b"x", ttl=10) == "created"
    assert await text(s, user, "t", NOW + 9_000) == "x"  # a read restarts the TTL...
    assert await text(s, user, "t", NOW + 18_000) == "x"
    assert await text(s, user, "t", NOW + 29_000) is None  # ...10 s idle: gone
    assert await create(s, user, "t2", now_ms=NOW + 30_000) == "created"
    assert await create(s, user, "e", expires_ms=NOW + 1, now_ms=NOW + 30_000) == "quota_streams"


async def test_forks_keep_their_source_and_the_last_fork_collects_it(
    redis: Redis, keys: Keys
) -> None:
    s = store(redis, keys)
    user = uid()
    assert await create(s, user, "src", b"abcdef") == "created"
    assert await create(s, user, "f1", fork_of="src", fork_offset=2, fork_sub=2) == "created"
    assert await create(s, user, "f2", fork_of="f1", fork_offset=0, fork_sub=3) == "created"
    assert await append(s, user, "src", b"XYZ") == "ok"  # the source moves on alone
    assert await append(s, user, "f2", b"!") == "ok"
    assert (await text(s, user, "f1"), await text(s, user, "f2")) == ("abcd", "abc!")
    # Deleting a source that forks read soft-deletes it: gone for its own URL, 409 on
    # re-creation, still read through the forks.
    assert await s.delete(user, "src", now_ms=NOW) == "deleted"
    assert await s.read(user, "src", now_ms=NOW, start=0) == "gone"
    assert await create(s, user, "src") == "gone"
    assert await text(s, user, "f2") == "abc!"
    # The last fork gone, the whole chain is collected: no key of it is left.
    assert await s.delete(user, "f1", now_ms=NOW) == "deleted"
    assert await text(s, user, "f2") == "abc!"
    assert await s.delete(user, "f2", now_ms=NOW) == "deleted"
    assert await redis.keys(f"{keys.prefix}ds:d_*") == []
    assert await redis.zcard(keys.ds_user_streams(user)) == 0
    assert int(await redis.hget(keys.ds_user_bytes(user), "_total") or 0) == 0


async def test_an_idempotent_producer_writes_each_batch_once(redis: Redis, keys: Keys) -> None:
    s = store(redis, keys)
    user = uid()
    assert await create(s, user, "p") == "created"

    async def send(epoch: int, seq: int, body: bytes = b"x", **kw: Any) -> str:
        return await append(s, user, "p", body, producer=Producer("w", epoch, seq), **kw)

    assert await send(0, 1) == "seq_gap"  # a new producer starts at 0
    assert [await send(0, 0), await send(0, 1), await send(0, 1)] == ["ok", "ok", "dup"]
    assert await send(0, 3) == "seq_gap"
    assert await send(1, 1) == "epoch_seq"
    assert await send(1, 0, b"y", closing=True) == "ok"
    assert await send(0, 2) == "closed"  # the stream is closed: only the closing tuple...
    assert await send(1, 0, b"y", closing=True) == "dup"  # ...is a duplicate
    assert await append(s, user, "p", b"z") == "closed"
    assert await text(s, user, "p") == "xxy"


async def test_every_key_of_a_users_streams_is_in_one_slot(redis: Redis) -> None:
    """With buckets (Redis Cluster), a user's streams, forks and quota share a hash tag, so
    each script touches one slot."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}:", buckets=16)
    s = store(redis, keys)
    user = uid()
    assert await create(s, user, "a/b", b"1") == "created"
    assert await create(s, user, "c", fork_of="a/b") == "created"
    tags = {k.split("}")[0] for k in await redis.keys(f"{keys.prefix}*")}
    assert tags == {f"{keys.prefix}{{b{keys.bucket_of_user(user)}"}


@pytest.mark.parametrize("media", ["application/json"])
async def test_json_streams_count_messages(redis: Redis, keys: Keys, media: str) -> None:
    s = store(redis, keys)
    user = uid()
    status = await create(
        s, user, "j", media=media, content_type=media, json_mode=True, chunks=[b"1", b"[2]"]
    )
    assert status == "created"
    found = await s.read(user, "j", now_ms=NOW, start=1)
    assert isinstance(found, Snapshot)
    assert [e.data for e in found.entries] == [b"[2]"] and found.tail == 2
