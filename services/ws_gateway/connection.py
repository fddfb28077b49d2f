"""One client connection after the handshake: frames in, frames out.

Incoming frames are parsed at the edge and dispatched; replies and relayed chunks
go through the connection's bounded `Outbox`, drained by one sender task. Chunks
reach the client only from the message's Redis stream: a follow first subscribes to
the node relay, pages through the cache after the client's seq as fast as the
client reads, then goes live; `StreamCursor` drops what was already sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.websockets import WebSocket

from services.common.events import ChatEvent, EventType
from services.common.message_store import AcceptOutcome
from services.common.protocol import (
    AckFrame,
    CancelFrame,
    ChatFrame,
    ChunkFrame,
    ClientFrame,
    CloseCode,
    DoneFrame,
    ErrorCode,
    ErrorFrame,
    FrameError,
    HistoryFrame,
    HistoryRequestFrame,
    MessageStatus,
    PingFrame,
    PongFrame,
    ResumeFrame,
    encode,
    parse_client_frame,
)
from services.common.streams import ChunkEntry, DoneEntry, StreamEntry
from services.ws_gateway.context import NodeContext
from services.ws_gateway.cursor import GapError, StreamCursor
from services.ws_gateway.outbox import Outbox
from services.ws_gateway.ratelimit import TokenBucket

log = logging.getLogger(__name__)

#: Messages a connection remembers having followed, so a late "started" notice for
#: an answer it already received is not replayed.
SEEN_MAX = 256
CLOSE_TIMEOUT_S = 10.0
#: Entries per range read when a client catches up (resume, or a late follower).
CATCH_UP_PAGE = 256


class ClientError(Exception):
    """Answered with an `error` frame; the connection stays open."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        message_id: str | None = None,
        client_msg_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.frame = ErrorFrame(
            code=code,
            message=message,
            message_id=message_id,
            client_msg_id=client_msg_id,
            retry_after=retry_after,
        )


@dataclass
class Follow:
    cursor: StreamCursor
    live: bool = False
    task: asyncio.Task[None] | None = None


class Connection:
    def __init__(self, ws: WebSocket, ctx: NodeContext, session_id: str, user_id: str) -> None:
        self.ws = ws
        self.ctx = ctx
        self.session_id = session_id
        self.user_id = user_id
        s = ctx.settings
        self.outbox = Outbox(limit=s.stream_max_pending_chunks, grace=s.stream_backpressure_delay)
        self._ready = asyncio.Event()
        self._follows: dict[str, Follow] = {}
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._chats = TokenBucket(
            rate_per_s=s.chat_rate_per_minute / 60.0, burst=max(1.0, s.chat_rate_per_minute / 6.0)
        )
        self._closing: asyncio.Event = asyncio.Event()
        self._close_code = 1000
        self._spawned: set[asyncio.Task[None]] = set()
        self._drained = asyncio.Event()

    # --- life ------------------------------------------------------------------------

    async def run(self, welcome: BaseModel) -> None:
        """Serve the connection until the client leaves or must be closed.

        The sending loop runs in the caller's task and the receiving loop in one task
        of its own: two tasks per connection, the least that can wait on both sides.
        """
        self.send(welcome)
        receiver = asyncio.create_task(self._receive_loop(), name="ws-receiver")
        # The client left (or its frames failed): wake the sender so it returns.
        receiver.add_done_callback(lambda _task: self._ready.set())
        try:
            await self._send_loop(receiver)
        except Exception:  # noqa: BLE001 - the socket is gone; nothing left to tell it
            log.debug("send failed; the client is gone", exc_info=True)
        finally:
            for task in (receiver, *self._follow_tasks()):
                task.cancel()
            for task in (receiver, *self._follow_tasks()):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for mid in list(self._follows):
                self.ctx.relay.unsubscribe(mid, self)
            self._follows.clear()
        if self._closing.is_set():
            # A client that stopped reading also blocks the close frame; give it a while
            # to read what is queued, then let the server drop the socket.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.ws.close(self._close_code)

    def _follow_tasks(self) -> list[asyncio.Task[None]]:
        tasks = [f.task for f in self._follows.values() if f.task is not None]
        return tasks + list(self._spawned)

    def close(self, code: int) -> None:
        if not self._closing.is_set():
            self._close_code = code
            self._closing.set()
            self._ready.set()

    def send(self, frame: BaseModel) -> None:
        if not self.outbox.push(encode(frame), time.monotonic()):
            self._too_slow()
            return
        self._ready.set()

    def _too_slow(self) -> None:
        if not self._closing.is_set():
            self.ctx.metrics.slow_closes.inc()
            log.info("client too slow, closing with 4008", extra={"session_id": self.session_id})
            self.close(CloseCode.TOO_SLOW)

    async def _send_loop(self, receiver: asyncio.Task[None]) -> None:
        while not self._closing.is_set() and not receiver.done():
            await self._ready.wait()
            self._ready.clear()
            while len(self.outbox) and not self._closing.is_set():
                if not self.outbox.check(time.monotonic()):
                    self._too_slow()
                    return
                self.ctx.metrics.queue_depth.observe(len(self.outbox))
                for text in self.outbox.pop_batch():
                    await self.ws.send_text(text)
                if len(self.outbox) <= self.outbox.limit // 4:
                    self._drained.set()

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            await self._handle_raw(raw)

    async def _handle_raw(self, raw: str | bytes) -> None:
        try:
            frame = parse_client_frame(raw)
        except FrameError as exc:
            self._error(ClientError(ErrorCode.BAD_REQUEST, str(exc)).frame)
            return
        try:
            await self._dispatch(frame)
        except ClientError as exc:
            self._error(exc.frame)
        except asyncio.CancelledError:
            raise
        except RedisError:
            log.exception("redis failed while handling a frame")
            self._error(ErrorFrame(code=ErrorCode.INTERNAL, message="storage unavailable"))
        except Exception:  # noqa: BLE001 - the connection stays usable
            log.exception("frame handling failed")
            self._error(ErrorFrame(code=ErrorCode.INTERNAL, message="internal error"))

    def _error(self, frame: ErrorFrame) -> None:
        self.ctx.metrics.errors.labels(frame.code.value).inc()
        self.send(frame)

    async def _dispatch(self, frame: ClientFrame) -> None:
        if isinstance(frame, ChatFrame):
            await self._chat(frame)
        elif isinstance(frame, ResumeFrame):
            await self._resume(frame)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
        elif isinstance(frame, HistoryRequestFrame):
            items = await self.ctx.store.history(self.session_id, frame.limit)
            self.send(HistoryFrame(session_id=self.session_id, messages=items))
        elif isinstance(frame, PingFrame):
            self.send(PongFrame(ts=frame.ts))

    # --- frames ------------------------------------------------------------------------

    async def _chat(self, frame: ChatFrame) -> None:
        ctx = self.ctx
        if len(frame.text) > ctx.settings.max_prompt_chars:
            raise ClientError(
                ErrorCode.BAD_REQUEST,
                f"text: at most {ctx.settings.max_prompt_chars} characters",
                client_msg_id=frame.client_msg_id,
            )
        wait = self._chats.take(time.monotonic())
        if wait > 0:
            raise ClientError(
                ErrorCode.RATE_LIMITED,
                "too many chats; slow down",
                client_msg_id=frame.client_msg_id,
                retry_after=round(wait, 2),
            )
        client_msg_id = frame.client_msg_id or f"auto-{uuid.uuid4().hex}"
        outcome, message_id = await ctx.store.accept_chat(
            self.session_id, self.user_id, frame.text, client_msg_id
        )
        if outcome == AcceptOutcome.BUSY:
            raise ClientError(
                ErrorCode.BUSY,
                "this session already has an answer in progress",
                message_id=message_id or None,
                client_msg_id=frame.client_msg_id,
            )
        self.send(AckFrame(client_msg_id=frame.client_msg_id, message_id=message_id))
        if outcome == AcceptOutcome.DUPLICATE:
            return
        # Every connection of the session on this node follows from seq 1 at once;
        # the other nodes learn through the session channel.
        ctx.hub.message_started(self.session_id, message_id)
        await ctx.notifier.message_started(self.session_id, message_id)
        ctx.driver.drive(message_id, self.session_id)
        ctx.publisher.publish(
            ChatEvent(
                type=EventType.MESSAGE_ACCEPTED,
                session_id=self.session_id,
                user_id=self.user_id,
                node_id=ctx.settings.node_id,
                message_id=message_id,
                data={"client_msg_id": frame.client_msg_id, "chars": len(frame.text)},
            )
        )

    async def _resume(self, frame: ResumeFrame) -> None:
        ctx = self.ctx
        mid = frame.message_id
        meta = await ctx.store.meta(mid)
        if meta is None or meta.session_id != self.session_id:
            ctx.metrics.resumes.labels("not_found").inc()
            raise ClientError(
                ErrorCode.NOT_FOUND, "no such message in this session", message_id=mid
            )
        if not await ctx.store.stream_exists(mid) and (
            meta.status == MessageStatus.DONE or meta.last_seq > 0
        ):
            ctx.metrics.resumes.labels("expired").inc()
            raise ClientError(
                ErrorCode.STREAM_EXPIRED,
                "the chunks are no longer cached; see history",
                message_id=mid,
            )
        ctx.metrics.resumes.labels("recovered").inc()
        await self._follow(mid, frame.after_seq)

    async def _cancel(self, frame: CancelFrame) -> None:
        meta = await self.ctx.store.meta(frame.message_id)
        if meta is None or meta.session_id != self.session_id:
            raise ClientError(
                ErrorCode.NOT_FOUND, "no such message in this session", message_id=frame.message_id
            )
        if meta.status != MessageStatus.DONE:
            await self.ctx.store.cancel(frame.message_id)
            # A stream nobody generates any more still has to end.
            await self.ctx.driver.adopt_if_orphaned(frame.message_id)

    # --- following streams ----------------------------------------------------------------

    def push_new_message(self, message_id: str) -> None:
        """An answer started in this session: stream it from seq 1, once."""
        if message_id in self._seen or message_id in self._follows:
            return
        task = asyncio.create_task(self._follow(message_id, 0), name=f"follow-{message_id}")
        # Kept until it ends; cancelled with the connection.
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _follow(self, message_id: str, after_seq: int) -> None:
        if message_id in self._follows:
            return
        self._remember(message_id)
        follow = Follow(cursor=StreamCursor(last_seq=after_seq))
        self._follows[message_id] = follow
        self.ctx.metrics.streams_relayed.inc()
        await self.ctx.relay.subscribe(message_id, self, after_seq)
        self._start_catch_up(message_id, follow)

    def _start_catch_up(self, message_id: str, follow: Follow) -> None:
        """Catch up in a task of its own, so a long replay never blocks the client's
        other frames (cancel, ping)."""
        follow.live = False
        follow.task = asyncio.create_task(
            self._guarded_catch_up(message_id, follow), name=f"catch-up-{message_id}"
        )

    async def _guarded_catch_up(self, message_id: str, follow: Follow) -> None:
        try:
            await self._catch_up(message_id, follow)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the client is told and may resume again
            log.exception("catch-up failed", extra={"message_id": message_id})
            self._unfollow(message_id)
            self._error(
                ErrorFrame(
                    code=ErrorCode.INTERNAL,
                    message="replay failed; resume again",
                    message_id=message_id,
                )
            )

    async def _catch_up(self, message_id: str, follow: Follow) -> None:
        """Page through the cache after the cursor, at the pace the client reads, until
        a read finds nothing newer; then go live in the same step (no await between).

        Live entries that arrive meanwhile are dropped: the pages cover them, and if
        the relay's next batch starts past the cursor, `on_entries` comes back here.
        """
        page = max(1, min(CATCH_UP_PAGE, self.outbox.limit // 2))
        while not follow.cursor.done:
            await self._wait_for_room()
            cached = await self.ctx.store.read_entries(
                message_id, follow.cursor.last_seq, count=page
            )
            if not cached:
                follow.live = True
                return
            self._emit(message_id, follow, cached, live=False)

    async def _wait_for_room(self) -> None:
        """Block while the client still has half a queue of frames to read."""
        while len(self.outbox) > self.outbox.limit // 2 and not self._closing.is_set():
            self._drained.clear()
            await self._drained.wait()

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        """Called by the relay with new entries of a followed stream."""
        follow = self._follows.get(message_id)
        if follow is None or not follow.live:
            return
        try:
            self._emit(message_id, follow, entries, live=True)
        except GapError:
            # The relay was ahead of this client's cursor: page the gap from the cache.
            self._start_catch_up(message_id, follow)

    def _emit(
        self, message_id: str, follow: Follow, entries: list[StreamEntry], live: bool
    ) -> None:
        now_ms = time.time() * 1000
        metrics = self.ctx.metrics
        for entry in follow.cursor.accept(entries):
            if isinstance(entry, ChunkEntry):
                self.send(ChunkFrame(message_id=message_id, seq=entry.seq, delta=entry.delta))
                metrics.chunks_sent.inc()
                if live and entry.written_ms:
                    metrics.chunk_delay.observe(max(0.0, (now_ms - entry.written_ms) / 1000))
            elif isinstance(entry, DoneEntry):
                if entry.error is not None:
                    self.send(
                        ErrorFrame(
                            code=entry.error,
                            message="no AI worker could finish the answer",
                            message_id=message_id,
                        )
                    )
                self.send(
                    DoneFrame(
                        message_id=message_id,
                        last_seq=entry.last_seq,
                        finish_reason=entry.finish_reason,
                        usage=entry.usage,
                    )
                )
                self._unfollow(message_id)

    def _unfollow(self, message_id: str) -> None:
        if self._follows.pop(message_id, None) is not None:
            self.ctx.relay.unsubscribe(message_id, self)

    def _remember(self, message_id: str) -> None:
        self._seen[message_id] = None
        self._seen.move_to_end(message_id)
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
