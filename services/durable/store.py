"""Durable streams in Redis: the four scripts (`lua/ds_*.lua`) behind named calls.

Each call is one script (EVALSHA, pipelined with the other calls of the same event
loop turn), so every check and its write are one atomic step on every node: creation
with its quota, an append with Stream-Seq and the idempotent producer's state, a read
that stitches a fork to its source. Raises StorageError when Redis fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.errors import storage_op
from services.common.keys import Keys
from services.common.scripts import DS_APPEND, DS_CREATE, DS_DELETE, DS_READ, CoalescedScript
from services.common.settings import Settings
from services.durable.protocol import (
    Entry,
    Producer,
    decode_entries,
    encode_entries,
    is_json,
    media_type,
)


@dataclass(frozen=True, slots=True)
class Created:
    status: str
    """created, exists, conflict, gone, no_source, source_gone, fork_range,
    type_mismatch, quota_streams, quota_bytes (see ds_create.lua)."""
    tail: int
    closed: bool
    content_type: str
    subscribed: bool = False
    """The user has subscriptions: a new stream is reported to them."""


@dataclass(frozen=True, slots=True)
class Appended:
    status: str
    """ok, dup, closed, missing, gone, type_mismatch, stream_seq, stale_epoch,
    epoch_seq, seq_gap, quota_bytes (see ds_append.lua)."""
    tail: int
    closed: bool
    a: str
    b: str
    subscribed: bool = False
    """The user has subscriptions: the append is reported to them."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one read found: the stream's state and its entries from the asked position
    (an answer's reads make one too, server.py)."""

    tail: int
    closed: bool
    content_type: str
    entries: list[Entry]
    ttl: str = ""
    expires_at: str = ""


@dataclass(frozen=True, slots=True)
class Quotas:
    max_streams: int
    max_bytes: int
    read_max_entries: int


class DurableStore:
    def __init__(self, redis: Redis, keys: Keys, quotas: Quotas) -> None:
        self._k = keys
        self._q = quotas
        # The calls of many requests in one turn of the event loop go to Redis in one
        # pipeline (one write, one read): under load most of a small append's cost was
        # the client library's per-call work.
        self._create = CoalescedScript(DS_CREATE, redis)
        self._append = CoalescedScript(DS_APPEND, redis)
        self._read = CoalescedScript(DS_READ, redis)
        self._delete = CoalescedScript(DS_DELETE, redis)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> DurableStore:
        quotas = Quotas(
            settings.ds_max_streams_per_user,
            settings.ds_max_bytes_per_user,
            settings.ds_read_max_entries,
        )
        return cls(redis, Keys.from_settings(settings), quotas)

    def stream_id(self, user_id: str, path: str) -> str:
        return self._k.ds_stream_id(user_id, path)

    def data_key(self, stream_id: str) -> str:
        return self._k.ds_data(stream_id)

    def _user_keys(self, user_id: str) -> dict[str, str]:
        return {
            "user_streams": self._k.ds_user_streams(user_id),
            "user_bytes": self._k.ds_user_bytes(user_id),
        }

    def _writer_keys(self, user_id: str) -> dict[str, str]:
        return self._user_keys(user_id) | {"user_subs": self._k.ds_user_subs(user_id)}

    @storage_op
    async def create(
        self,
        user_id: str,
        path: str,
        *,
        now_ms: int,
        content_type: str,
        media: str,
        json_mode: bool,
        ttl: int | None,
        expires_ms: int | None,
        expires_raw: str,
        closed: bool,
        chunks: list[bytes],
        fork_of: str | None = None,
        fork_offset: int | None = None,
        fork_sub: int = 0,
    ) -> Created:
        sid = self.stream_id(user_id, path)
        src = self.stream_id(user_id, fork_of) if fork_of is not None else ""
        reply = await self._create(
            keys={
                "meta": self._k.ds_meta(sid),
                "data": self._k.ds_data(sid),
                **self._writer_keys(user_id),
            },
            args={
                "prefix": self._k.ds_prefix(sid),
                "id": sid,
                "path": path,
                "now": now_ms,
                "ct": content_type,
                "ctn": media,
                "json": "1" if json_mode else "",
                "ttl": "" if ttl is None else str(ttl),
                "exp": "" if expires_ms is None else str(expires_ms),
                "exp_raw": expires_raw,
                "closing": "1" if closed else "",
                "src": src,
                "fork_offset": "" if fork_offset is None else str(fork_offset),
                "fork_sub": fork_sub,
                "max_streams": self._q.max_streams,
                "max_bytes": self._q.max_bytes,
            },
            rest=encode_entries(chunks),
        )
        status, tail, closed_flag, ct = reply[:4]
        subscribed = len(reply) > 4 and reply[4] == "1"
        return Created(status, int(tail or 0), closed_flag == "1", ct or "", subscribed)

    @storage_op
    async def append(
        self,
        user_id: str,
        path: str,
        *,
        now_ms: int,
        media: str,
        closing: bool,
        stream_seq: str | None,
        producer: Producer | None,
        chunks: list[bytes],
    ) -> Appended:
        sid = self.stream_id(user_id, path)
        reply = await self._append(
            keys={
                "meta": self._k.ds_meta(sid),
                "data": self._k.ds_data(sid),
                "producers": self._k.ds_producers(sid),
                **self._writer_keys(user_id),
            },
            args={
                "prefix": self._k.ds_prefix(sid),
                "id": sid,
                "now": now_ms,
                "ctn": media,
                "closing": "1" if closing else "",
                "stream_seq": stream_seq or "",
                "producer": producer.id if producer else "",
                "epoch": producer.epoch if producer else "",
                "pseq": producer.seq if producer else "",
                "max_bytes": self._q.max_bytes,
            },
            rest=encode_entries(chunks),
        )
        status, tail, closed_flag, a, b = reply[:5]
        subscribed = len(reply) > 5 and reply[5] == "1"
        return Appended(status, int(tail or 0), closed_flag == "1", a or "", b or "", subscribed)

    @storage_op
    async def read(
        self, user_id: str, path: str, *, now_ms: int, start: int | None, touch: bool = True
    ) -> Snapshot | str:
        """The stream and its entries from position `start` (None: the record only);
        'missing' or 'gone' when there is none to read."""
        sid = self.stream_id(user_id, path)
        reply = await self._read(
            keys={"meta": self._k.ds_meta(sid), **self._user_keys(user_id)},
            args={
                "prefix": self._k.ds_prefix(sid),
                "id": sid,
                "now": now_ms,
                "from": -1 if start is None else start,
                "max_entries": self._q.read_max_entries,
                "touch": "1" if touch else "",
            },
        )
        if reply[0] != "ok":
            return str(reply[0])
        _, tail, closed, ct, ttl, expires = reply[:6]
        entries = decode_entries(reply[6:], is_json(media_type(ct)))
        return Snapshot(int(tail), closed == "1", ct, entries, ttl, expires)

    @storage_op
    async def delete(self, user_id: str, path: str, *, now_ms: int) -> str:
        """'deleted', 'missing' or 'gone'."""
        sid = self.stream_id(user_id, path)
        reply = await self._delete(
            keys={"meta": self._k.ds_meta(sid), **self._user_keys(user_id)},
            args={"prefix": self._k.ds_prefix(sid), "id": sid, "now": now_ms},
        )
        return str(reply)
