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
from websockets.exceptions import ConnectionClosed

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
        delay = 0.05
        while True:
            try:
                await self.connect()
                break
            except (OSError, ConnectionClosed, websockets.InvalidStatus, TimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        answer.reconnects += 1
        await self.send(
            {"type": "resume", "message_id": answer.message_id, "after_seq": answer.last_seq}
        )
