"""One client connection after the handshake: the socket loops and the frame handlers.

Two tasks per socket: the receiver parses each frame at the edge and dispatches it;
the connection's own task runs the `Sender`, which writes the bounded outbox. Chunks
reach the client only from the message's Redis stream: following an answer joins the
node relay, then a `Follower` (sans I/O) says which cache pages to read and which
frames to queue, first catching up at the pace the client reads, then live.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.websockets import WebSocket

from services.common.clock import now_ms
from services.common.errors import StorageError
from services.common.message_store import AcceptOutcome, SessionTaken, UserLimited
from services.common.overload import MESSAGES, Slot
from services.common.protocol import (
    AckFrame,
    CancelFrame,
    ChatFrame,
    ClientFrame,
    CloseCode,
    ErrorCode,
    ErrorFrame,
    FrameError,
    HistoryFrame,
    HistoryRequestFrame,
    MessageStatus,
    PingFrame,
    PongFrame,
    ResumeFrame,
    parse_client_frame,
    split_scope,
)
from services.common.streams import StreamEntry
from services.common.tasks import cancel_and_wait
from services.ws_gateway.context import NodeContext
from services.ws_gateway.follower import Follower, SeenMessages, Step
from services.ws_gateway.metrics import AnswerTimer
from services.ws_gateway.ratelimit import TokenBucket
from services.ws_gateway.sender import Sender

log = logging.getLogger(__name__)

#: Messages a connection remembers having followed, so a late "started" notice for
#: an answer it already received is not replayed.
SEEN_MAX = 256
CLOSE_TIMEOUT_S = 10.0
#: Entries per range read when a client catches up (resume, or a late follower).
CATCH_UP_PAGE = 256
#: Chats accepted on a connection and not yet followed by it (it follows each at once).
ACCEPTED_MAX = 8


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


@dataclass(eq=False)
class Follow:
    follower: Follower
    task: asyncio.Task[None] | None = None
    """The catch-up in progress, if any."""
    timer: AnswerTimer | None = None
    """Set on the connection that sent the chat: its time to first chunk and duration."""


class Connection:
    def __init__(self, ws: WebSocket, ctx: NodeContext, session_id: str, user_id: str) -> None:
        self.ws = ws
        self.ctx = ctx
        self.session_id = session_id
        self.user_id = user_id
        s = ctx.settings
        self.sender = Sender(
            limit=s.stream_max_pending_chunks,
            grace=s.stream_backpressure_delay,
            metrics=ctx.metrics,
        )
        self._follows: dict[str, Follow] = {}
        self._seen = SeenMessages(SEEN_MAX)
        self._chats = TokenBucket(
            rate_per_s=s.chat_rate_per_minute / 60.0, burst=max(1.0, s.chat_rate_per_minute / 6.0)
        )
        self._spawned: set[asyncio.Task[None]] = set()
        self._welcomed = False
        self._early: list[str] = []
        """Answers pushed before the welcome was queued; followed right after it."""
        self._accepted: dict[str, float] = {}
        """When each chat this connection sent was accepted, until it follows the answer."""

    # --- life ------------------------------------------------------------------------

    def greet(self, welcome: BaseModel) -> None:
        """Queue the first frame the client gets; then follow the answers pushed before."""
        self.sender.send(welcome)
        self._welcomed = True
        for message_id in self._early:
            self.push_new_message(message_id)
        self._early.clear()

    async def run(self) -> None:
        """Serve the connection until the client leaves or must be closed (after `greet`).

        The sender runs in the caller's task and the receiver in one task of its own:
        two tasks per connection, the least that can wait on both sides.
        """
        receiver = asyncio.create_task(self._receive_loop(), name="ws-receiver")
        # The client left (or its frames failed): wake the sender so it returns.
        receiver.add_done_callback(lambda _task: self.sender.stop())
        try:
            await self.sender.run(self.ws.send_text)
        except Exception:  # noqa: BLE001 - the socket is gone; nothing left to tell it
            log.debug("send failed; the client is gone", exc_info=True)
        finally:
            catch_ups = [f.task for f in self._follows.values()]
            await cancel_and_wait(receiver, *catch_ups, *self._spawned)
            for mid in list(self._follows):
                self.ctx.relay.unfollow(mid, self)
            self._follows.clear()
        if self.sender.close_code is not None:
            # A client that stopped reading also blocks the close frame; give it a while
            # to read what is queued, then let the server drop the socket.
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.ws.close(self.sender.close_code)
            except Exception:  # noqa: BLE001 - closing a socket that is already gone
                log.debug("close failed; the client is gone", exc_info=True)

    def close(self, code: int) -> None:
        self.sender.close(code)

    def send(self, frame: BaseModel) -> None:
        self.sender.send(frame)

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
        except StorageError:
            log.exception("storage failed while handling a frame")
            self._error(ErrorFrame(code=ErrorCode.INTERNAL, message="storage unavailable"))
        except Exception:  # noqa: BLE001 - the connection stays usable
            log.exception("frame handling failed")
            self._error(ErrorFrame(code=ErrorCode.INTERNAL, message="internal error"))

    def _error(self, frame: ErrorFrame) -> None:
        self.ctx.metrics.errors.labels(frame.code.value).inc()
        self.send(frame)

    def _internal_error(self, message_id: str, message: str) -> None:
        """Tell the client a follow failed here; it may resume the message."""
        self._error(ErrorFrame(code=ErrorCode.INTERNAL, message=message, message_id=message_id))

    async def _dispatch(self, frame: ClientFrame) -> None:
        if isinstance(frame, ChatFrame):
            await self._chat(frame)
        elif isinstance(frame, ResumeFrame):
            await self._resume(frame)
        elif isinstance(frame, CancelFrame):
            await self._cancel(frame)
        elif isinstance(frame, HistoryRequestFrame):
            items = await self.ctx.store.history(self.session_id, frame.limit)
            self.send(HistoryFrame(session_id=split_scope(self.session_id)[1], messages=items))
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
        refusal = ctx.admission.refusal(
            ctx.driver.driving,
            ctx.lag.value,
            time.monotonic(),
            starting=ctx.hub.starting,
            waiting=ctx.driver.waiting_for_room,
        )
        if refusal is not None:
            # Nothing is written, and the connection's chat bucket is not charged: the
            # client sends the same chat again after retry_after (a chat accepted
            # earlier then gets its ack, as any duplicate does).
            ctx.metrics.chats_refused.labels(refusal.reason).inc()
            raise ClientError(
                ErrorCode.BUSY,
                MESSAGES[refusal.reason],
                client_msg_id=frame.client_msg_id,
                retry_after=refusal.retry_after,
            )
        wait = self._chats.take(time.monotonic())
        if wait > 0:
            raise ClientError(
                ErrorCode.RATE_LIMITED,
                "too many chats; slow down",
                client_msg_id=frame.client_msg_id,
                retry_after=round(wait, 2),
            )
        with ctx.admission.slot() as slot:
            # Counted from the check until the driver holds the answer.
            await self._accept(frame, slot)

    async def _accept(self, frame: ChatFrame, slot: Slot) -> None:
        ctx = self.ctx
        try:
            # Writes the message.accepted event (in the outbox) if the chat is new.
            outcome, message_id = await ctx.store.accept_chat(
                self.session_id, self.user_id, frame.text, frame.client_msg_id
            )
        except UserLimited as exc:
            raise ClientError(
                ErrorCode.RATE_LIMITED,
                str(exc),
                client_msg_id=frame.client_msg_id,
                retry_after=round(exc.retry_after, 2),
            ) from exc
        except SessionTaken:
            # The session expired while this socket idled and another user took the id.
            log.info("session taken by another user; closing with 4403")
            self.close(CloseCode.FORBIDDEN)
            return
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
        self._accepted[message_id] = time.monotonic()
        while len(self._accepted) > ACCEPTED_MAX:
            del self._accepted[next(iter(self._accepted))]
        # Every connection of the session on this node follows from seq 1 at once;
        # the other nodes learn through the session channel.
        ctx.hub.message_started(self.session_id, message_id)
        # Driven before the other nodes are told: the publish is a round trip, and the
        # answer's first chunk need not wait for it.
        ctx.driver.drive(message_id, self.session_id)
        slot.release()  # counted by the driver now, not twice
        await ctx.notifier.message_started(self.session_id, message_id)

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
                ErrorCode.NOT_FOUND,
                "no such message in this session",
                message_id=frame.message_id,
            )
        if meta.status != MessageStatus.DONE:
            await self.ctx.store.cancel(frame.message_id)
            # A stream nobody generates any more still has to end.
            await self.ctx.driver.adopt_if_orphaned(frame.message_id)

    # --- following answers (the hub calls push_new_message and on_entries) --------------

    def push_new_message(self, message_id: str) -> None:
        """An answer started in this session: stream it from seq 1, once."""
        if not self._welcomed:
            self._early.append(message_id)
            return
        if message_id in self._seen or message_id in self._follows:
            return
        task = asyncio.create_task(self._guarded_follow(message_id), name=f"follow-{message_id}")
        # Kept until it ends; cancelled with the connection.
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _guarded_follow(self, message_id: str) -> None:
        try:
            await self._follow(message_id, 0)
        except StorageError as exc:
            log.warning("could not follow a new answer", extra={"detail": str(exc)})
            self._internal_error(message_id, "storage unavailable; resume this message")

    async def _follow(self, message_id: str, after_seq: int) -> None:
        if message_id in self._follows:
            return
        self._seen.add(message_id)
        accepted_at = self._accepted.pop(message_id, None)
        timer = AnswerTimer(accepted_at) if accepted_at is not None else None
        follow = Follow(Follower(message_id, after_seq), timer=timer)
        self._follows[message_id] = follow
        self.ctx.metrics.streams_relayed.inc()
        try:
            await self.ctx.relay.follow(message_id, self, after_seq)
        except StorageError:
            self._unfollow(message_id)
            raise
        self._apply(follow, follow.follower.start(), live=False)

    def on_entries(self, message_id: str, entries: list[StreamEntry]) -> None:
        """New entries of a followed stream, from the relay (through the hub)."""
        follow = self._follows.get(message_id)
        if follow is not None:
            self._apply(follow, follow.follower.on_live(entries), live=True)

    def on_lost(self, message_id: str) -> None:
        """The stream's stored state is gone (from the hub): end the answer for the client."""
        follow = self._follows.get(message_id)
        if follow is not None:
            self.ctx.metrics.state_lost.inc()
            self._queue(follow, follow.follower.on_lost(), live=True)

    def _apply(self, follow: Follow, step: Step, *, live: bool) -> None:
        """Queue a step's frames, and start the catch-up it asks for."""
        self._queue(follow, step, live=live)
        if step.read_after is not None:
            # In a task of its own, so a long replay never blocks the client's other
            # frames (cancel, ping).
            follow.task = asyncio.create_task(
                self._guarded_catch_up(follow, step.read_after),
                name=f"catch-up-{follow.follower.message_id}",
            )

    def _queue(self, follow: Follow, step: Step, *, live: bool) -> None:
        """Queue a step's frames and count them; end the follow once it is finished."""
        for frame in step.frames:
            self.send(frame)
        metrics = self.ctx.metrics
        if step.chunks:
            metrics.chunks_sent.inc(len(step.chunks))
            if live:
                now = now_ms()
                for chunk in step.chunks:
                    if chunk.written_ms:
                        metrics.chunk_delay.observe(max(0.0, (now - chunk.written_ms) / 1000))
        if follow.timer is not None:
            follow.timer.observe(metrics, len(step.chunks), step.finished, time.monotonic())
        if step.finished:
            self._unfollow(follow.follower.message_id)

    async def _guarded_catch_up(self, follow: Follow, after_seq: int) -> None:
        mid = follow.follower.message_id
        try:
            await self._catch_up(follow, after_seq)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the client is told and may resume again
            log.exception("catch-up failed", extra={"message_id": mid})
            self._unfollow(mid)
            self._internal_error(mid, "replay failed; resume again")

    async def _catch_up(self, follow: Follow, after_seq: int) -> None:
        """Page through the cache at the pace the client reads, until the follower is live
        (it goes live on the empty page, with no await in between) or finished."""
        page = max(1, min(CATCH_UP_PAGE, self.sender.outbox.limit // 2))
        follower = follow.follower
        read_after: int | None = after_seq
        while read_after is not None:
            await self.sender.wait_for_room()
            cached = await self.ctx.store.read_entries(follower.message_id, read_after, count=page)
            step = follower.on_page(cached)
            self._queue(follow, step, live=False)
            read_after = step.read_after

    def _unfollow(self, message_id: str) -> None:
        follow = self._follows.pop(message_id, None)
        if follow is not None:
            self.ctx.relay.unfollow(message_id, self)
