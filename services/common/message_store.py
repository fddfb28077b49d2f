"""The message lifecycle in Redis, shared by the gateway and the worker.

Every step that must be atomic across nodes is one Lua script: accepting a chat
(dedupe by client_msg_id, one answer per session), appending a chunk (only the lease
holder, stopped by the cancel flag), and finishing (the final `1-0` entry, history,
releasing the session). This is the I/O edge for message state; callers get plain
values back.

The accept and finish scripts also refresh the session's TTL (`session_ttl`) on its
record, history and message list in the same step, so the owner record never expires
before the data it guards (see keys.py). And they add the event that reports the change
(`message.accepted`, `message.completed`) to the event outbox in that same step (see
event_outbox.py): built here, written by the script only if the change happened.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from services.common.clock import now_iso, now_ms
from services.common.errors import storage_op
from services.common.event_outbox import OutboxWriter, outbox_max
from services.common.events import EventType
from services.common.keys import DONE_ENTRY_ID, Keys, chunk_entry_id, new_message_id
from services.common.lease import Leases
from services.common.protocol import (
    ErrorCode,
    FinishReason,
    HistoryItem,
    MessageStatus,
    StreamInfo,
    Usage,
)
from services.common.scripts import ACCEPT_CHAT, APPEND_CHUNK, FINISH_MESSAGE, CoalescedScript
from services.common.settings import Settings
from services.common.streams import ChunkEntry, DoneEntry, Fields, decode_entry, done_fields

#: How long a session stays "busy" without any chunk before another chat is allowed.
ACTIVE_TTL_MS = 120_000
#: How long a client_msg_id is remembered for dedupe (at most the session's TTL).
CLIENT_MSG_TTL_S = 86_400
#: The default of SESSION_TTL: 30 days after the session's last activity.
DEFAULT_SESSION_TTL_S = 2_592_000
#: A gateway's lease on driving a message's generation calls.
DRIVER_TTL_MS = 10_000
MESSAGES_MAX = 100


class AcceptOutcome(StrEnum):
    NEW = "new"
    DUPLICATE = "dup"
    BUSY = "busy"


class SessionTaken(Exception):
    """The session belongs to another user by now (its record expired while a connection
    of the old owner stayed open, and someone else opened the id): nothing was written.
    The connection should be closed as forbidden (4403)."""


class UserLimited(Exception):
    """A per-user limit refused the chat (nothing written); retry after `retry_after` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class UserLimits:
    """Per user, across connections and nodes."""

    chats_per_minute: int = 60
    max_answers: int = 4
    answer_horizon_ms: int = 600_000
    """An answer that never finished stops counting after this long."""


class AppendOutcome(StrEnum):
    OK = "ok"
    LOST = "lost"
    CANCELLED = "cancelled"
    GONE = "gone"
    """The message record expired; nothing was written."""
    GAP = "gap"
    """The stored last_seq is not seq - 1 (Redis lost chunks): write the missing ones."""


class FinishOutcome(StrEnum):
    OK = "ok"
    LOST = "lost"
    LEASED = "leased"
    ALREADY_DONE = "done"
    GONE = "gone"
    """The message record expired; nothing was written."""
    GAP = "gap"
    """The stored last_seq is not the given one (Redis lost chunks, or an evicted
    holder wrote meanwhile)."""


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


def user_item_id(message_id: str) -> str:
    """The history id of the user turn that asked for `message_id`."""
    return "u_" + message_id.removeprefix("m_")


def _history_json(message_id: str, role: str, text: str) -> str:
    item = HistoryItem(message_id=message_id, role=role, text=text, created_at=now_iso())  # type: ignore[arg-type]
    return item.model_dump_json()


class MessageStore:
    """Message state in Redis; takes the client and the key builder.

    Every method raises `StorageError` when Redis fails. `generators` and `drivers`
    are the two leases on a message: the worker writing it, the gateway calling
    for it.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        stream_ttl: int,
        meta_ttl: int,
        history_max: int,
        lease_ttl_ms: int,
        driver_ttl_ms: int = DRIVER_TTL_MS,
        session_ttl: int = DEFAULT_SESSION_TTL_S,
        node_id: str = "",
        outbox_max: int = 0,
        limits: UserLimits = UserLimits(),
    ) -> None:
        """`node_id` goes into the events; `outbox_max` bounds the event outbox (0: the
        scripts write no events)."""
        self._r = redis
        self._k = keys
        self._events = OutboxWriter(keys, node_id, outbox_max)
        self._limits = limits
        self._stream_ttl = stream_ttl
        self._meta_ttl = meta_ttl
        self._session_ttl = session_ttl
        # A session's own short-lived keys never outlive its owner record.
        self._client_msg_ttl = min(CLIENT_MSG_TTL_S, session_ttl)
        self._active_ttl_ms = min(ACTIVE_TTL_MS, session_ttl * 1000)
        self._history_max = history_max
        self._accept = ACCEPT_CHAT.bind(redis)
        # The chunks of every answer a worker generates go to Redis together.
        self._append = CoalescedScript(APPEND_CHUNK, redis)
        self._finish = FINISH_MESSAGE.bind(redis)
        self.generators = Leases(redis, keys.message_lease, lease_ttl_ms, keys.message_meta)
        self.drivers = Leases(redis, keys.message_driver, driver_ttl_ms, keys.message_meta)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> MessageStore:
        return cls(
            redis,
            Keys.from_settings(settings),
            stream_ttl=settings.stream_cache_ttl,
            meta_ttl=settings.message_meta_ttl,
            history_max=settings.history_max,
            lease_ttl_ms=settings.lease_ttl_ms,
            session_ttl=settings.session_ttl,
            node_id=settings.node_id,
            outbox_max=outbox_max(settings),
            limits=UserLimits(
                chats_per_minute=settings.user_chats_per_minute,
                max_answers=settings.max_active_answers_per_user,
            ),
        )

    # --- gateway side ----------------------------------------------------------------

    async def accept_chat(
        self, session_id: str, user_id: str, text: str, client_msg_id: str | None
    ) -> tuple[AcceptOutcome, str]:
        """Record a chat; returns (NEW, new id), (DUPLICATE, earlier id) or (BUSY, active id).

        Without a `client_msg_id` the chat gets a random one (it is never a duplicate).
        A new chat's `message.accepted` event is written with it. Raises SessionTaken if
        another user owns the session by now, StorageError if Redis fails."""
        k = self._k
        mid = new_message_id(k.bucket_of_user(user_id))
        created = now_iso()
        event_data = {"client_msg_id": client_msg_id, "chars": len(text)}
        if not client_msg_id:
            client_msg_id = f"auto-{uuid.uuid4().hex}"
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
        result = await self._accept(
            keys={
                "client_msg": k.client_msg(session_id, client_msg_id),
                "session_active": k.session_active(session_id),
                "meta": k.message_meta(mid),
                "session_messages": k.session_messages(session_id),
                "history": k.session_history(session_id),
                "session": k.session(session_id),
                "user_sessions": k.user_sessions(user_id),
                **self._events.script_keys(k.bucket_of_user(user_id)),
                "user_chats": k.user_chats(user_id),
                "user_answers": k.user_answers(user_id),
            },
            args={
                "message_id": mid,
                "active_ttl_ms": self._active_ttl_ms,
                "client_msg_ttl_s": self._client_msg_ttl,
                "meta_ttl_s": self._meta_ttl,
                "history_max": self._history_max,
                "user_item_json": _history_json(user_item_id(mid), "user", text),
                "messages_max": MESSAGES_MAX,
                "now_iso": created,
                "user_id": user_id,
                "session_id": session_id,
                "session_ttl_s": self._session_ttl,
                "chats_per_minute": self._limits.chats_per_minute,
                "max_answers": self._limits.max_answers,
                "now_ms": now_ms(),
                "answer_horizon_ms": self._limits.answer_horizon_ms,
                **self._events.script_args(
                    EventType.MESSAGE_ACCEPTED,
                    session_id,
                    created,
                    user_id=user_id,
                    message_id=mid,
                    data=event_data,
                ),
            },
            rest=_pairs(meta),
        )
        if result[0] == _FORBIDDEN:
            raise SessionTaken(session_id)
        if result[0] in _LIMITED:
            raise UserLimited(_LIMITED[result[0]], int(result[1]) / 1000)
        return AcceptOutcome(result[0]), str(result[1])

    @storage_op
    async def cancel(self, message_id: str) -> None:
        await self._r.set(self._k.message_cancel(message_id), "1", ex=self._meta_ttl)

    @storage_op
    async def history(self, session_id: str, limit: int) -> list[HistoryItem]:
        raw = await self._r.lrange(self._k.session_history(session_id), -limit, -1)
        return _history_items(raw)

    @storage_op
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

    @storage_op
    async def orphaned(self, message_id: str) -> str | None:
        """The session id of an unfinished message that nobody generates or drives (its
        gateway and worker both died), else None."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.exists(self._k.message_lease(message_id))
            pipe.exists(self._k.message_driver(message_id))
            pipe.hmget(self._k.message_meta(message_id), "status", "session_id")
            lease, driver, (status, session_id) = await pipe.execute()
        if lease or driver or status in (None, MessageStatus.DONE) or session_id is None:
            return None
        return str(session_id)

    @storage_op
    async def generation_inputs(
        self, message_id: str, session_id: str, history_limit: int
    ) -> tuple[list[ChunkEntry | DoneEntry], bool, list[HistoryItem]]:
        """What a worker reads to start (or continue) an answer, in one round trip: the
        cached entries, whether it was cancelled, and the session's last
        `history_limit` history items. Read together in one pipeline, because under
        load every separate await waits a whole turn of a busy event loop.

        Raises ValueError if an entry is malformed (written by something else)."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.xrange(self._k.message_stream(message_id), min="-", max="+")
            pipe.exists(self._k.message_cancel(message_id))
            pipe.lrange(self._k.session_history(session_id), -history_limit, -1)
            raw_entries, cancelled, raw_history = await pipe.execute()
        return _entries(raw_entries), bool(cancelled), _history_items(raw_history)

    # --- both ---------------------------------------------------------------------------

    @storage_op
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

    @storage_op
    async def finish_states(self, message_ids: list[str]) -> list[tuple[MessageStatus | None, int]]:
        """(status, last_seq) of each message's record ((None, 0) when it is gone)."""
        async with self._r.pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.hmget(self._k.message_meta(message_id), "status", "last_seq")
            replies = await pipe.execute()
        return [
            (MessageStatus(status) if status else None, int(last_seq or 0))
            for status, last_seq in replies
        ]

    @storage_op
    async def server_run_id(self) -> str:
        """The `run_id` of the Redis server answering: another one after a restart or a
        failover."""
        info = await self._r.info("server")
        return str(info["run_id"])

    @storage_op
    async def stream_exists(self, message_id: str) -> bool:
        return bool(await self._r.exists(self._k.message_stream(message_id)))

    @storage_op
    async def read_entries(
        self, message_id: str, after_seq: int = 0, count: int | None = None
    ) -> list[ChunkEntry | DoneEntry]:
        """Cached entries after `after_seq`, in order (the final record last).

        Raises ValueError if an entry is malformed (written by something else)."""
        raw = await self._r.xrange(
            self._k.message_stream(message_id),
            min=f"({chunk_entry_id(after_seq)}",
            max="+",
            count=count,
        )
        return _entries(raw)

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
        evict: str = "",
        event_id: str | None = None,
    ) -> FinishOutcome:
        """Write the final record. `token=""` finishes only a message nobody leases, or
        one still leased by `evict` (a holder found stalled): its lease is then taken
        away, provided the stored last_seq is still `last_seq` (else `GAP`).
        `event_id` is the id of the event when writing a lost final record again.

        The answer goes into the session's history only while the message's author
        still owns the session (else the owner record is gone or another user's). An
        `OK` finish writes the `message.completed` event with it."""
        k = self._k
        fields: Fields = done_fields(last_seq, reason, usage, error)
        finished_at = now_iso()
        author = await self._author(message_id)
        result = await self._finish(
            keys={
                "lease": k.message_lease(message_id),
                "stream": k.message_stream(message_id),
                "meta": k.message_meta(message_id),
                "session_active": k.session_active(session_id),
                "history": k.session_history(session_id),
                "session": k.session(session_id),
                "session_messages": k.session_messages(session_id),
                **self._events.script_keys(k.bucket_of_message(message_id)),
                "user_answers": k.user_answers(author),
            },
            args={
                "token": token,
                "message_id": message_id,
                "stream_ttl_s": self._stream_ttl,
                "history_item_json": _history_json(message_id, "assistant", text),
                "history_max": self._history_max,
                "last_seq": last_seq,
                "finish_reason": reason.value,
                "done_entry_id": DONE_ENTRY_ID,
                "now_iso": finished_at,
                "session_ttl_s": self._session_ttl,
                "evict": evict,
                **self._events.script_args(
                    EventType.MESSAGE_COMPLETED,
                    session_id,
                    finished_at,
                    message_id=message_id,
                    data={"finish_reason": reason.value, "usage": usage.model_dump()},
                    event_id=event_id,
                ),
            },
            rest=_pairs(fields),
        )
        return FinishOutcome(result)

    @storage_op
    async def _author(self, message_id: str) -> str:
        """The user who asked for the message ('' if its record is gone)."""
        return str(await self._r.hget(self._k.message_meta(message_id), "user_id") or "")

    # --- worker side -------------------------------------------------------------------

    @storage_op
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
        written_ms: int | None = None,
    ) -> AppendOutcome:
        """Append chunk `seq` as the holder of generator lease `token`; `written_ms`
        (default now) is given when a chunk lost by Redis is written again."""
        k = self._k
        result = await self._append(
            keys={
                "lease": k.message_lease(message_id),
                "stream": k.message_stream(message_id),
                "meta": k.message_meta(message_id),
                "cancel": k.message_cancel(message_id),
                "session_active": k.session_active(session_id),
            },
            args={
                "token": token,
                "entry_id": chunk_entry_id(seq),
                "seq": seq,
                "delta": delta,
                "written_ms": now_ms() if written_ms is None else written_ms,
                "stream_ttl_s": self._stream_ttl,
                "active_ttl_ms": self._active_ttl_ms,
                "tokens": tokens,
                "lease_ttl_ms": self.generators.ttl_ms,
            },
        )
        return AppendOutcome(result)


_LIMITED = {
    "rate_limited": "too many chats for this user; slow down",
    "too_many": "too many answers in progress for this user",
}
"""accept_chat.lua's refusals for per-user limits, with what the client is told."""

_FORBIDDEN = "forbidden"
"""accept_chat.lua's answer when another user owns the session."""


def _pairs(fields: dict[str, str]) -> list[str]:
    return [x for kv in fields.items() for x in kv]


def _entries(raw: list[tuple[str, Fields]]) -> list[ChunkEntry | DoneEntry]:
    """A stream's XRANGE reply, decoded (ValueError on a malformed entry)."""
    return [decode_entry(eid, fields) for eid, fields in raw]


def _history_items(raw: list[str]) -> list[HistoryItem]:
    """A session history's LRANGE reply, decoded."""
    return [HistoryItem.model_validate_json(item) for item in raw]
