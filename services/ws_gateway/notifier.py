"""Cross-node notices over Redis pub/sub: answers starting in a session, and session
records that changed (to invalidate the L1 cache).

One pub/sub connection per node. Two loops share it and the notifier waits on both
at once: one applies queued joins and leaves (SUBSCRIBE/UNSUBSCRIBE), the other
reads messages, with no polling. `join` returns once Redis confirmed the
subscription, so a connection that joins and then lists the session's streams
cannot miss an answer that starts in between. After a lost connection every
session still joined is subscribed again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from services.common.errors import StorageError
from services.common.keys import Keys
from services.common.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0
RECONNECT_S = 0.5


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
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        """Channel -> joins waiting for Redis to confirm the subscription."""
        self._ops: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._prefix = keys.session_channel("")
        self._invalidate = keys.session_invalidate_channel()

    @property
    def sessions(self) -> int:
        return len(self._refs)

    async def join(self, session_id: str) -> None:
        """Receive the session's notices on this node; returns when subscribed.

        Raises StorageError if Redis did not confirm within JOIN_TIMEOUT_S (the join
        still counts: call `leave`)."""
        channel = self._k.session_channel(session_id)
        self._refs[session_id] = self._refs.get(session_id, 0) + 1
        first = self._refs[session_id] == 1
        if not first and channel not in self._waiting:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(channel, []).append(done)
        if first:
            self._ops.put_nowait(("subscribe", channel))
        try:
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                await done
        except TimeoutError as exc:
            waiting = self._waiting.get(channel, [])
            if done in waiting:
                waiting.remove(done)
            raise StorageError("pub/sub subscription not confirmed") from exc

    def leave(self, session_id: str) -> None:
        count = self._refs.get(session_id, 0) - 1
        if count > 0:
            self._refs[session_id] = count
            return
        self._refs.pop(session_id, None)
        self._ops.put_nowait(("unsubscribe", self._k.session_channel(session_id)))

    async def message_started(self, session_id: str, message_id: str) -> None:
        await self._publish(
            self._k.session_channel(session_id),
            json.dumps({"event": "message_started", "message_id": message_id}),
        )

    async def session_changed(self, session_id: str) -> None:
        await self._publish(self._invalidate, session_id)

    async def _publish(self, channel: str, data: str) -> None:
        try:
            await self._r.publish(channel, data)
        except RedisError as exc:
            raise StorageError(f"publish: {exc}") from exc

    async def run(self) -> None:
        """Serve the pub/sub connection forever, reconnecting after Redis errors."""
        while True:
            try:
                # A Redis Cluster client learns the slot map on its first command; its
                # pub/sub needs the map to pick a node (a plain client connects).
                await self._r.initialize()
            except RedisError as exc:
                raise_if_cancelling()
                log.warning("notifier cannot reach redis", extra={"detail": str(exc)})
                await asyncio.sleep(RECONNECT_S)
                continue
            pubsub = self._r.pubsub()
            try:
                channels = [self._k.session_channel(s) for s in self._refs]
                await pubsub.subscribe(self._invalidate, *channels)
                await self._serve(pubsub)
            except RedisError as exc:
                raise_if_cancelling()
                log.warning("notifier connection lost", extra={"detail": str(exc)})
                await asyncio.sleep(RECONNECT_S)
            finally:
                await pubsub.aclose()

    async def _serve(self, pubsub: PubSub) -> None:
        """Run the two loops until one fails; re-raise its error."""
        loops = [
            asyncio.create_task(self._apply_ops(pubsub), name="notifier-ops"),
            asyncio.create_task(self._read(pubsub), name="notifier-read"),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            await cancel_and_wait(*loops)

    async def _apply_ops(self, pubsub: PubSub) -> None:
        while True:
            raise_if_cancelling()  # a cancel redis-py swallowed in (un)subscribe
            op, channel = await self._ops.get()
            if op == "subscribe":
                await pubsub.subscribe(channel)
            elif channel.removeprefix(self._prefix) not in self._refs:
                await pubsub.unsubscribe(channel)

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            raise_if_cancelling()
            msg = await pubsub.get_message(timeout=None)
            if msg is not None:
                self.dispatch(msg)

    def dispatch(self, msg: dict[str, object]) -> None:
        """Handle one pub/sub message (a subscribe confirmation or a notice)."""
        kind, channel, data = msg.get("type"), str(msg.get("channel")), msg.get("data")
        if kind == "subscribe":
            for done in self._waiting.pop(channel, []):
                if not done.done():
                    done.set_result(None)
            return
        if kind != "message" or not isinstance(data, str):
            return
        if channel == self._invalidate:
            self._on_changed(data)
            return
        try:
            notice = json.loads(data)
        except ValueError:
            log.warning("ignored a malformed notice", extra={"detail": data[:200]})
            return
        if not isinstance(notice, dict) or notice.get("event") != "message_started":
            return
        message_id = notice.get("message_id")
        if isinstance(message_id, str):
            self._on_started(channel.removeprefix(self._prefix), message_id)
