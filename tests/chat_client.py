"""A protocol-v1 test client: frames as dicts, exactly-once bookkeeping, and a
reconnect-and-resume loop, as a careful real client would do it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

Frame = dict[str, Any]


@dataclass
class Answer:
    """What a client assembled for one message."""

    message_id: str
    seqs: list[int] = field(default_factory=list)
    text: str = ""
    done: Frame | None = None
    errors: list[Frame] = field(default_factory=list)
    reconnects: int = 0
    close_codes: list[int] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def add(self, frame: Frame) -> None:
        self.seqs.append(frame["seq"])
        self.text += frame["delta"]

    def assert_exactly_once(self) -> None:
        assert self.done is not None, "no done frame"
        assert self.seqs == list(range(1, self.done["last_seq"] + 1)), (
            f"seqs not exactly once in order: {self.seqs[:20]}... last_seq={self.done['last_seq']}"
        )


class ChatClient:
    def __init__(self, url: str, *, local_ip: str = "127.0.0.1", origin: str | None = None) -> None:
        self.url = url
        self.local_ip = local_ip
        self.origin = origin
        self.ws: ClientConnection | None = None
        self.welcome: Frame | None = None
        self.backlog: list[Frame] = []

    async def connect(self) -> Frame:
        headers = {"Origin": self.origin} if self.origin else None
        self.ws = await websockets.connect(
            self.url,
            local_addr=(self.local_ip, 0),
            additional_headers=headers,
            open_timeout=10,
            max_size=2**22,
            compression=None,
        )
        self.welcome = await self.recv()
        assert self.welcome["type"] == "welcome", self.welcome
        return self.welcome

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def send(self, frame: Frame | str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, timeout: float = 20.0) -> Frame:
        assert self.ws is not None
        if self.backlog:
            return self.backlog.pop(0)
        async with asyncio.timeout(timeout):
            return dict(json.loads(await self.ws.recv()))

    async def recv_until(self, pred: Callable[[Frame], bool], timeout: float = 20.0) -> Frame:
        """The first frame matching `pred`; others are kept for later `recv` calls."""
        skipped: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if pred(frame):
                    self.backlog = skipped + self.backlog
                    return frame
                skipped.append(frame)

    async def chat(self, text: str, client_msg_id: str | None = None) -> Frame:
        frame: Frame = {"type": "chat", "text": text}
        if client_msg_id:
            frame["client_msg_id"] = client_msg_id
        await self.send(frame)
        return await self.recv_until(lambda f: f["type"] in ("ack", "error"))

    async def read_answer(
        self, answer: Answer, *, stop_after: int | None = None, timeout: float = 60.0
    ) -> Answer:
        """Read frames of `answer`'s message until done (or `stop_after` chunks)."""
        async with asyncio.timeout(timeout):
            while answer.done is None:
                frame = await self.recv(timeout)
                if frame.get("message_id") != answer.message_id:
                    continue
                if frame["type"] == "chunk":
                    answer.add(frame)
                    if stop_after is not None and len(answer.seqs) >= stop_after:
                        return answer
                elif frame["type"] == "done":
                    answer.done = frame
                elif frame["type"] == "error":
                    answer.errors.append(frame)
        return answer

    #: What a connect may raise that a careful client retries: refused (429, 502), reset,
    #: a timeout.
    RETRYABLE_CONNECT: tuple[type[BaseException], ...] = (
        OSError,
        ConnectionClosed,
        InvalidHandshake,
        TimeoutError,
    )
    #: What may break a chat's round trip; the chat is then sent again after a reconnect.
    LOST_DURING_CHAT: tuple[type[BaseException], ...] = (ConnectionClosed,)

    async def reconnect(self) -> None:
        """Connect again until it works, backing off as a real client does."""
        delay = 0.05
        while True:
            try:
                if self.ws is not None:
                    await self.ws.close()
                await self.connect()
                return
            except self.RETRYABLE_CONNECT:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def ask(self, text: str, client_msg_id: str) -> Answer:
        """Send a chat until it is acked, reconnecting and sending it again after a lost
        connection: the same client_msg_id never starts a second answer. The ack of a
        chat sent again starts nothing on this socket, so the answer is resumed. An
        error reply goes to `refused`, which waits and returns (the chat is sent again)
        or raises."""
        resent = False
        while True:
            try:
                await self.send({"type": "chat", "text": text, "client_msg_id": client_msg_id})
                frame = await self.recv_until(lambda f: self.is_reply(f, client_msg_id))
            except self.LOST_DURING_CHAT:
                await self.reconnect()
                resent = True
                continue
            if frame["type"] == "ack":
                answer = Answer(frame["message_id"])
                if resent:
                    await self.send({"type": "resume", "message_id": answer.message_id})
                return answer
            resent = await self.refused(frame) or resent

    def is_reply(self, frame: Frame, client_msg_id: str) -> bool:
        """Whether `frame` answers the chat `client_msg_id` (for `ask`)."""
        return frame["type"] in ("ack", "error") and frame.get("client_msg_id") == client_msg_id

    async def refused(self, frame: Frame) -> bool:
        """An error reply to `ask`'s chat: wait out `rate_limited`, or `busy` with a
        `retry_after` (a node at capacity; True if the chat must count as sent again);
        anything else is a test failure."""
        assert frame["code"] == "rate_limited" or (
            frame["code"] == "busy" and "retry_after" in frame
        ), frame
        await asyncio.sleep(float(frame.get("retry_after") or 1.0))
        return False

    async def follow_resilient(self, answer: Answer, *, timeout: float = 90.0) -> Answer:
        """Read to done, reconnecting and resuming after every close, like a real client."""
        async with asyncio.timeout(timeout):
            while answer.done is None:
                try:
                    await self.read_answer(answer, timeout=timeout)
                except ConnectionClosed as exc:
                    answer.close_codes.append(exc.rcvd.code if exc.rcvd else 1006)
                    await self._reconnect_and_resume(answer)
        return answer

    async def _reconnect_and_resume(self, answer: Answer) -> None:
        await self.reconnect()
        answer.reconnects += 1
        await self.send(
            {"type": "resume", "message_id": answer.message_id, "after_seq": answer.last_seq}
        )
