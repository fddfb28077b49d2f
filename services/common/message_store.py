"""The message lifecycle in Redis, shared by the gateway and the worker.

Every step that must be atomic across nodes is one Lua script: accepting a chat
(dedupe by client_msg_id, one answer per session), appending a chunk (only the lease
holder, stopped by the cancel flag), and finishing (the final `1-0` entry, history,
releasing the session). This is the I/O edge for message state; callers get plain
values back.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from redis.asyncio import Redis

from services.common.keys import DONE_ENTRY_ID, Keys, chunk_entry_id
from services.common.protocol import (
    ErrorCode,
    FinishReason,
    HistoryItem,
    MessageStatus,
    StreamInfo,
    Usage,
)
from services.common.streams import ChunkEntry, DoneEntry, Fields, decode_entry, done_fields

_ACCEPT = """
-- KEYS: client_msg, session_active, meta, session_messages, history, session
-- ARGV: message_id, active_ttl_ms, cmsg_ttl_s, meta_ttl_s, history_max, user_item_json,
--       messages_max, now_iso, then meta field pairs
local existing = redis.call('GET', KEYS[1])
if existing then return {'dup', existing} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'busy', redis.call('GET', KEYS[2]) or ''}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
redis.call('HSET', KEYS[3], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[7]), -1)
redis.call('RPUSH', KEYS[5], ARGV[6])
redis.call('LTRIM', KEYS[5], -tonumber(ARGV[5]), -1)
redis.call('HSET', KEYS[6], 'current_message', ARGV[1], 'last_seen', ARGV[8])
return {'new', ARGV[1]}
"""

_APPEND = """
-- KEYS: lease, stream, meta, cancel, session_active
-- ARGV: token, entry_id, seq, delta, written_ms, stream_ttl_s, active_ttl_ms, tokens
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'lost' end
if redis.call('EXISTS', KEYS[4]) == 1 then return 'cancelled' end
redis.call('XADD', KEYS[2], ARGV[2], 'd', ARGV[4], 't', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('HSET', KEYS[3], 'last_seq', ARGV[3], 'status', 'streaming')
redis.call('HINCRBY', KEYS[3], 'completion_tokens', ARGV[8])
redis.call('PEXPIRE', KEYS[5], ARGV[7])
return 'ok'
"""

_FINISH = (
    """
-- KEYS: lease, stream, meta, session_active, history
-- ARGV: token ('' = only if nobody holds the lease), message_id, stream_ttl_s,
--       history_item_json, history_max, last_seq, finish_reason, then done field pairs
local holder = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if holder then return 'leased' end
elseif holder ~= ARGV[1] then
  return 'lost'
end
if redis.call('HGET', KEYS[3], 'status') == 'done' then return 'done' end
redis.call('XADD', KEYS[2], '"""
    + DONE_ENTRY_ID
    + """', unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], 'status', 'done', 'last_seq', ARGV[6], 'finish_reason', ARGV[7])
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
redis.call('RPUSH', KEYS[5], ARGV[4])
redis.call('LTRIM', KEYS[5], -tonumber(ARGV[5]), -1)
if ARGV[1] ~= '' then redis.call('DEL', KEYS[1]) end
return 'ok'
"""
)

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: How long a session stays "busy" without any chunk before another chat is allowed.
ACTIVE_TTL_MS = 120_000
CLIENT_MSG_TTL_S = 86_400
MESSAGES_MAX = 100


class AcceptOutcome(StrEnum):
    NEW = "new"
    DUPLICATE = "dup"
    BUSY = "busy"


class AppendOutcome(StrEnum):
    OK = "ok"
    LOST = "lost"
    CANCELLED = "cancelled"


class FinishOutcome(StrEnum):
    OK = "ok"
    LOST = "lost"
    LEASED = "leased"
    ALREADY_DONE = "done"


@dataclass(frozen=True, slots=True)
class MessageMeta:
    message_id: str
    session_id: str
    user_id: str
    prompt: str
    status: MessageStatus
    last_seq: int
    created_at: str
    completion_tokens: int


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_message_id() -> str:
    return f"m_{uuid.uuid4().hex}"


def user_item_id(message_id: str) -> str:
    """The history id of the user turn that asked for `message_id`."""
    return "u_" + message_id.removeprefix("m_")


def _history_json(message_id: str, role: str, text: str) -> str:
    item = HistoryItem(message_id=message_id, role=role, text=text, created_at=now_iso())  # type: ignore[arg-type]
    return item.model_dump_json()


class MessageStore:
    """Message state in Redis; takes the client and the key builder."""

    def __init__(
        self, redis: Redis, keys: Keys, *, stream_ttl: int, meta_ttl: int, history_max: int
    ) -> None:
        self._r = redis
        self._k = keys
        self._stream_ttl = stream_ttl
        self._meta_ttl = meta_ttl
        self._history_max = history_max
        self._accept = redis.register_script(_ACCEPT)
        self._append = redis.register_script(_APPEND)
        self._finish = redis.register_script(_FINISH)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    # --- gateway side ----------------------------------------------------------------

    async def accept_chat(
        self, session_id: str, user_id: str, text: str, client_msg_id: str
    ) -> tuple[AcceptOutcome, str]:
        """Record a chat; returns (NEW, new id), (DUPLICATE, earlier id) or (BUSY, active id)."""
        k = self._k
        mid = new_message_id()
        created = now_iso()
        meta = {
            "session_id": session_id,
            "user_id": user_id,
            "prompt": text,
            "status": MessageStatus.PENDING.value,
            "last_seq": "0",
            "created_at": created,
            "client_msg_id": client_msg_id,
            "completion_tokens": "0",
        }
        pairs = [x for kv in meta.items() for x in kv]
        result = await self._accept(
            keys=[
                k.client_msg(session_id, client_msg_id),
                k.session_active(session_id),
                k.message_meta(mid),
                k.session_messages(session_id),
                k.session_history(session_id),
                k.session(session_id),
            ],
            args=[
                mid,
                ACTIVE_TTL_MS,
                CLIENT_MSG_TTL_S,
                self._meta_ttl,
                self._history_max,
                _history_json(user_item_id(mid), "user", text),
                MESSAGES_MAX,
                created,
                *pairs,
            ],
        )
        return AcceptOutcome(result[0]), str(result[1])

    async def cancel(self, message_id: str) -> None:
        await self._r.set(self._k.message_cancel(message_id), "1", ex=self._meta_ttl)

    async def history(self, session_id: str, limit: int) -> list[HistoryItem]:
        raw = await self._r.lrange(self._k.session_history(session_id), -limit, -1)
        return [HistoryItem.model_validate_json(item) for item in raw]

    async def session_streams(self, session_id: str) -> list[StreamInfo]:
        """The session's messages whose chunks are still cached, oldest first."""
        ids = await self._r.lrange(self._k.session_messages(session_id), 0, -1)
        if not ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for mid in ids:
                pipe.exists(self._k.message_stream(mid))
                pipe.hmget(self._k.message_meta(mid), "status", "last_seq")
            replies = await pipe.execute()
        streams = []
        for i, mid in enumerate(ids):
            exists, (status, last_seq) = replies[2 * i], replies[2 * i + 1]
            if status is None or (not exists and status == MessageStatus.DONE):
                continue
            streams.append(
                StreamInfo(
                    message_id=mid, last_seq=int(last_seq or 0), status=MessageStatus(status)
                )
            )
        return streams

    # --- both ---------------------------------------------------------------------------

    async def meta(self, message_id: str) -> MessageMeta | None:
        raw = await self._r.hgetall(self._k.message_meta(message_id))
        if not raw:
            return None
        return MessageMeta(
            message_id=message_id,
            session_id=raw["session_id"],
            user_id=raw["user_id"],
            prompt=raw["prompt"],
            status=MessageStatus(raw["status"]),
            last_seq=int(raw.get("last_seq", 0)),
            created_at=raw["created_at"],
            completion_tokens=int(raw.get("completion_tokens", 0)),
        )

    async def stream_exists(self, message_id: str) -> bool:
        return bool(await self._r.exists(self._k.message_stream(message_id)))

    async def read_entries(
        self, message_id: str, after_seq: int = 0, count: int | None = None
    ) -> list[ChunkEntry | DoneEntry]:
        """Cached entries after `after_seq`, in order (the final record last)."""
        raw = await self._r.xrange(
            self._k.message_stream(message_id),
            min=f"({chunk_entry_id(after_seq)}",
            max="+",
            count=count,
        )
        return [decode_entry(eid, fields) for eid, fields in raw]

    async def lease_holder(self, message_id: str) -> str | None:
        value = await self._r.get(self._k.message_lease(message_id))
        return str(value) if value is not None else None

    async def finish(
        self,
        message_id: str,
        session_id: str,
        *,
        token: str,
        last_seq: int,
        text: str,
        reason: FinishReason,
        usage: Usage,
        error: ErrorCode | None = None,
    ) -> FinishOutcome:
        """Write the final record. `token=""` finishes only a message nobody leases."""
        k = self._k
        fields: Fields = done_fields(last_seq, reason, usage, error)
        pairs = [x for kv in fields.items() for x in kv]
        result = await self._finish(
            keys=[
                k.message_lease(message_id),
                k.message_stream(message_id),
                k.message_meta(message_id),
                k.session_active(session_id),
                k.session_history(session_id),
            ],
            args=[
                token,
                message_id,
                self._stream_ttl,
                _history_json(message_id, "assistant", text),
                self._history_max,
                last_seq,
                reason.value,
                *pairs,
            ],
        )
        return FinishOutcome(result)

    # --- worker side -------------------------------------------------------------------

    async def acquire_lease(self, message_id: str, ttl_ms: int, holder: str) -> str | None:
        """Take the message's lease; returns its token (`holder:random`, so operators can
        see which node generates), or None if another worker holds it."""
        token = f"{holder}:{uuid.uuid4().hex[:12]}"
        ok = await self._r.set(self._k.message_lease(message_id), token, nx=True, px=ttl_ms)
        return token if ok else None

    async def renew_lease(self, message_id: str, token: str, ttl_ms: int) -> bool:
        return bool(
            await self._renew(keys=[self._k.message_lease(message_id)], args=[token, ttl_ms])
        )

    async def release_lease(self, message_id: str, token: str) -> None:
        await self._release(keys=[self._k.message_lease(message_id)], args=[token])

    async def is_cancelled(self, message_id: str) -> bool:
        return bool(await self._r.exists(self._k.message_cancel(message_id)))

    async def append_chunk(
        self,
        message_id: str,
        session_id: str,
        *,
        token: str,
        seq: int,
        delta: str,
        tokens: int,
    ) -> AppendOutcome:
        k = self._k
        result = await self._append(
            keys=[
                k.message_lease(message_id),
                k.message_stream(message_id),
                k.message_meta(message_id),
                k.message_cancel(message_id),
                k.session_active(session_id),
            ],
            args=[
                token,
                chunk_entry_id(seq),
                seq,
                delta,
                int(time.time() * 1000),
                self._stream_ttl,
                ACTIVE_TTL_MS,
                tokens,
            ],
        )
        return AppendOutcome(result)
