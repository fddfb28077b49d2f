"""Cross-node notices over Redis pub/sub: answers starting in a session, and session
records that changed (to invalidate the L1 cache).

One pub/sub connection per node, owned by one task; joins and leaves are queued to
it, and `join` returns once the subscription is live, so a connection that joins and
then reads the session's streams cannot miss an answer that starts in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.common.keys import Keys

log = logging.getLogger(__name__)

POLL_S = 0.2


class Notifier:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        on_message_started: Callable[[str, str], None],
        on_session_changed: Callable[[str], None],
    ) -> None:
        self._r = redis
        self._k = keys
        self._on_started = on_message_started
        self._on_changed = on_session_changed
        self._refs: dict[str, int] = {}
        self._ops: asyncio.Queue[tuple[str, str, asyncio.Future[None] | None]] = asyncio.Queue(
            maxsize=100_000
        )
        self._prefix = keys.session_channel("")
        self._invalidate = keys.session_invalidate_channel()

    async def join(self, session_id: str) -> None:
        """Receive the session's notices on this node; returns when subscribed."""
        self._refs[session_id] = self._refs.get(session_id, 0) + 1
        if self._refs[session_id] > 1:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._ops.put(("subscribe", self._k.session_channel(session_id), done))
        await done

    def leave(self, session_id: str) -> None:
        count = self._refs.get(session_id, 0) - 1
        if count > 0:
            self._refs[session_id] = count
            return
        self._refs.pop(session_id, None)
        self._ops.put_nowait(("unsubscribe", self._k.session_channel(session_id), None))

    async def message_started(self, session_id: str, message_id: str) -> None:
        await self._r.publish(
            self._k.session_channel(session_id),
            json.dumps({"event": "message_started", "message_id": message_id}),
        )

    async def session_changed(self, session_id: str) -> None:
        await self._r.publish(self._invalidate, session_id)

    async def run(self) -> None:
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._invalidate)
                channels = [self._k.session_channel(s) for s in self._refs]
                if channels:
                    await pubsub.subscribe(*channels)
                await self._loop(pubsub)
            except RedisError as exc:
                log.warning("notifier connection lost", extra={"detail": str(exc)})
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()

    async def _loop(self, pubsub: PubSub) -> None:
        while True:
            while not self._ops.empty():
                op, channel, done = self._ops.get_nowait()
                try:
                    if op == "subscribe":
                        await pubsub.subscribe(channel)
                    elif channel.removeprefix(self._prefix) not in self._refs:
                        await pubsub.unsubscribe(channel)
                finally:
                    if done is not None and not done.done():
                        done.set_result(None)
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
            if msg is None or msg.get("type") != "message":
                continue
            channel, data = msg["channel"], msg["data"]
            if channel == self._invalidate:
                self._on_changed(data)
                continue
            try:
                notice = json.loads(data)
            except ValueError:
                continue
            if notice.get("event") == "message_started":
                self._on_started(channel.removeprefix(self._prefix), notice["message_id"])
