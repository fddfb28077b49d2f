"""The event outbox in Redis: one Stream per key bucket (`Keys.events_outbox`; one
bucket unless in Redis Cluster) that every node drains to Kafka.

Writing: a store whose script changes state (accept_chat, finish_message,
session_open) passes the event that reports the change as `event_json`, with the
outbox keys and `outbox_max`, and the script adds it in the same step: an event is
in the outbox if and only if its change happened. `outbox_max` is KAFKA_BUFFER_MAX
(0 with KAFKA_ENABLED=false: nothing is written); a full outbox adds nothing and
counts the event in `Keys.events_outbox_dropped`. `OutboxWriter` builds those keys
and args.

Draining: `EventOutbox` is the drainer's view (kafka.py): one consumer group, `GROUP`,
shared by every node, each node a consumer named by its node id. A read takes entries
into the consumer's pending list; `ack` acknowledges and deletes them once Kafka has
them; `reclaim` moves entries another consumer left pending too long (it died) to
this one. Every method raises `StorageError` when Redis fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from services.common.errors import storage_op
from services.common.events import ChatEvent, EventType, new_event_id
from services.common.keys import Keys
from services.common.protocol import split_scope
from services.common.settings import Settings

#: The consumer group of the drainers.
GROUP = "kafka"
#: The stream field that holds the event's JSON.
EVENT_FIELD = "event"


def outbox_max(settings: Settings) -> int:
    """How many events the outbox holds at most; 0 (write none) with Kafka disabled."""
    return settings.kafka_buffer_max if settings.kafka_enabled else 0


@dataclass(frozen=True, slots=True)
class OutboxWriter:
    """What a store passes its scripts so that they add their event to the outbox.

    `max_len` 0 writes nothing (and builds no event)."""

    keys: Keys
    node_id: str = ""
    max_len: int = 0

    def script_keys(self, bucket: int) -> dict[str, str]:
        """The outbox keys of `bucket`: the bucket of the keys the script writes."""
        return {
            "outbox": self.keys.events_outbox(bucket),
            "outbox_dropped": self.keys.events_outbox_dropped(bucket),
        }

    def script_args(
        self,
        type_: EventType,
        session_id: str,
        at: str,
        *,
        user_id: str | None = None,
        message_id: str | None = None,
        data: dict[str, Any] | None = None,
        event_id: str | None = None,
    ) -> dict[str, str | int]:
        """The args that have the script add this node's event `type_` (changed `at`)
        of the session `session_id` (its `session_scope` name); the event is built only
        when events are on. `event_id` is given to write an event again, identically."""
        if self.max_len <= 0:
            return {"outbox_max": 0, "event_json": ""}
        # Consumers get the session id the client chose, and its user.
        scope_user, client_session_id = split_scope(session_id)
        event = ChatEvent(
            event_id=event_id or new_event_id(),
            type=type_,
            session_id=client_session_id,
            node_id=self.node_id,
            user_id=user_id or scope_user or None,
            message_id=message_id,
            at=at,
            data=data or {},
        )
        return {"outbox_max": self.max_len, "event_json": event.to_json()}


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    entry_id: str
    event_json: str | None
    """None when the entry has no event field (or was deleted)."""
    deleted: bool = False
    """Deleted while it was pending: nothing to send."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    length: int
    """Entries in the outbox: events not yet acknowledged by Kafka."""
    dropped: int
    """Events ever refused because the outbox was full."""


async def total_stats(outboxes: Sequence[EventOutbox]) -> OutboxStats:
    """Every bucket's outbox, summed (their reads run at once)."""
    each = await asyncio.gather(*(outbox.stats() for outbox in outboxes))
    return OutboxStats(sum(s.length for s in each), sum(s.dropped for s in each))


class EventOutbox:
    """The drainer's Redis calls on the outbox stream and its consumer group."""

    def __init__(self, redis: Redis, keys: Keys, *, group: str = GROUP, bucket: int = 0) -> None:
        self._r = redis
        self._stream = keys.events_outbox(bucket)
        self._dropped = keys.events_outbox_dropped(bucket)
        self._group = group

    @classmethod
    def every_bucket(cls, redis: Redis, keys: Keys) -> list[EventOutbox]:
        """The outbox of each of the keys' buckets (one unless in Redis Cluster)."""
        return [cls(redis, keys, bucket=b) for b in keys.all_buckets()]

    @property
    def stream(self) -> str:
        return self._stream

    @storage_op
    async def ensure_group(self) -> None:
        """Create the stream and the group (reading from the start) unless they exist."""
        try:
            await self._r.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @storage_op
    async def read(
        self, consumer: str, *, count: int, pending: bool, block_ms: int | None = None
    ) -> list[OutboxEntry]:
        """`pending`: this consumer's own unacknowledged entries, oldest first (they
        were read before and not acknowledged); else new entries, waiting up to
        `block_ms` for some. Raises StorageError (NOGROUP) if the group is gone."""
        reply = await self._r.xreadgroup(
            self._group,
            consumer,
            {self._stream: "0" if pending else ">"},
            count=count,
            block=None if pending else block_ms,
        )
        entries: list[OutboxEntry] = []
        for _, raw in reply or []:
            for entry_id, fields in raw:
                event_json = fields.get(EVENT_FIELD) if fields else None
                entries.append(OutboxEntry(entry_id, event_json, deleted=not fields))
        return entries

    @storage_op
    async def ack(self, entry_ids: list[str]) -> None:
        """Acknowledge and delete entries Kafka has (whoever holds them pending)."""
        if not entry_ids:
            return
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, self._group, *entry_ids)
            pipe.xdel(self._stream, *entry_ids)
            await pipe.execute()

    @storage_op
    async def reclaim(self, consumer: str, *, min_idle_ms: int, count: int) -> int:
        """Move up to `count` entries pending for more than `min_idle_ms` (with any
        consumer: one that died, or this one) to `consumer`; returns how many."""
        _, claimed, *_ = await self._r.xautoclaim(
            self._stream, self._group, consumer, min_idle_ms, start_id="0-0", count=count
        )
        return len(claimed)

    @storage_op
    async def stats(self) -> OutboxStats:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.xlen(self._stream)
            pipe.get(self._dropped)
            length, dropped = await pipe.execute()
        return OutboxStats(int(length), int(dropped or 0))

    @storage_op
    async def pending_count(self) -> int:
        """Entries read by some consumer and not yet acknowledged (the whole group)."""
        summary = await self._r.xpending(self._stream, self._group)
        return int(summary["pending"])
