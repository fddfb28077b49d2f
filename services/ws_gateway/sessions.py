"""Session records: Redis (L2, SESSION_TTL after the last activity) behind an
in-process L1 cache.

The owner check runs on every connect, so the record is cached in process; a node
that changes a record publishes its id and every node drops its L1 copy. An open by
the owner refreshes the TTL of the record and of everything the session stores, in
one script, so the owner record never expires before the session's data. A session
created by that script gets its `session.opened` event in the event outbox in the
same step (see services/common/event_outbox.py).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from services.common.clock import now_iso
from services.common.errors import storage_op
from services.common.event_outbox import OutboxWriter, outbox_max
from services.common.events import EventType
from services.common.keys import Keys
from services.common.protocol import HistoryItem, session_scope, split_scope
from services.common.scripts import SESSION_DELETE, SESSION_OPEN, SESSION_RENAME
from services.common.settings import Settings
from services.ws_gateway.l1cache import L1Cache


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    owner: str
    created_at: str


class Forbidden(Exception):
    """The session belongs to another user (close 4403)."""


#: The longest title a session may be given (characters), and the default title's
#: length when a session has none (the start of its first prompt).
TITLE_MAX = 100
DEFAULT_TITLE_CHARS = 60


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One entry of a user's session list (`GET /api/sessions`)."""

    session_id: str
    title: str
    created_at: str
    last_seen: str
    answering: bool


class Outcome(StrEnum):
    """What a rename or delete found (the scripts' replies)."""

    OK = "ok"
    DELETED = "deleted"
    MISSING = "missing"
    FORBIDDEN = "forbidden"
    BUSY = "busy"


def clean_title(title: str) -> str:
    """`title` with its whitespace runs collapsed; ValueError when it is empty, longer
    than TITLE_MAX or holds control characters."""
    if any((ord(c) < 32 and c not in "\t\n") or ord(c) == 127 for c in title):
        raise ValueError("title must not contain control characters")
    text = " ".join(title.split())
    if not text:
        raise ValueError("title must not be empty")
    if len(text) > TITLE_MAX:
        raise ValueError(f"title must be at most {TITLE_MAX} characters")
    return text


def default_title(first_item: str | None) -> str:
    """The start of a session's first prompt (its first history item), on one line, cut
    at a word near DEFAULT_TITLE_CHARS; "" when there is none or it cannot be read."""
    if not first_item:
        return ""
    try:
        text = " ".join(HistoryItem.model_validate_json(first_item).text.split())
    except ValueError:
        return ""
    if len(text) <= DEFAULT_TITLE_CHARS:
        return text
    cut = text[:DEFAULT_TITLE_CHARS].rsplit(" ", 1)[0] or text[:DEFAULT_TITLE_CHARS]
    return cut + "…"


def new_session_id() -> str:
    """A fresh session id for `POST /api/sessions` (matches SESSION_ID_PATTERN)."""
    return "s-" + secrets.token_hex(8)


class SessionStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        session_ttl: int,
        l1_max: int,
        l1_ttl: float,
        node_id: str = "",
        outbox_max: int = 0,
    ) -> None:
        """`node_id` goes into the events; `outbox_max` bounds the event outbox (0: no
        events are written)."""
        self._r = redis
        self._k = keys
        self._events = OutboxWriter(keys, node_id, outbox_max)
        self._ttl = session_ttl
        self._l1: L1Cache[SessionRecord] = L1Cache(l1_max, l1_ttl, time.monotonic)
        self._open = SESSION_OPEN.bind(redis)
        self._rename = SESSION_RENAME.bind(redis)
        self._delete = SESSION_DELETE.bind(redis)

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> SessionStore:
        keys = Keys.from_settings(settings)
        return cls(
            redis,
            keys,
            session_ttl=settings.session_ttl,
            l1_max=settings.cache_l1_max_size,
            l1_ttl=settings.cache_l1_expire_write,
            node_id=settings.node_id,
            outbox_max=outbox_max(settings),
        )

    async def open(self, session_id: str, user_id: str) -> tuple[SessionRecord, bool]:
        """Create or rejoin a session; returns (record, created). Raises Forbidden, or
        StorageError when Redis fails.

        An L1 hit answers without Redis (a reconnect storm after a node dies costs no
        round trips); `last_seen` and the TTLs are then refreshed when the L1 entry
        expires. Another user's open changes nothing in Redis.
        """
        cached = self._l1.get(session_id)
        if cached is not None:
            if cached.owner != user_id:
                raise Forbidden(session_id)
            return cached, False
        now = now_iso()
        owner, created_at, created = await self._open(
            keys={
                "session": self._k.session(session_id),
                "user_sessions": self._k.user_sessions(user_id),
                "history": self._k.session_history(session_id),
                "session_messages": self._k.session_messages(session_id),
                **self._events.script_keys(self._k.bucket_of_scope(session_id)),
            },
            args={
                "user_id": user_id,
                "now_iso": now,
                "ttl_s": self._ttl,
                "session_id": session_id,
                # Written only if the script creates the session.
                **self._events.script_args(
                    EventType.SESSION_OPENED, session_id, now, user_id=user_id
                ),
            },
        )
        record = SessionRecord(session_id, owner, created_at)
        self._l1.put(session_id, record)
        if owner != user_id:
            raise Forbidden(session_id)
        return record, bool(created)

    @storage_op
    async def summaries(self, user_id: str, limit: int) -> list[SessionSummary]:
        """The user's sessions, most recently active first, at most `limit`. Entries of
        the user's session set whose record is gone (expired) are left out."""
        scopes = sorted(await self._r.smembers(self._k.user_sessions(user_id)))
        found = await self._read_summaries(user_id, scopes)
        found.sort(key=lambda s: (s.last_seen, s.session_id), reverse=True)
        return found[:limit]

    @storage_op
    async def summary(self, user_id: str, session_id: str) -> SessionSummary | None:
        """One session of the user's list, or None when it does not exist."""
        found = await self._read_summaries(user_id, [session_scope(user_id, session_id)])
        return found[0] if found else None

    async def _read_summaries(self, user_id: str, scopes: list[str]) -> list[SessionSummary]:
        """The summaries of the user's sessions named (scopes) that still exist, in one
        pipeline of three reads each."""
        if not scopes:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for scope in scopes:
                pipe.hmget(self._k.session(scope), "owner", "title", "created_at", "last_seen")
                pipe.exists(self._k.session_active(scope))
                pipe.lindex(self._k.session_history(scope), 0)
            replies = await pipe.execute()
        found = []
        for i, scope in enumerate(scopes):
            (owner, title, created_at, last_seen), active, first = replies[3 * i : 3 * i + 3]
            owner_id, session_id = split_scope(scope)
            if owner != user_id or owner_id != user_id:
                continue
            found.append(
                SessionSummary(
                    session_id=session_id,
                    title=title or default_title(first),
                    created_at=created_at or "",
                    last_seen=last_seen or created_at or "",
                    answering=bool(active),
                )
            )
        return found

    async def create(self, user_id: str, title: str | None) -> str:
        """A new session of the user's (with `title` if given); returns its id."""
        session_id = new_session_id()
        await self.open(session_scope(user_id, session_id), user_id)
        if title:
            await self.rename(user_id, session_id, title)
        return session_id

    @storage_op
    async def rename(self, user_id: str, session_id: str, title: str) -> Outcome:
        scope = session_scope(user_id, session_id)
        reply = await self._rename(
            keys={"session": self._k.session(scope)},
            args={"user_id": user_id, "title": title},
        )
        return Outcome(reply)

    @storage_op
    async def delete(self, user_id: str, session_id: str) -> Outcome:
        """Delete the session's record, history and message list (refused with BUSY while
        an answer is in progress). The caller tells the other nodes (`session_changed`)."""
        scope = session_scope(user_id, session_id)
        reply = await self._delete(
            keys={
                "session": self._k.session(scope),
                "user_sessions": self._k.user_sessions(user_id),
                "history": self._k.session_history(scope),
                "session_messages": self._k.session_messages(scope),
                "active": self._k.session_active(scope),
            },
            args={"user_id": user_id, "session_id": scope},
        )
        outcome = Outcome(reply)
        if outcome is Outcome.DELETED:
            self._l1.invalidate(scope)
        return outcome

    def invalidate(self, session_id: str) -> None:
        self._l1.invalidate(session_id)

    @storage_op
    async def owner(self, session_id: str) -> str | None:
        """The session's owner, or None when there is no such session (L1 first)."""
        cached = self._l1.get(session_id)
        if cached is not None:
            return cached.owner
        owner = await self._r.hget(self._k.session(session_id), "owner")
        return str(owner) if owner is not None else None
